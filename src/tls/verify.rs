//! Certificate checks rustls does not make on its own: a client certificate's Common Name
//! or host name against `--peer-cert-allowed-cn` / `--*-cert-allowed-hostname`, and the
//! dialer's "no verification" for auto-TLS peers.

use super::x509;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;

/// What etcd says when a verified client certificate has neither an allowed CN nor an
/// allowed host name.
pub const AUTH_FAILED: &str = "client certificate authentication failed";

/// A client verifier that, after the chain checks, requires an allowed CN or host name.
#[derive(Debug)]
pub struct AllowedNames {
    inner: Arc<dyn ClientCertVerifier>,
    cns: Vec<String>,
    hostnames: Vec<String>,
    /// The trusted CA certificates (`--trusted-ca-file`), byte for byte.
    anchors: Vec<CertificateDer<'static>>,
}

impl AllowedNames {
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        cns: Vec<String>,
        hostnames: Vec<String>,
        anchors: Vec<CertificateDer<'static>>,
    ) -> AllowedNames {
        AllowedNames {
            inner,
            cns,
            hostnames,
            anchors,
        }
    }

    /// webpki refuses a CA certificate as a client's own (`CaUsedAsEndEntity`, raised
    /// after the validity dates passed); Go accepts one that is itself a trusted CA, and
    /// etcd's tests use such a self-signed certificate as CA, server and client at once.
    /// Only that case is accepted: the very certificate the trust file holds.
    fn is_trusted_ca_itself(&self, end_entity: &CertificateDer<'_>, e: &Error) -> bool {
        let Error::InvalidCertificate(CertificateError::Other(other)) = e else {
            return false;
        };
        matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ) && self
            .anchors
            .iter()
            .any(|a| a.as_ref() == end_entity.as_ref())
    }

    fn allowed(&self, cert: &CertificateDer<'_>) -> bool {
        if self.cns.is_empty() && self.hostnames.is_empty() {
            return true;
        }
        if !self.cns.is_empty() {
            let cn = x509::common_name(cert).unwrap_or_default();
            if self.cns.iter().any(|allowed| *allowed == cn) {
                return true;
            }
        }
        let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        self.hostnames.iter().any(|h| {
            ServerName::try_from(h.as_str())
                .is_ok_and(|name| ee.verify_is_valid_for_subject_name(&name).is_ok())
        })
    }
}

impl ClientCertVerifier for AllowedNames {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => v,
            Err(e) if self.is_trusted_ca_itself(end_entity, &e) => ClientCertVerified::assertion(),
            Err(e) => return Err(e),
        };
        if self.allowed(end_entity) {
            return Ok(verified);
        }
        // NotValidForName makes rustls send a bad_certificate alert, as Go does when
        // etcd's VerifyPeerCertificate refuses; the acceptor logs etcd's words for it.
        Err(Error::InvalidCertificate(CertificateError::NotValidForName))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate (still checking the handshake signatures): what etcd's
/// dialer does with an auto-TLS (self-signed) pair or no CA file.
#[derive(Debug)]
pub struct NoServerVerification {
    provider: Arc<CryptoProvider>,
}

impl NoServerVerification {
    pub fn new(provider: Arc<CryptoProvider>) -> NoServerVerification {
        NoServerVerification { provider }
    }
}

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
