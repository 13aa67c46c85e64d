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
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
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
    assert!(
        err.contains("nope.pem") && err.contains("no such file"),
        "{err}"
    );
    let err = TlsInfo {
        cert_file: i.cert_file.clone(),
        ..Default::default()
    }
    .load()
    .unwrap_err();
    assert!(
        err.starts_with("KeyFile and CertFile must both be present"),
        "{err}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = Dir::new("mismatch");
    let (ca, cert, _) = ca_and_leaf("example.com");
    let (_, _, other_key) = ca_and_leaf("other");
    let err = info(&dir, &ca, &cert, &other_key).load().unwrap_err();
    assert!(
        err.contains("private key does not match public key"),
        "{err}"
    );
}

#[test]
fn garbage_files_are_refused() {
    let dir = Dir::new("garbage");
    let (ca, cert, key) = ca_and_leaf("example.com");
    let err = info(&dir, &ca, "not a certificate", &key)
        .load()
        .unwrap_err();
    assert!(
        err.contains("failed to find any PEM data in certificate input"),
        "{err}"
    );
    let err = info(&dir, &ca, &cert, "junk").load().unwrap_err();
    assert!(
        err.contains("failed to find any PEM data in key input"),
        "{err}"
    );
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

/// A CA that signs a server certificate and client certificates, as files in `dir`.
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ca");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: rcgen::Issuer::new(params, ca_key),
        }
    }

    /// (cert pem, key pem, serial) for `cn`, valid for localhost and 127.0.0.1.
    fn leaf(&self, cn: &str, serial: u64) -> (String, String, rcgen::SerialNumber) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let serial = rcgen::SerialNumber::from_slice(&serial.to_be_bytes());
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), serial)
    }

    fn crl(&self, revoked: &rcgen::SerialNumber) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2021, 1, 1), // long past, as etcd's fixture
            crl_number: rcgen::SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: revoked.clone(),
                revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

/// One handshake over loopback between an acceptor for `server` and a dialer with
/// `client`'s certificate: the accepted CN, or the acceptor's error text.
fn handshake(server: TlsInfo, client: TlsInfo) -> Result<Option<String>, String> {
    crate::runtime::block_on(async move {
        let server_material = server.load().unwrap();
        let client_material = client.load().unwrap();
        let acceptor = stream::Acceptor::new(server_material);
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dial = glommio::spawn_local(async move {
            let tcp = glommio::net::TcpStream::connect(addr).await.unwrap();
            let connector = stream::Connector::new(&client_material);
            let mut s = match connector
                .connect("localhost", stream::Plain::Tcp(tcp))
                .await
            {
                Ok(s) => s,
                Err(_) => return,
            };
            // TLS 1.3: a refused client certificate shows on the first read.
            use futures_lite::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"x").await;
            let _ = s.flush().await;
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
        });
        let tcp = listener.accept().await.unwrap();
        let mode = stream::Mode::Tls(acceptor);
        let res = match mode.accept(stream::Plain::Tcp(tcp)).await {
            Ok(a) => Ok(a.common_name.map(|cn| cn.to_string())),
            Err(e) => Err(e.to_string()),
        };
        dial.cancel().await;
        res
    })
}

fn files(dir: &Dir, tag: &str, ca: &str, cert: &str, key: &str) -> TlsInfo {
    TlsInfo {
        cert_file: dir.write(&format!("{tag}.pem"), cert),
        key_file: dir.write(&format!("{tag}-key.pem"), key),
        trusted_ca_file: dir.write("ca.pem", ca),
        ..Default::default()
    }
}

#[test]
fn the_verified_client_cn_reaches_the_acceptor() {
    let dir = Dir::new("cn");
    let pki = Pki::new();
    let (scert, skey, _) = pki.leaf("example.com", 1);
    let (ccert, ckey, _) = pki.leaf("alice", 2);
    let mut server = files(&dir, "server", &pki.ca_pem, &scert, &skey);
    server.client_cert_auth = true;
    let client = files(&dir, "client", &pki.ca_pem, &ccert, &ckey);
    assert_eq!(handshake(server, client), Ok(Some("alice".to_string())));
}

#[test]
fn a_revoked_client_is_refused_and_others_are_not() {
    let dir = Dir::new("crl");
    let pki = Pki::new();
    let (scert, skey, _) = pki.leaf("example.com", 1);
    let (bad, bad_key, bad_serial) = pki.leaf("mallory", 3);
    let (good, good_key, _) = pki.leaf("alice", 4);
    let mut server = files(&dir, "server", &pki.ca_pem, &scert, &skey);
    server.client_cert_auth = true;
    server.crl_file = dir.write("crl.pem", &pki.crl(&bad_serial));
    let refused = handshake(
        server.clone(),
        files(&dir, "bad", &pki.ca_pem, &bad, &bad_key),
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("revoked")),
        "{refused:?}"
    );
    let accepted = handshake(server, files(&dir, "good", &pki.ca_pem, &good, &good_key));
    assert_eq!(accepted, Ok(Some("alice".to_string())));
}

#[test]
fn allowed_cn_and_hostname_are_enforced() {
    let dir = Dir::new("allowed");
    let pki = Pki::new();
    let (scert, skey, _) = pki.leaf("example.com", 1);
    let (ccert, ckey, _) = pki.leaf("peer-2", 2);
    let mut server = files(&dir, "server", &pki.ca_pem, &scert, &skey);
    server.client_cert_auth = true;
    let client = files(&dir, "client", &pki.ca_pem, &ccert, &ckey);
    server.allowed_cn = vec!["peer-1".into()];
    let refused = handshake(server.clone(), client.clone());
    assert_eq!(
        refused,
        Err("tls: client certificate authentication failed".to_string())
    );
    server.allowed_cn = vec!["peer-1".into(), "peer-2".into()];
    assert_eq!(
        handshake(server.clone(), client.clone()),
        Ok(Some("peer-2".into()))
    );
    server.allowed_cn = vec![];
    server.allowed_hostname = vec!["other.example".into()];
    assert!(handshake(server.clone(), client.clone()).is_err());
    server.allowed_hostname = vec!["localhost".into()];
    assert_eq!(handshake(server, client), Ok(Some("peer-2".into())));
}

#[test]
fn no_client_certificate_when_none_is_asked() {
    let dir = Dir::new("nocert");
    let pki = Pki::new();
    let (scert, skey, _) = pki.leaf("example.com", 1);
    let mut server = files(&dir, "server", &pki.ca_pem, &scert, &skey);
    server.trusted_ca_file = PathBuf::new();
    let client = files(&dir, "client", &pki.ca_pem, &scert, &skey);
    // No CA file and no --client-cert-auth: no certificate requested, so no CN.
    assert_eq!(handshake(server, client), Ok(None));
}
