//! TLS for the client and peer listeners and the peer dialer, as etcd configures it
//! (etcd's `transport.TLSInfo`): rustls with the ring provider, over glommio sockets.
//!
//! - [`TlsInfo`]: one side's files and switches (`--cert-file`, `--trusted-ca-file`,
//!   `--client-cert-auth`, `--client-crl-file`, allowed CN / hostname, auto-TLS) and the
//!   versions and cipher suites both sides share.
//! - [`Material`]: what the files held, read and checked (at boot, then again whenever a
//!   file changes: [`stream::Acceptor`] and [`stream::Connector`] re-read them at most once
//!   a second, on the next handshake, so a rotated certificate is served and shown to
//!   peers without a restart).
//! - [`stream`]: the accept side (handshake with a timeout, the verified client's Common
//!   Name) and the dial side, and [`stream::Stream`], the one socket type the gRPC server
//!   and the peer transport read and write (plain or TLS, TCP or unix).
//!
//! As in etcd: a client certificate is requested (and then required and verified) when
//! `--client-cert-auth` is on or a trusted CA file is given; a CRL file refuses the
//! certificates it lists on every new connection; an auto-TLS certificate is made once
//! into `<data-dir>/fixtures/{client,peer}` and reused; a member dialing peers with an
//! auto-TLS certificate does not verify theirs (they are self-signed).

pub mod auto;
pub mod stream;
mod verify;
pub mod x509;

use rustls::crypto::ring::cipher_suite as suites;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use std::path::PathBuf;
use std::sync::Arc;

/// A CA bundle used when a certificate must be verified and no CA file is given (Go
/// verifies against the system roots then).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS versions and TLS 1.2 cipher suites both listeners and the dialer use
/// (`--tls-min-version`, `--tls-max-version`, `--cipher-suites`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub min_tls13: bool,
    pub max_tls12: bool,
    /// Go names of the TLS 1.2 suites allowed; empty: all of them. TLS 1.3 suites are not
    /// configurable (as in Go).
    pub cipher_suites: Vec<String>,
}

/// One side's TLS settings (client URLs or peer URLs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `--peer-client-cert-file` / `--peer-client-key-file`: the certificate this member
    /// shows when it dials (default: `cert_file`).
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    pub trusted_ca_file: PathBuf,
    pub client_cert_auth: bool,
    pub crl_file: PathBuf,
    /// A client certificate must carry one of these Common Names (peer side only).
    pub allowed_cn: Vec<String>,
    /// A client certificate must be valid for one of these host names or IPs.
    pub allowed_hostname: Vec<String>,
    /// The files are an auto-TLS self-signed pair: the dialer skips verifying servers.
    pub self_signed: bool,
    pub versions: Versions,
}

impl TlsInfo {
    /// No certificate configured: this side is plaintext only.
    pub fn is_empty(&self) -> bool {
        self.cert_file.as_os_str().is_empty() && self.key_file.as_os_str().is_empty()
    }

    /// Whether a client must present a certificate (etcd: `RequireAndVerifyClientCert`
    /// when client-cert-auth is on or a trusted CA file is given).
    pub fn requires_client_cert(&self) -> bool {
        self.client_cert_auth || !self.trusted_ca_file.as_os_str().is_empty()
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        for f in [
            &self.trusted_ca_file,
            &self.crl_file,
            &self.client_cert_file,
            &self.client_key_file,
        ] {
            if !f.as_os_str().is_empty() {
                files.push(f.clone());
            }
        }
        files
    }

    /// Reads every file this side names (blocking: call from the main thread or a
    /// blocking pool, never on an executor).
    pub fn read_files(&self) -> Result<Files, String> {
        if self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            return Err(format!(
                "KeyFile and CertFile must both be present[key: {}, cert: {}]",
                self.key_file.display(),
                self.cert_file.display()
            ));
        }
        let mut contents = Vec::new();
        for path in self.files() {
            match std::fs::read(&path) {
                Ok(bytes) => contents.push((path, bytes)),
                Err(e) => return Err(format!("open {}: {}", path.display(), io_text(&e))),
            }
        }
        Ok(Files { contents })
    }

    /// Reads and checks the files, and builds the server and client configs from them.
    pub fn load(&self) -> Result<Material, String> {
        Material::build(self, &self.read_files()?)
    }
}

/// A side as configured: its files, or an auto-TLS pair to find or make at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub info: TlsInfo,
    /// `--auto-tls` / `--peer-auto-tls` with no certificate given.
    pub auto: Option<Auto>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auto {
    /// `<data-dir>/fixtures/client` or `…/peer`.
    pub dir: PathBuf,
    /// The listen URLs' hosts (the certificate's names).
    pub hosts: Vec<String>,
    pub validity_years: u32,
    /// Add the client-auth purpose (peers dial with it).
    pub client_auth: bool,
}

impl Side {
    /// At boot, on the main thread: makes the auto-TLS pair if needed, then reads and
    /// checks every file. The error names the file.
    pub fn prepare(&self) -> Result<Material, String> {
        let mut info = self.info.clone();
        if let Some(auto) = &self.auto {
            let made = auto::self_cert(
                &auto.dir,
                &auto.hosts,
                auto.validity_years,
                auto.client_auth,
            )?;
            if made.created {
                crate::runtime::log::info(
                    "embed",
                    &format!(
                        "created self-signed certificate {}",
                        made.cert_file.display()
                    ),
                );
            }
            info.cert_file = made.cert_file;
            info.key_file = made.key_file;
            info.self_signed = true;
        }
        info.load()
    }
}

/// The bytes of a side's files, as read; compared to tell whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    contents: Vec<(PathBuf, Vec<u8>)>,
}

impl Files {
    fn get(&self, path: &std::path::Path) -> &[u8] {
        self.contents
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[])
    }
}

/// A side's configs, built from its files.
#[derive(Clone, Debug)]
pub struct Material {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub files: Files,
    /// The settings it was built from (to build it again when the files change).
    pub info: TlsInfo,
}

impl Material {
    pub fn build(info: &TlsInfo, files: &Files) -> Result<Material, String> {
        if !info.allowed_cn.is_empty() && !info.allowed_hostname.is_empty() {
            return Err(format!(
                "AllowedCN and AllowedHostname are mutually exclusive (cn={:?}, hostname={:?})",
                info.allowed_cn.join(","),
                info.allowed_hostname.join(",")
            ));
        }
        let provider = Arc::new(provider(&info.versions)?);
        let versions = protocol_versions(&info.versions)?;
        let certs = parse_certs(&info.cert_file, files.get(&info.cert_file))?;
        let key = parse_key(&info.key_file, files.get(&info.key_file))?;
        let certified = certified_key(&provider, &info.cert_file, certs, key)?;
        let dial_as = if info.client_cert_file.as_os_str().is_empty() {
            certified.clone()
        } else {
            let certs = parse_certs(&info.client_cert_file, files.get(&info.client_cert_file))?;
            let key = parse_key(&info.client_key_file, files.get(&info.client_key_file))?;
            certified_key(&provider, &info.client_cert_file, certs, key)?
        };

        let roots = if info.trusted_ca_file.as_os_str().is_empty() {
            None
        } else {
            Some(parse_roots(
                &info.trusted_ca_file,
                files.get(&info.trusted_ca_file),
            )?)
        };

        // Server side.
        let client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = if info
            .requires_client_cert()
        {
            let roots = match &roots {
                Some(r) => r.clone(),
                None => system_roots(),
            };
            let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            if !info.crl_file.as_os_str().is_empty() {
                let crls = parse_crls(&info.crl_file, files.get(&info.crl_file))?;
                // etcd looks the certificate's serial up in the CRL: only the client's
                // own certificate is checked, and a CRL past its next update still counts.
                builder = builder
                    .with_crls(crls)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let inner = builder
                .build()
                .map_err(|e| format!("{}: {e}", info.trusted_ca_file.display()))?;
            // The CA certificates themselves, which Go also accepts as a client's own.
            let anchors = if info.trusted_ca_file.as_os_str().is_empty() {
                Vec::new()
            } else {
                parse_certs(&info.trusted_ca_file, files.get(&info.trusted_ca_file))?
            };
            Arc::new(verify::AllowedNames::new(
                inner,
                info.allowed_cn.clone(),
                info.allowed_hostname.clone(),
                anchors,
            ))
        } else {
            WebPkiClientVerifier::no_client_auth()
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(certified.cert.clone(), certified.key.clone_key())
            .map_err(|e| format!("{}: {e}", info.cert_file.display()))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        server.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);

        // Dial side: verify the server against the CA file (or skip, for auto-TLS).
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = if info.self_signed || roots.is_none() {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::NoServerVerification::new(
                    provider.clone(),
                )))
        } else {
            let roots = roots.clone().expect("checked above");
            builder.with_root_certificates(roots)
        };
        let mut client = builder
            .with_client_auth_cert(dial_as.cert, dial_as.key)
            .map_err(|e| format!("{}: {e}", info.cert_file.display()))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Material {
            server: Arc::new(server),
            client: Arc::new(client),
            files: files.clone(),
            info: info.clone(),
        })
    }
}

struct CertifiedParts {
    cert: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn certified_key(
    provider: &CryptoProvider,
    path: &std::path::Path,
    cert: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedParts, String> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("{}: cannot use the private key: {e}", path.display()))?;
    let certified = rustls::sign::CertifiedKey::new(cert.clone(), signing);
    if certified.keys_match().is_err() {
        return Err(format!(
            "{}: tls: private key does not match public key",
            path.display()
        ));
    }
    Ok(CertifiedParts { cert, key })
}

impl Clone for CertifiedParts {
    fn clone(&self) -> Self {
        CertifiedParts {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The ring provider with only the suites `versions` allows.
fn provider(versions: &Versions) -> Result<CryptoProvider, String> {
    #[allow(deprecated)]
    // the ring provider has no post-quantum key exchange; it is what builds here
    let mut provider = rustls::crypto::ring::default_provider();
    // Go's order (X25519 first, as etcd and etcdctl offer): ring's default puts P-384
    // first, which costs a dialer ~2.5x the CPU per full handshake (tuning.md, issue 17).
    {
        use rustls::crypto::ring::kx_group;
        provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    }
    if versions.cipher_suites.is_empty() {
        return Ok(provider);
    }
    if versions.min_tls13 {
        return Err(
            "cipher suites cannot be configured with TLS1.3 as the minimum version \
                    (TLS 1.3 suites are not configurable)"
                .into(),
        );
    }
    let mut chosen: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .filter(|s| s.tls13().is_some())
        .copied()
        .collect();
    for name in &versions.cipher_suites {
        chosen.push(cipher_suite(name)?);
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}

/// A Go TLS 1.2 cipher suite name, as `--cipher-suites` takes it.
pub fn cipher_suite(name: &str) -> Result<SupportedCipherSuite, String> {
    Ok(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        // Go knows these; rustls offers no CBC, RC4, 3DES or static-RSA suites.
        "TLS_RSA_WITH_RC4_128_SHA"
        | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA256"
        | "TLS_RSA_WITH_AES_128_GCM_SHA256"
        | "TLS_RSA_WITH_AES_256_GCM_SHA384"
        | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => {
            return Err(format!(
                "cipher suite {name:?} is not supported by Keel (only ECDHE with AES-GCM or \
                 ChaCha20-Poly1305)"
            ))
        }
        _ => return Err(format!("unexpected TLS cipher suite {name:?}")),
    })
}

fn protocol_versions(v: &Versions) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    match (v.min_tls13, v.max_tls12) {
        (true, true) => {
            Err("min version (TLS1.3) is greater than max version (TLS1.2)".to_string())
        }
        (true, false) => Ok(vec![&rustls::version::TLS13]),
        (false, true) => Ok(vec![&rustls::version::TLS12]),
        (false, false) => Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]),
    }
}

fn parse_certs(path: &std::path::Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: tls: failed to find any PEM data in certificate input",
            path.display()
        ));
    }
    Ok(certs)
}

fn parse_key(path: &std::path::Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{}: tls: failed to find any PEM data in key input",
            path.display()
        ),
        e => format!("{}: {e}", path.display()),
    })
}

fn parse_roots(path: &std::path::Path, pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

fn system_roots() -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    Arc::new(roots)
}

fn parse_crls(
    path: &std::path::Path,
    pem: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if crls.is_empty() {
        // etcd also takes a DER-encoded CRL.
        return Ok(vec![CertificateRevocationListDer::from(pem.to_vec())]);
    }
    Ok(crls)
}

fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Why an incoming handshake failed, as the acceptor logs it.
pub fn accept_error_text(e: &std::io::Error) -> String {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match tls {
        // Only the allowed-CN / allowed-hostname check refuses a client for its name.
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) => format!("tls: {}", verify::AUTH_FAILED),
        Some(rustls::Error::NoCertificatesPresented) => {
            "tls: client didn't provide a certificate".to_string()
        }
        _ => error_text(e),
    }
}

/// What went wrong in a handshake or on a TLS connection, in the words Go's TLS stack uses
/// (etcd's logs, and tests written against them, look for these).
pub fn error_text(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref() else {
        return e.to_string();
    };
    let Some(tls) = inner.downcast_ref::<rustls::Error>() else {
        return e.to_string();
    };
    match tls {
        rustls::Error::AlertReceived(alert) => format!("remote error: tls: {}", alert_text(*alert)),
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("tls: {other}")
        }
        rustls::Error::InvalidCertificate(c) => certificate_error_text(c),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("tls: first record does not look like a TLS handshake ({tls})")
        }
        other => format!("tls: {other}"),
    }
}

/// A refused certificate, in Go's x509 words where it has them.
fn certificate_error_text(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match c {
        C::Revoked => "tls: certificate revoked (listed in the CRL)".into(),
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            format!("x509: certificate has expired or is not yet valid ({c})")
        }
        C::UnknownIssuer => "x509: certificate signed by unknown authority".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("x509: certificate is not valid for the requested name ({c})")
        }
        other => format!("tls: bad certificate: {other}"),
    }
}

fn alert_text(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    match alert {
        A::BadCertificate => "bad certificate".into(),
        A::UnknownCA => "unknown certificate authority".into(),
        A::CertificateRevoked => "revoked certificate".into(),
        A::CertificateExpired => "expired certificate".into(),
        A::CertificateUnknown => "unknown certificate".into(),
        A::UnsupportedCertificate => "unsupported certificate".into(),
        A::CertificateRequired => "certificate required".into(),
        A::HandshakeFailure => "handshake failure".into(),
        A::ProtocolVersion => "protocol version not supported".into(),
        A::AccessDenied => "access denied".into(),
        A::DecryptError => "error decrypting message".into(),
        A::DecodeError => "error decoding message".into(),
        A::InternalError => "internal error".into(),
        A::NoApplicationProtocol => "no application protocol".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests;

/// A dialer's config from files, for a client of someone else's cluster (the proxies'
/// `--cacert`, `--cert`, `--key`, `--insecure-skip-tls-verify`): servers verified against
/// `ca` (system roots when empty) unless `skip_verify`; a client certificate when `cert`
/// and `key` are given. Reads files: call at boot, not on an executor.
pub fn dial_config(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("open {}: {}", p.display(), io_text(&e)))
    };
    let versions = Versions::default();
    let provider = Arc::new(provider(&versions)?);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&versions)?)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::NoServerVerification::new(
                provider.clone(),
            )))
    } else if ca.as_os_str().is_empty() {
        builder.with_root_certificates(system_roots())
    } else {
        builder.with_root_certificates(parse_roots(ca, &read(ca)?)?)
    };
    let mut config = if cert.as_os_str().is_empty() && key.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = parse_certs(cert, &read(cert)?)?;
        let k = parse_key(key, &read(key)?)?;
        let parts = certified_key(&provider, cert, certs, k)?;
        builder
            .with_client_auth_cert(parts.cert, parts.key)
            .map_err(|e| format!("{}: {e}", cert.display()))?
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
