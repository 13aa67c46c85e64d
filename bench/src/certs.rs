//! Certificates for the TLS rows, made once per run with rcgen: a CA, a server certificate
//! it signed (SANs 127.0.0.1 and localhost, server and client auth) that both servers
//! present, and a client certificate (client auth) the load generator presents. All keys
//! are ECDSA P-256, as cfssl makes by default for etcd deployments.
//!
//! The load generator's client config offers X25519 first, as Go clients (clientv3,
//! etcdctl) do and as Keel's `tls::Material` does; rustls' ring provider's own order puts
//! P-384 first, and both servers then do a P-384 key exchange (slow in ring and in Go 1.19
//! alike): `--tls-kx p384` measures that.

use keel::tls::{Material, TlsInfo};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// Makes the five files in `dir`.
    pub fn make(dir: &Path) -> Result<Certs, String> {
        let e = |e: rcgen::Error| e.to_string();
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let ca_key = rcgen::KeyPair::generate().map_err(e)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keel-bench CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).map_err(e)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let leaf = |cn: &str,
                    sans: Vec<String>,
                    usages: Vec<rcgen::ExtendedKeyUsagePurpose>|
         -> Result<(String, String), String> {
            let key = rcgen::KeyPair::generate().map_err(e)?;
            let mut params = rcgen::CertificateParams::new(sans).map_err(e)?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::DigitalSignature,
                rcgen::KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &issuer).map_err(e)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (server_pem, server_key_pem) = leaf(
            "keel-bench server",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![ServerAuth, ClientAuth],
        )?;
        let (client_pem, client_key_pem) = leaf("keel-bench client", vec![], vec![ClientAuth])?;
        let write = |name: &str, text: &str| -> Result<PathBuf, String> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        };
        Ok(Certs {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_pem)?,
            server_key: write("server-key.pem", &server_key_pem)?,
            client_cert: write("client.pem", &client_pem)?,
            client_key: write("client-key.pem", &client_key_pem)?,
        })
    }

    /// The server flags, the same for etcd and Keel: mutual TLS on the client URLs.
    pub fn server_flags(&self) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        vec![
            "--cert-file".into(),
            s(&self.server_cert),
            "--key-file".into(),
            s(&self.server_key),
            "--trusted-ca-file".into(),
            s(&self.ca),
            "--client-cert-auth".into(),
        ]
    }

    /// The load generator's side: presents the client certificate, trusts the CA.
    pub fn client_material(&self, kx: Kx) -> Result<Arc<Material>, String> {
        client_material(&self.client_cert, &self.client_key, &self.ca, kx)
    }
}

/// The key exchange a client offers first (its TLS 1.3 key share).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kx {
    /// X25519, then P-256, then P-384: Go's order, so what etcd's clients (clientv3,
    /// etcdctl, grpc-go) send. The default.
    X25519,
    /// rustls' ring provider's own default order (P-384, X25519, P-256), which Keel's
    /// `tls::Material` used before issue 17's measurements moved it to Go's order.
    RustlsDefault,
}

impl Kx {
    pub fn parse(s: &str) -> Kx {
        match s {
            "x25519" => Kx::X25519,
            "p384" | "rustls-default" => Kx::RustlsDefault,
            _ => {
                eprintln!("--tls-kx: x25519 or p384, not {s}");
                std::process::exit(2)
            }
        }
    }
}

/// A client's TLS material from its files (`--cert --key --cacert` of the load modes):
/// Keel's own (`TlsInfo::load`, ALPN h2), with the client config's key exchange order
/// set by `kx`.
pub fn client_material(
    cert: &Path,
    key: &Path,
    ca: &Path,
    kx: Kx,
) -> Result<Arc<Material>, String> {
    let mut material = TlsInfo {
        cert_file: cert.to_path_buf(),
        key_file: key.to_path_buf(),
        trusted_ca_file: ca.to_path_buf(),
        ..Default::default()
    }
    .load()?;
    if kx == Kx::RustlsDefault {
        material.client = Arc::new(ring_order_client(cert, key, ca)?);
    }
    Ok(Arc::new(material))
}

/// The client config `Material::build` makes (ring, TLS 1.3 and 1.2, the CA as the only
/// root, the client certificate, ALPN h2), with ring's own key exchange order (P-384
/// first): a rustls config's provider cannot be changed once built, so this builds it again.
fn ring_order_client(cert: &Path, key: &Path, ca: &Path) -> Result<rustls::ClientConfig, String> {
    #[allow(deprecated)] // as keel::tls: ring has no post-quantum key exchange
    use rustls::crypto::ring::default_provider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_slice_iter(&read(p)?)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    #[allow(deprecated)]
    let provider = default_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert)?, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_load_as_client_and_server_material() {
        let dir = std::env::temp_dir().join(format!("keel-bench-certs-{}", std::process::id()));
        let certs = Certs::make(&dir).unwrap();
        for kx in [Kx::X25519, Kx::RustlsDefault] {
            let client = certs.client_material(kx).unwrap();
            assert_eq!(client.client.alpn_protocols, vec![b"h2".to_vec()]);
            let first = client.client.crypto_provider().kx_groups[0].name();
            let want = match kx {
                Kx::X25519 => rustls::NamedGroup::X25519,
                Kx::RustlsDefault => rustls::NamedGroup::secp384r1,
            };
            assert_eq!(first, want, "{kx:?}");
        }
        let server = TlsInfo {
            cert_file: certs.server_cert.clone(),
            key_file: certs.server_key.clone(),
            trusted_ca_file: certs.ca.clone(),
            client_cert_auth: true,
            ..Default::default()
        }
        .load();
        assert!(server.is_ok(), "{:?}", server.err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
