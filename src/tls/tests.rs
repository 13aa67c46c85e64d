use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("keel-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a leaf it signed, as PEM: (ca cert, leaf cert, leaf key).
fn ca_and_leaf(cn: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

fn info(dir: &Dir, ca: &str, cert: &str, key: &str) -> TlsInfo {
    TlsInfo {
        cert_file: dir.write("cert.pem", cert),
        key_file: dir.write("key.pem", key),
        trusted_ca_file: dir.write("ca.pem", ca),
        client_cert_auth: true,
        ..Default::default()
    }
}

#[test]
fn a_good_pair_loads_and_offers_h2() {
    let dir = Dir::new("good");
    let (ca, cert, key) = ca_and_leaf("example.com");
    let m = info(&dir, &ca, &cert, &key).load().unwrap();
    assert_eq!(m.server.alpn_protocols, vec![b"h2".to_vec()]);
}

#[test]
fn missing_files_are_named() {
    let dir = Dir::new("missing");
    let (ca, cert, key) = ca_and_leaf("example.com");
    let mut i = info(&dir, &ca, &cert, &key);
    i.key_file = dir.0.join("nope.pem");
    let err = i.load().unwrap_err();
    assert!(err.contains("nope.pem") && err.contains("no such file"), "{err}");
    let err = TlsInfo {
        cert_file: i.cert_file.clone(),
        ..Default::default()
    }
    .load()
    .unwrap_err();
    assert!(err.starts_with("KeyFile and CertFile must both be present"), "{err}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = Dir::new("mismatch");
    let (ca, cert, _) = ca_and_leaf("example.com");
    let (_, _, other_key) = ca_and_leaf("other");
    let err = info(&dir, &ca, &cert, &other_key).load().unwrap_err();
    assert!(err.contains("private key does not match public key"), "{err}");
}

#[test]
fn garbage_files_are_refused() {
    let dir = Dir::new("garbage");
    let (ca, cert, key) = ca_and_leaf("example.com");
    let err = info(&dir, &ca, "not a certificate", &key).load().unwrap_err();
    assert!(err.contains("failed to find any PEM data in certificate input"), "{err}");
    let err = info(&dir, &ca, &cert, "junk").load().unwrap_err();
    assert!(err.contains("failed to find any PEM data in key input"), "{err}");
    let err = info(&dir, "junk", &cert, &key).load().unwrap_err();
    assert!(err.contains("ca.pem"), "{err}");
}

#[test]
fn versions_and_cipher_suites() {
    assert!(cipher_suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").is_ok());
    assert!(cipher_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305").is_ok());
    assert_eq!(
        cipher_suite("TLS_BOGUS").unwrap_err(),
        "unexpected TLS cipher suite \"TLS_BOGUS\""
    );
    assert!(cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA")
        .unwrap_err()
        .contains("not supported"));
    let dir = Dir::new("versions");
    let (ca, cert, key) = ca_and_leaf("example.com");
    let mut i = info(&dir, &ca, &cert, &key);
    i.versions = Versions {
        min_tls13: true,
        max_tls12: true,
        cipher_suites: vec![],
    };
    assert!(i.load().unwrap_err().contains("greater than max version"));
    i.versions = Versions {
        min_tls13: false,
        max_tls12: true,
        cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()],
    };
    i.load().unwrap();
}
