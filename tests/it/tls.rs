//! TLS against the real server binary: etcdctl and the etcd-client crate over mutual TLS,
//! every kind of bad client (certificates expired, untrusted, revoked or missing; plaintext
//! on a TLS port and TLS on a plaintext one; a truncated, garbage or stalled handshake)
//! refused on its own connection while the member keeps serving everyone else, bad
//! certificate files stopping the boot with the file named, certificate and CRL rotation
//! without a restart, http and https on one port, auto-TLS, and peer TLS (a 3-member
//! cluster that survives a kill -9 of its leader; rotated peer certificates used on new
//! peer connections), a peer URL twice on one port refused, and unix peer URLs.
//!
//! Every certificate is made here with rcgen (a CA, server and client certificates, an
//! expired one, one from another CA, a CRL) into a temp dir. The raw probes speak TLS with
//! rustls over std sockets, so what the server sends (its certificate, its alerts) is seen
//! as a client sees it.
//!
//! `KEEL_TEST_SERVER=/usr/bin/etcd cargo nextest run --test it tls::` runs the same tests
//! against etcd 3.4; the few Keel-only checks (etcd has no handshake timeout, reads a CRL
//! file only per connection, fails handshakes while a rewritten key does not match, logs
//! no reload) say so where they are skipped.

use crate::common;

use common::{etcdctl_bare, free_port, runtime, Cluster, Ctl, Server, FAST_ELECTIONS, LIVENESS};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A member's certificate: SANs localhost and 127.0.0.1, server and client auth (peers
    /// dial with it too).
    Member,
    /// A client's: no SANs (etcd then checks no address), client auth only.
    Client,
    /// A client's that expired in 2021.
    ExpiredClient,
}

/// A certificate and its key, written as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pair {
    fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "keel tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A leaf certificate with this Common Name and serial number, signed by this CA.
    fn issue(
        &self,
        cn: &str,
        serial: u64,
        kind: Kind,
    ) -> (String, String, CertificateDer<'static>) {
        let sans: Vec<String> = match kind {
            Kind::Member => vec!["localhost".into(), "127.0.0.1".into()],
            Kind::Client | Kind::ExpiredClient => Vec::new(),
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "keel tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match kind {
            Kind::Member => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Kind::Client | Kind::ExpiredClient => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        if kind == Kind::ExpiredClient {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// A CRL from this CA revoking `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

const SERVER_SERIAL: u64 = 0x5e01;
const ALICE_SERIAL: u64 = 0xa11ce;
const MALLORY_SERIAL: u64 = 0xbad;

/// One test's certificates, in their own temp dir (removed on drop unless the test failed).
struct Pki {
    dir: PathBuf,
    ca: Ca,
    ca_file: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "keel-pki-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("keel test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        Pki { dir, ca, ca_file }
    }

    fn ca(&self) -> &str {
        self.ca_file.to_str().unwrap()
    }

    /// A pair from this PKI's CA, written as `<name>.pem` and `<name>-key.pem`.
    fn pair(&self, name: &str, cn: &str, serial: u64, kind: Kind) -> Pair {
        self.pair_from(&self.ca, name, cn, serial, kind)
    }

    fn pair_from(&self, ca: &Ca, name: &str, cn: &str, serial: u64, kind: Kind) -> Pair {
        let (cert_pem, key_pem, der) = ca.issue(cn, serial, kind);
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        Pair {
            cert,
            key,
            cert_pem,
            key_pem,
            der,
        }
    }

    /// The usual member certificate (CN keel-server).
    fn server(&self) -> Pair {
        self.pair("server", "keel-server", SERVER_SERIAL, Kind::Member)
    }

    /// The usual good client (CN alice).
    fn alice(&self) -> Pair {
        self.pair("alice", "alice", ALICE_SERIAL, Kind::Client)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// The server flags of a client-cert-auth TLS member.
fn mtls_server_flags(p: &Pki, server: &Pair) -> Vec<String> {
    [
        "--cert-file",
        server.cert(),
        "--key-file",
        server.key(),
        "--trusted-ca-file",
        p.ca(),
        "--client-cert-auth",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// etcdctl's TLS flags for `client`, bounded so a refused connection fails quickly.
fn ctl_flags(p: &Pki, client: Option<&Pair>) -> Vec<String> {
    let mut f = vec![
        format!("--cacert={}", p.ca()),
        "--dial-timeout=2s".to_string(),
        "--command-timeout=5s".to_string(),
    ];
    if let Some(c) = client {
        f.push(format!("--cert={}", c.cert()));
        f.push(format!("--key={}", c.key()));
    }
    f
}

// ---------------------------------------------------------------------------------------
// Raw TLS probes (rustls over std sockets)
// ---------------------------------------------------------------------------------------

#[allow(deprecated)] // ring has no post-quantum key exchange; Keel's server uses ring too
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (for looking at what a server serves).
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config trusting `ca_pem` (or any server, when `None`), showing `identity`.
fn client_config(ca_pem: Option<&str>, identity: Option<&Pair>) -> Arc<ClientConfig> {
    client_config_versions(ca_pem, identity, rustls::DEFAULT_VERSIONS)
}

/// Like `client_config`, offering only `versions`.
fn client_config_versions(
    ca_pem: Option<&str>,
    identity: Option<&Pair>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider()))),
    };
    let mut cfg = match identity {
        Some(id) => {
            let certs = vec![id.der.clone()];
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// What a TLS probe saw.
#[derive(Debug)]
struct Probe {
    /// The local address the probe connected from (the server logs it on a refusal).
    from: String,
    /// The certificates the server showed.
    certs: Vec<CertificateDer<'static>>,
    /// After the handshake, the HTTP/2 preface was sent: `Ok` if the server answered with
    /// data, else why not (with TLS 1.3 a refused client certificate shows up here, as an
    /// alert, after the client's side of the handshake is done).
    answer: Result<(), String>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
/// No probe or raw socket waits longer than this for the server.
const SOCKET_WAIT: Duration = Duration::from_secs(30);

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(SOCKET_WAIT)).unwrap();
    s.set_write_timeout(Some(SOCKET_WAIT)).unwrap();
    s
}

/// A TLS handshake with the server on `port` as `cfg` says; `Err` if the handshake failed.
fn probe(port: u16, cfg: Arc<ClientConfig>) -> Result<Probe, (String, String)> {
    let mut sock = connect(port);
    let from = sock.local_addr().unwrap().to_string();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = ClientConnection::new(cfg, name).unwrap();
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            return Err((from, e.to_string()));
        }
    }
    let certs = conn
        .peer_certificates()
        .unwrap_or(&[])
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let answer = (|| -> std::io::Result<()> {
        tls.write_all(H2_PREFACE)?;
        tls.write_all(&H2_SETTINGS)?;
        tls.flush()?;
        let mut buf = [0u8; 64];
        match tls.read(&mut buf)? {
            0 => Err(std::io::Error::other("closed without an answer")),
            _ => Ok(()),
        }
    })()
    .map_err(|e| e.to_string());
    Ok(Probe {
        from,
        certs,
        answer,
    })
}

/// The TLS bytes of a real ClientHello (what rustls sends first).
fn client_hello() -> Vec<u8> {
    let mut conn = ClientConnection::new(
        client_config(None, None),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

/// The certificate the server on `port` shows, as `openssl s_client` gets it.
fn openssl_served_cert(port: u16) -> CertificateDer<'static> {
    let out = std::process::Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    CertificateDer::from_pem_slice(text.as_bytes())
        .unwrap_or_else(|e| panic!("no certificate from openssl s_client ({e}): {text}"))
}

/// Reads until the server closes the connection (EOF or reset); panics if it is still
/// open after [`SOCKET_WAIT`]. Returns what the server sent and how long it took.
#[track_caller]
fn wait_closed(sock: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return (got, start.elapsed())
            }
            Err(e) => panic!(
                "the server did not close the connection in {SOCKET_WAIT:?}: {e} (after {:?}, got {got:?})",
                start.elapsed()
            ),
        }
        assert!(
            start.elapsed() < SOCKET_WAIT,
            "the server keeps the connection open"
        );
    }
}

/// Waits (10 s at most) until the server's log has a `rejected connection from "<from>"`
/// line, and returns that line.
#[track_caller]
fn rejected_line(s: &Server, from: &str) -> String {
    let needle = format!("rejected connection from \"{from}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = s.log().lines().find(|l| l.contains(&needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rejections(s: &Server) -> usize {
    s.log().matches("rejected connection from").count()
}

/// Waits (10 s at most) until the log has more than `before` rejection lines, one of
/// the new ones containing (any case) `word`.
#[track_caller]
fn wait_rejection_with(s: &Server, before: usize, word: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = s.log();
        let new: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("rejected connection from"))
            .skip(before)
            .collect();
        if new.iter().any(|l| l.to_lowercase().contains(word)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no new rejection mentioning {word:?}; new ones: {new:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Keys a test wrote and checks are all still there, each check writing one more.
struct Written {
    prefix: String,
    keys: Vec<(String, String)>,
}

impl Written {
    fn new(prefix: &str) -> Written {
        Written {
            prefix: prefix.to_string(),
            keys: Vec::new(),
        }
    }

    /// The member still serves a good client: every key written so far is there, and a
    /// new one can be written.
    #[track_caller]
    fn check(&mut self, s: &Server, after: &str) {
        let n = self.keys.len();
        let (k, v) = (
            format!("{}{n:03}", self.prefix),
            format!("v{n} after {after}"),
        );
        let put = s.etcdctl(&["put", &k, &v]);
        assert!(put.ok && put.stdout == "OK\n", "put after {after}: {put:?}");
        self.keys.push((k, v));
        let expected: String = self
            .keys
            .iter()
            .map(|(k, v)| format!("{k}\n{v}\n"))
            .collect();
        let got = s.etcdctl(&["get", "--prefix", &self.prefix]);
        assert!(got.ok, "get after {after}: {got:?}");
        assert_eq!(got.stdout, expected, "keys after {after}");
    }
}

// ---------------------------------------------------------------------------------------
// Good clients
// ---------------------------------------------------------------------------------------

#[test]
fn etcdctl_over_mutual_tls_put_get_txn_watch() {
    let p = Pki::new("mtls-ctl");
    let (server, alice) = (p.server(), p.alice());
    let s = Server::start_https(
        "mtls-ctl",
        &strs(&ctl_flags(&p, Some(&alice))),
        &strs(&mtls_server_flags(&p, &server)),
    );
    assert!(s.client_url().starts_with("https://"));
    s.etcdctl(&["put", "foo", "bar"]).expect_ok("OK\n");
    s.etcdctl(&["get", "foo"]).expect_ok("foo\nbar\n");
    s.etcdctl_stdin(
        &["txn"],
        "value(\"foo\") = \"bar\"\n\nput foo baz\nput t ok\n\nput foo nope\n\n",
    )
    .expect_ok("SUCCESS\n\nOK\n\nOK\n");
    s.etcdctl(&["get", "--prefix", ""])
        .expect_ok("foo\nbaz\nt\nok\n");
    let mut watch = s.etcdctl_spawn(&["watch", "w", "--prefix"]);
    // The watch is registered once a put shows up; keep putting until it does.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    while !watch.stdout().contains("PUT\n") {
        assert!(
            Instant::now() < deadline,
            "watch saw nothing: {:?}",
            watch.stderr()
        );
        s.etcdctl(&["put", &format!("w{i}"), "x"]).expect_ok("OK\n");
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    s.etcdctl(&["put", "w-last", "over tls"]).expect_ok("OK\n");
    watch.wait_for("PUT\nw-last\nover tls\n", Duration::from_secs(10));
    watch.kill9();
    // The member status over the same TLS connection kind.
    let st = s.etcdctl(&["endpoint", "status"]);
    assert!(st.ok && st.stdout.contains(&s.client_url()), "{st:?}");
}

#[test]
fn etcd_client_crate_over_mutual_tls() {
    let p = Pki::new("mtls-crate");
    let (server, alice) = (p.server(), p.alice());
    let s = Server::start_https(
        "mtls-crate",
        &strs(&ctl_flags(&p, Some(&alice))),
        &strs(&mtls_server_flags(&p, &server)),
    );
    let url = s.client_url();
    runtime().block_on(async {
        let opts = |identity: bool| {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(p.ca.pem.clone()));
            if identity {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    alice.cert_pem.clone(),
                    alice.key_pem.clone(),
                ));
            }
            etcd_client::ConnectOptions::new()
                .with_tls(tls)
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(10))
        };
        let mut c = etcd_client::Client::connect([url.clone()], Some(opts(true)))
            .await
            .expect("connect over mutual TLS");
        c.put("crate/a", "1", None).await.unwrap();
        let got = c.get("crate/a", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"1");
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::value(
                "crate/a",
                etcd_client::CompareOp::Equal,
                "1",
            )])
            .and_then([etcd_client::TxnOp::put("crate/a", "2", None)]);
        assert!(c.txn(txn).await.unwrap().succeeded());
        let mut stream = c
            .watch(
                "crate/w",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        c.put("crate/w1", "x", None).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let resp = stream.message().await.unwrap().expect("watch stream open");
                if let Some(ev) = resp.events().first() {
                    return ev.kv().unwrap().key().to_vec();
                }
            }
        })
        .await
        .expect("a watch event over TLS");
        assert_eq!(ev, b"crate/w1");
        let st = c.status().await.unwrap();
        assert!(st.version().starts_with("3.4"), "{st:?}");

        // Without a client certificate the server refuses it: every call fails, in time.
        let refused = async {
            let mut c = etcd_client::Client::connect([url.clone()], Some(opts(false))).await?;
            c.get("crate/a", None).await
        };
        let r = tokio::time::timeout(Duration::from_secs(20), refused)
            .await
            .expect("a refused client gets an answer in time");
        assert!(
            r.is_err(),
            "a client without a certificate was served: {r:?}"
        );
    });
    // The certificate-less connection was refused for that reason, and only it.
    wait_rejection_with(&s, 0, "certificate");
    s.etcdctl(&["get", "crate/a", "--print-value-only"])
        .expect_ok("2\n");
}

// ---------------------------------------------------------------------------------------
// Bad clients: each refused on its own connection, the member keeps serving
// ---------------------------------------------------------------------------------------

#[test]
fn bad_client_certificates_are_refused_and_the_member_keeps_serving() {
    let p = Pki::new("badcerts");
    let (server, alice) = (p.server(), p.alice());
    let expired = p.pair("expired", "old-alice", 0xe1, Kind::ExpiredClient);
    let other_ca = Ca::new("some other CA");
    let untrusted = p.pair_from(&other_ca, "untrusted", "eve", 0xe7e, Kind::Client);
    let revoked = p.pair("revoked", "mallory", MALLORY_SERIAL, Kind::Client);
    let crl = p.file("crl.pem", &p.ca.crl(&[MALLORY_SERIAL]));
    let mut flags = mtls_server_flags(&p, &server);
    flags.extend([
        "--client-crl-file".to_string(),
        crl.to_str().unwrap().to_string(),
    ]);
    let s = Server::start_https(
        "badcerts",
        &strs(&ctl_flags(&p, Some(&alice))),
        &strs(&flags),
    );
    let mut w = Written::new("bc/");
    w.check(&s, "start");

    // (name, the client's certificate, a word the server's refusal must mention)
    let cases: [(&str, Option<&Pair>, &str); 4] = [
        ("expired certificate", Some(&expired), "expired"),
        (
            "certificate from an untrusted CA",
            Some(&untrusted),
            "unknown",
        ),
        ("revoked certificate", Some(&revoked), "revoked"),
        ("no certificate", None, "didn't provide a certificate"),
    ];
    for (what, cert, word) in cases {
        // etcdctl gives up with an error.
        let before = rejections(&s);
        let mut args = vec![format!("--endpoints={}", s.client_url())];
        args.extend(ctl_flags(&p, cert));
        // (It connects, then its calls fail: give up sooner than a good client would.)
        args.extend([
            "--command-timeout=2s".to_string(),
            "get".to_string(),
            "bc/000".to_string(),
        ]);
        let ctl = etcdctl_bare(&strs(&args));
        assert!(!ctl.ok, "etcdctl with {what} was served: {ctl:?}");
        wait_rejection_with(&s, before, word);

        // A raw client sees the refusal on its own connection, which the server closes:
        // with TLS 1.3 after its side of the handshake is done (an alert on its first
        // read), with TLS 1.2 during the handshake.
        for (version, versions) in [
            ("TLS 1.3", &[&rustls::version::TLS13][..]),
            ("TLS 1.2", &[&rustls::version::TLS12][..]),
        ] {
            let seen = probe(
                s.client_port,
                client_config_versions(Some(&p.ca.pem), cert, versions),
            );
            let (from, err) = match seen {
                Ok(pr) => (pr.from, pr.answer.expect_err("refused client answered")),
                Err(e) => e,
            };
            let line = rejected_line(&s, &from);
            eprintln!("{what} ({version}): {line}");
            assert!(
                line.to_lowercase().contains(word),
                "{what} ({version}): {line}"
            );
            // The alert, or the closed socket when the server's close overtakes it.
            assert!(
                ["alert", "closed", "reset", "Broken pipe"]
                    .iter()
                    .any(|w| err.contains(w)),
                "{what} ({version}): the client saw {err:?}"
            );
        }
        w.check(&s, what);
    }
    // The good certificate is served, and is who the member thinks it is.
    let good = probe(s.client_port, client_config(Some(&p.ca.pem), Some(&alice))).unwrap();
    assert_eq!(good.answer, Ok(()));
    assert_eq!(good.certs[0], server.der);
}

#[test]
fn plaintext_garbage_and_cut_handshakes_close_only_their_connection() {
    let p = Pki::new("garbage");
    let (server, alice) = (p.server(), p.alice());
    let plain_port = free_port();
    let mut s = Server::unstarted("garbage");
    s.client_scheme = "https".into();
    s.ctl_flags = ctl_flags(&p, Some(&alice));
    // A TLS port (the client URL) and a plaintext one.
    let urls = format!("{},http://127.0.0.1:{plain_port}", s.client_url());
    let mut args = single_member_args(&s, &urls, &s.client_url());
    args.extend(mtls_server_flags(&p, &server));
    s.set_args(args);
    s.spawn();
    s.wait_ready(common::READY_TIME_MAX);
    let mut w = Written::new("gb/");
    w.check(&s, "start");

    // etcdctl in plaintext on the TLS port.
    let before = rejections(&s);
    let ctl = etcdctl_bare(&[
        &format!("--endpoints=http://127.0.0.1:{}", s.client_port),
        "--dial-timeout=2s",
        "--command-timeout=2s",
        "get",
        "gb/000",
    ]);
    assert!(!ctl.ok, "plaintext etcdctl served on a TLS port: {ctl:?}");
    wait_rejection_with(&s, before, "does not look like a tls handshake");
    w.check(&s, "plaintext etcdctl on the TLS port");

    // An HTTP/2 (h2c) preface on the TLS port.
    let mut sock = connect(s.client_port);
    let from = sock.local_addr().unwrap().to_string();
    sock.write_all(H2_PREFACE).unwrap();
    sock.write_all(&H2_SETTINGS).unwrap();
    wait_closed(&mut sock);
    let line = rejected_line(&s, &from);
    assert!(
        line.contains("does not look like a TLS handshake"),
        "{line}"
    );
    w.check(&s, "an h2c preface on the TLS port");

    // TLS on the plaintext port: no handshake, and etcdctl fails.
    let r = probe(plain_port, client_config(Some(&p.ca.pem), Some(&alice)));
    assert!(r.is_err(), "a TLS handshake on a plaintext port: {r:?}");
    let ctl = etcdctl_bare(&[
        &format!("--endpoints=https://127.0.0.1:{plain_port}"),
        &format!("--cacert={}", p.ca()),
        &format!("--cert={}", alice.cert()),
        &format!("--key={}", alice.key()),
        "--dial-timeout=2s",
        "--command-timeout=2s",
        "get",
        "gb/000",
    ]);
    assert!(!ctl.ok, "TLS etcdctl served on a plaintext port: {ctl:?}");
    w.check(&s, "TLS on the plaintext port");
    // The plaintext port still serves plaintext.
    etcdctl_bare(&[
        &format!("--endpoints=http://127.0.0.1:{plain_port}"),
        "get",
        "gb/000",
        "--print-value-only",
    ])
    .expect_ok("v0 after start\n");

    // Half a ClientHello, then the client leaves.
    let hello = client_hello();
    let mut sock = connect(s.client_port);
    let from = sock.local_addr().unwrap().to_string();
    sock.write_all(&hello[..hello.len() / 2]).unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    wait_closed(&mut sock);
    rejected_line(&s, &from);
    w.check(&s, "a truncated ClientHello");

    // Garbage that starts like a handshake record: a record header, then a "ClientHello"
    // of random bytes (seeded), then the client leaves. Several shapes.
    let mut rng = common::Rng(0x9e3779b97f4a7c15);
    for n in [0usize, 1, 5, 40, 300, 2000] {
        let mut body: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
        if n >= 4 {
            body[0] = 1; // ClientHello
            let len = (n - 4) as u32;
            body[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
        }
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(n as u16).to_be_bytes());
        rec.extend_from_slice(&body);
        let mut sock = connect(s.client_port);
        let from = sock.local_addr().unwrap().to_string();
        sock.write_all(&rec).unwrap();
        sock.shutdown(Shutdown::Write).unwrap();
        wait_closed(&mut sock);
        rejected_line(&s, &from);
    }
    // And pure noise after the 0x16, no client half-close: the server must give up on it
    // by itself (at once, for a bad record; at worst after the handshake timeout).
    let mut noise = vec![0x16];
    noise.extend((0..512).map(|_| rng.below(256) as u8));
    let mut sock = connect(s.client_port);
    let from = sock.local_addr().unwrap().to_string();
    sock.write_all(&noise).unwrap();
    wait_closed(&mut sock);
    rejected_line(&s, &from);
    w.check(&s, "garbage ClientHellos");
}

#[test]
fn stalled_handshakes_are_cut_by_the_server() {
    let p = Pki::new("stall");
    let (server, alice) = (p.server(), p.alice());
    let both_port = free_port();
    let plain_port = free_port();
    let mut s = Server::unstarted("stall");
    s.client_scheme = "https".into();
    s.ctl_flags = ctl_flags(&p, Some(&alice));
    // A TLS-only port, and one that serves both (its first byte tells).
    let urls = format!(
        "{},http://127.0.0.1:{both_port},https://127.0.0.1:{both_port},\
         http://127.0.0.1:{plain_port}",
        s.client_url()
    );
    let mut args = single_member_args(&s, &urls, &s.client_url());
    args.extend(mtls_server_flags(&p, &server));
    s.set_args(args);
    s.spawn();
    s.wait_ready(common::READY_TIME_MAX);
    let mut w = Written::new("st/");
    w.check(&s, "start");

    // Connections that say nothing, and one that stops halfway through its ClientHello.
    let hello = client_hello();
    let silent_tls = connect(s.client_port);
    let silent_both = connect(both_port);
    let mut half = connect(s.client_port);
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    let froms: Vec<String> = [&silent_tls, &silent_both, &half]
        .iter()
        .map(|c| c.local_addr().unwrap().to_string())
        .collect();
    // They hold nothing up: good clients are served on both ports meanwhile.
    w.check(&s, "stalled connections opened");
    if !common::is_keel() {
        // etcd 3.4 has no handshake timeout: its stalled connections stay open. (And while
        // one is open on the port that serves both, its plaintext side answers nobody.)
        return;
    }
    etcdctl_bare(&[
        &format!("--endpoints=http://127.0.0.1:{both_port}"),
        "get",
        "st/000",
        "--print-value-only",
    ])
    .expect_ok("v0 after start\n");
    let waits: Vec<std::thread::JoinHandle<Duration>> = [
        silent_tls.try_clone(),
        silent_both.try_clone(),
        half.try_clone(),
    ]
    .into_iter()
    .map(|c| {
        let mut c = c.unwrap();
        std::thread::spawn(move || wait_closed(&mut c).1)
    })
    .collect();
    for (wait, from) in waits.into_iter().zip(&froms) {
        let took = wait
            .join()
            .expect("the server closed the stalled connection");
        eprintln!("stalled connection from {from} closed by the server after {took:?}");
        let line = rejected_line(&s, from);
        assert!(line.contains("timed out"), "{line}");
    }
    drop((silent_tls, silent_both, half));
    // A plaintext client that never sends the HTTP/2 preface is cut after the same time.
    let mut silent_plain = connect(plain_port);
    let took = wait_closed(&mut silent_plain).1;
    eprintln!("silent plaintext connection closed by the server after {took:?}");
    w.check(&s, "stalled connections cut");
}

// ---------------------------------------------------------------------------------------
// Bad files at boot
// ---------------------------------------------------------------------------------------

#[test]
fn bad_certificate_files_stop_the_boot_naming_the_file() {
    let p = Pki::new("badfiles");
    let server = p.server();
    let other = p.pair("other", "keel-other", 0x07e, Kind::Member);
    let missing = p.dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let dir = p.dir.join("a-directory.pem");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.to_str().unwrap();
    let not_pem = p.file("not-pem.pem", "this is no certificate\n");
    let not_pem = not_pem.to_str().unwrap();
    let empty = p.file("empty-key.pem", "");
    let empty = empty.to_str().unwrap();

    // (what, TLS flags, words the failure message must carry)
    let mut cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "missing certificate file",
            vec!["--cert-file", missing, "--key-file", server.key()],
            vec![missing, "no such file or directory"],
        ),
        (
            "missing key file",
            vec!["--cert-file", server.cert(), "--key-file", missing],
            vec![missing, "no such file or directory"],
        ),
        (
            "certificate path is a directory",
            vec!["--cert-file", dir, "--key-file", server.key()],
            vec![dir, "is a directory"],
        ),
        (
            "certificate file without PEM",
            vec!["--cert-file", not_pem, "--key-file", server.key()],
            vec!["failed to find any PEM data in certificate input"],
        ),
        (
            "empty key file",
            vec!["--cert-file", server.cert(), "--key-file", empty],
            vec!["failed to find any PEM data in key input"],
        ),
        (
            "key of another certificate",
            vec!["--cert-file", server.cert(), "--key-file", other.key()],
            vec!["private key does not match public key"],
        ),
        (
            "missing trusted CA file",
            vec![
                "--cert-file",
                server.cert(),
                "--key-file",
                server.key(),
                "--trusted-ca-file",
                missing,
                "--client-cert-auth",
            ],
            vec![missing, "no such file or directory"],
        ),
    ];
    // Keel reads the CRL at boot too (etcd only on each connection).
    if common::is_keel() {
        cases.push((
            "missing CRL file",
            vec![
                "--cert-file",
                server.cert(),
                "--key-file",
                server.key(),
                "--trusted-ca-file",
                p.ca(),
                "--client-crl-file",
                missing,
            ],
            vec![missing, "no such file or directory"],
        ));
    }
    // An unreadable file (not when root, who reads it anyway).
    let locked = p.file("locked-key.pem", &server.key_pem);
    let locked = locked.to_str().unwrap();
    std::fs::set_permissions(locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    if std::fs::read(locked).is_err() {
        cases.push((
            "unreadable key file",
            vec!["--cert-file", server.cert(), "--key-file", locked],
            vec![locked, "permission denied"],
        ));
    }

    for (what, flags, words) in cases {
        let mut s = Server::unstarted("badfiles");
        s.client_scheme = "https".into();
        s.set_extra(&flags);
        let (code, log) = s
            .run_expecting_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{what}: the server did not exit:\n{}", s.log()));
        assert_ne!(code, 0, "{what}: exit code 0:\n{log}");
        for word in words {
            assert!(
                log.to_lowercase().contains(&word.to_lowercase()),
                "{what}: the message lacks {word:?}:\n{log}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rotation, http + https, auto-TLS
// ---------------------------------------------------------------------------------------

/// Replaces `to` with `from`'s bytes by a rename (never seen half written).
fn replace_file(to: &Path, contents: &str) {
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn rotated_certificate_files_are_served_without_a_restart() {
    let p = Pki::new("rotate");
    let alice = p.alice();
    let a = p.pair("server", "keel-server-a", 0xa, Kind::Member);
    let b = p.pair("next", "keel-server-b", 0xb, Kind::Member);
    let s = Server::start_https(
        "rotate",
        &strs(&ctl_flags(&p, Some(&alice))),
        &strs(&mtls_server_flags(&p, &a)),
    );
    let served = |what: &str| -> CertificateDer<'static> {
        let pr = probe(s.client_port, client_config(Some(&p.ca.pem), Some(&alice)))
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(pr.answer, Ok(()), "{what}");
        pr.certs[0].clone()
    };
    assert_eq!(served("before"), a.der, "certificate A served at first");
    assert_eq!(
        keel::tls::x509::common_name(&a.der).as_deref(),
        Some("keel-server-a")
    );
    let mut w = Written::new("rot/");
    w.check(&s, "start");
    // A connection made before the rotation, kept open across it.
    let watch = s.etcdctl_spawn(&["watch", "rotw"]);
    std::thread::sleep(Duration::from_millis(500));

    replace_file(&a.cert, &b.cert_pem);
    replace_file(&a.key, &b.key_pem);
    std::thread::sleep(Duration::from_millis(1500));
    // Every new connection (whichever core takes it) now gets certificate B.
    for i in 0..6 {
        let cert = served(&format!("after, probe {i}"));
        assert_eq!(
            keel::tls::x509::common_name(&cert).as_deref(),
            Some("keel-server-b"),
            "probe {i} after the rotation"
        );
        assert_eq!(cert, b.der);
    }
    w.check(&s, "rotation");
    // The connection from before still works.
    s.etcdctl(&["put", "rotw", "still"]).expect_ok("OK\n");
    watch.wait_for("PUT\nrotw\nstill\n", Duration::from_secs(10));
    if common::is_keel() {
        assert!(
            s.log().contains("reloaded TLS certificate files"),
            "{}",
            s.log()
        );
    }

    // A broken rewrite (a key that does not match): Keel keeps serving B (etcd, which
    // reads the files on every handshake, fails the handshakes until it is fixed).
    replace_file(&a.key, &alice.key_pem);
    std::thread::sleep(Duration::from_millis(1500));
    if common::is_keel() {
        assert_eq!(served("after a bad rewrite"), b.der);
        w.check(&s, "a bad rewrite");
        assert!(
            s.log().contains("keeping the current TLS certificate"),
            "{}",
            s.log()
        );
    }
    // Fixed, with a third certificate: that one is served.
    let a2 = p.pair("server-a2", "keel-server-a2", 0xa2, Kind::Member);
    replace_file(&a.cert, &a2.cert_pem);
    replace_file(&a.key, &a2.key_pem);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served("after the fix"), a2.der);
    w.check(&s, "the fix");
}

#[test]
fn a_rewritten_crl_refuses_the_newly_revoked_certificate_on_new_connections() {
    let p = Pki::new("crl-rotate");
    let (server, alice) = (p.server(), p.alice());
    let bob = p.pair("bob", "bob", 0xb0b, Kind::Client);
    let crl = p.file("crl.pem", &p.ca.crl(&[MALLORY_SERIAL]));
    let mut flags = mtls_server_flags(&p, &server);
    flags.extend([
        "--client-crl-file".to_string(),
        crl.to_str().unwrap().to_string(),
    ]);
    let s = Server::start_https(
        "crl-rotate",
        &strs(&ctl_flags(&p, Some(&alice))),
        &strs(&flags),
    );
    let bob_probe = || probe(s.client_port, client_config(Some(&p.ca.pem), Some(&bob)));
    assert_eq!(bob_probe().unwrap().answer, Ok(()), "bob served at first");
    let mut w = Written::new("crl/");
    w.check(&s, "start");

    replace_file(&crl, &p.ca.crl(&[MALLORY_SERIAL, 0xb0b]));
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..4 {
        let (from, err) = match bob_probe() {
            Ok(pr) => (
                pr.from,
                pr.answer.expect_err("bob served after his revocation"),
            ),
            Err(e) => e,
        };
        let line = rejected_line(&s, &from);
        assert!(
            line.to_lowercase().contains("revoked"),
            "probe {i}: {line} (client saw {err})"
        );
    }
    // Alice, not revoked, is still served.
    w.check(&s, "the new CRL");
}

/// The flags of a single member listening for clients on `listen` (a comma-separated list)
/// and advertising `advertise`.
fn single_member_args(s: &Server, listen: &str, advertise: &str) -> Vec<String> {
    let peer = s.peer_url();
    [
        "--name",
        "it",
        "--data-dir",
        s.data_dir.to_str().unwrap(),
        "--listen-client-urls",
        listen,
        "--advertise-client-urls",
        advertise,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("it={peer}"),
        "--initial-cluster-token",
        "keel-it",
        "--initial-cluster-state",
        "new",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// (Against etcd 3.4 the first plaintext call on the shared port sometimes times out,
/// as it does while another connection there has sent nothing yet.)
#[test]
fn http_and_https_on_one_port() {
    let p = Pki::new("both");
    let (server, alice) = (p.server(), p.alice());
    let mut s = Server::unstarted("both");
    s.client_scheme = "https".into();
    s.ctl_flags = ctl_flags(&p, Some(&alice));
    let port = s.client_port;
    let http = format!("http://127.0.0.1:{port}");
    let https = format!("https://127.0.0.1:{port}");
    let mut args = single_member_args(&s, &format!("{http},{https}"), &https);
    args.extend(mtls_server_flags(&p, &server));
    s.set_args(args);
    s.spawn();
    s.wait_ready(common::READY_TIME_MAX);

    let plain = |args: &[&str]| -> Ctl {
        let mut a = vec![format!("--endpoints={http}")];
        a.extend(args.iter().map(|s| s.to_string()));
        etcdctl_bare(&strs(&a))
    };
    plain(&["put", "both/plain", "1"]).expect_ok("OK\n");
    s.etcdctl(&["put", "both/tls", "2"]).expect_ok("OK\n");
    plain(&["get", "--prefix", "both/"]).expect_ok("both/plain\n1\nboth/tls\n2\n");
    s.etcdctl(&["get", "--prefix", "both/"])
        .expect_ok("both/plain\n1\nboth/tls\n2\n");
    // Both kinds at once on long-lived connections: a plaintext watch, TLS writes.
    let watch = common::etcdctl_bare_spawn(&[&format!("--endpoints={http}"), "watch", "both/w"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !watch.stdout().contains("PUT\n") {
        assert!(
            Instant::now() < deadline,
            "plaintext watch saw nothing: {:?}",
            watch.stderr()
        );
        s.etcdctl(&["put", "both/w", "ping"]).expect_ok("OK\n");
        std::thread::sleep(Duration::from_millis(200));
    }
    s.etcdctl(&["put", "both/w", "over tls"]).expect_ok("OK\n");
    watch.wait_for("PUT\nboth/w\nover tls\n", Duration::from_secs(10));
    // The TLS side still asks for a client certificate; the plaintext side does not.
    let before = rejections(&s);
    let mut a = vec![format!("--endpoints={https}")];
    a.extend(ctl_flags(&p, None));
    a.extend([
        "--command-timeout=2s".into(),
        "get".into(),
        "both/tls".into(),
    ]);
    let ctl = etcdctl_bare(&strs(&a));
    assert!(!ctl.ok, "served without a client certificate: {ctl:?}");
    wait_rejection_with(&s, before, "didn't provide a certificate");
    let pr = probe(port, client_config(Some(&p.ca.pem), Some(&alice))).unwrap();
    assert_eq!(pr.answer, Ok(()));
    assert_eq!(pr.certs[0], server.der);
    plain(&["get", "both/w", "--print-value-only"]).expect_ok("over tls\n");
}

#[test]
fn auto_tls_makes_a_certificate_once_and_reuses_it() {
    let mut s = Server::start_https(
        "auto-tls",
        &[
            "--insecure-transport=false",
            "--insecure-skip-tls-verify",
            "--dial-timeout=2s",
        ],
        &["--auto-tls"],
    );
    s.etcdctl(&["put", "auto", "tls"]).expect_ok("OK\n");
    let dir = s.data_dir.join("fixtures").join("client");
    let cert = std::fs::read(dir.join("cert.pem")).expect("auto-TLS made cert.pem");
    let key = std::fs::read(dir.join("key.pem")).expect("auto-TLS made key.pem");
    let der = CertificateDer::from_pem_slice(&cert).expect("cert.pem is a PEM certificate");
    PrivateKeyDer::from_pem_slice(&key).expect("key.pem is a PEM key");
    assert_eq!(
        openssl_served_cert(s.client_port),
        der,
        "the server shows the certificate it wrote"
    );
    if common::is_keel() {
        // (etcd's is ECDSA P-521, which rustls does not verify.)
        let pr = probe(s.client_port, client_config(None, None)).unwrap();
        assert_eq!(pr.answer, Ok(()));
        assert_eq!(pr.certs[0], der);
    }
    // Verified against a CA instead, the self-signed certificate is refused by etcdctl.
    let strict = etcdctl_bare(&[
        &format!("--endpoints={}", s.client_url()),
        "--insecure-transport=false",
        "--dial-timeout=2s",
        "--command-timeout=4s",
        "get",
        "auto",
    ]);
    assert!(
        !strict.ok,
        "a self-signed certificate passed verification: {strict:?}"
    );

    s.kill9();
    s.restart();
    assert_eq!(
        std::fs::read(dir.join("cert.pem")).unwrap(),
        cert,
        "cert.pem rewritten"
    );
    assert_eq!(
        std::fs::read(dir.join("key.pem")).unwrap(),
        key,
        "key.pem rewritten"
    );
    assert_eq!(
        openssl_served_cert(s.client_port),
        der,
        "the same certificate after the restart"
    );
    s.etcdctl(&["get", "auto", "--print-value-only"])
        .expect_ok("tls\n");
}

// ---------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------

async fn put_retrying(c: &Cluster, i: usize, key: &str, value: &str) {
    let deadline = Instant::now() + LIVENESS;
    loop {
        match c.client(i).await.put(key, value, None).await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "put {key} through m{i}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serializable_values(c: &Cluster, i: usize, prefix: &str) -> Vec<(String, String)> {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_serializable();
    let resp = c.client(i).await.get(prefix, Some(opts)).await.unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn peer_tls_cluster_survives_a_leader_kill() {
    let p = Pki::new("peer-tls");
    let peer = p.pair("peer", "keel-peer", 0x9ee4, Kind::Member);
    let mut extra: Vec<String> = [
        "--peer-cert-file",
        peer.cert(),
        "--peer-key-file",
        peer.key(),
        "--peer-trusted-ca-file",
        p.ca(),
        "--peer-client-cert-auth",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    extra.extend(FAST_ELECTIONS.iter().map(|s| s.to_string()));
    let mut c = Cluster::start_peer_scheme("peer-tls", 3, &strs(&extra), "https");
    assert!(c.members[0].peer_url().starts_with("https://"));
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let follower = (leader + 1) % 3;

    // The peer port speaks TLS with the peer certificate, and refuses a dialer without one.
    let pr = probe(
        c.members[follower].peer_port,
        client_config(Some(&p.ca.pem), Some(&peer)),
    )
    .expect("a TLS handshake on the peer port");
    assert_eq!(pr.certs[0], peer.der);
    let (from, err) = match probe(
        c.members[follower].peer_port,
        client_config(Some(&p.ca.pem), None),
    ) {
        Ok(pr) => (
            pr.from,
            pr.answer
                .expect_err("a peer without a certificate answered"),
        ),
        Err(e) => e,
    };
    assert!(
        ["alert", "closed", "reset", "Broken pipe"]
            .iter()
            .any(|w| err.contains(w)),
        "{err}"
    );
    rejected_line(&c.members[follower], &from);

    rt.block_on(async {
        for i in 0..10 {
            put_retrying(&c, follower, &format!("pt/{i:02}"), &format!("before {i}")).await;
        }
    });
    c.member(leader).kill9();
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    rt.block_on(async {
        let new_leader = c.wait_leader(&rest).await;
        assert_ne!(new_leader, leader);
        for (n, i) in (10..20).enumerate() {
            let through = rest[n % 2];
            put_retrying(&c, through, &format!("pt/{i:02}"), &format!("after {i}")).await;
        }
    });
    c.member(leader).restart();
    rt.block_on(async {
        let rev = c.wait_caught_up(&[0, 1, 2]).await;
        c.assert_hash_kv_equal(&[0, 1, 2], rev).await;
        let expected: Vec<(String, String)> = (0..20)
            .map(|i| {
                let when = if i < 10 { "before" } else { "after" };
                (format!("pt/{i:02}"), format!("{when} {i}"))
            })
            .collect();
        for i in 0..3 {
            assert_eq!(serializable_values(&c, i, "pt/").await, expected, "m{i}");
        }
        // The restarted member takes writes again, through the TLS peer links.
        put_retrying(&c, leader, "pt/last", "through the restarted member").await;
        let last = c.client(rest[0]).await.get("pt/last", None).await.unwrap();
        assert_eq!(last.kvs()[0].value(), b"through the restarted member");
    });
    // None of the members refused a peer of the cluster.
    for (i, m) in c.members.iter().enumerate() {
        let log = m.log();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("rejected connection") && !l.contains(&from))
            .collect();
        assert!(refused.is_empty(), "m{i} refused peers: {refused:#?}");
    }
}

#[test]
fn rotated_peer_certificates_are_shown_on_new_peer_connections() {
    // Every member shows the same peer certificate files. They are rotated to a new
    // certificate and the old one is revoked; a member killed and restarted then gets new
    // connections from the others, which must come with the new certificate.
    let p = Pki::new("peer-rotate");
    let old = p.pair("peer", "keel-peer-old", 0x01d, Kind::Member);
    let new = p.pair("peer-next", "keel-peer-new", 0x2e3, Kind::Member);
    let crl = p.file("peer-crl.pem", &p.ca.crl(&[MALLORY_SERIAL]));
    let mut extra: Vec<String> = [
        "--peer-cert-file",
        old.cert(),
        "--peer-key-file",
        old.key(),
        "--peer-trusted-ca-file",
        p.ca(),
        "--peer-client-cert-auth",
        "--peer-crl-file",
        crl.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    extra.extend(FAST_ELECTIONS.iter().map(|s| s.to_string()));
    let mut c = Cluster::start_peer_scheme("peer-rotate", 3, &strs(&extra), "https");
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let victim = (leader + 1) % 3;
    rt.block_on(put_retrying(&c, leader, "pr/before", "1"));

    replace_file(&old.cert, &new.cert_pem);
    replace_file(&old.key, &new.key_pem);
    replace_file(&crl, &p.ca.crl(&[MALLORY_SERIAL, 0x01d]));
    std::thread::sleep(Duration::from_millis(1500));
    // New connections to the peer port get the new certificate.
    let pr = probe(
        c.members[leader].peer_port,
        client_config(Some(&p.ca.pem), Some(&new)),
    )
    .unwrap();
    assert_eq!(
        pr.certs[0], new.der,
        "the leader's peer port shows the new certificate"
    );

    c.member(victim).kill9();
    let rest: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    rt.block_on(async {
        c.wait_leader(&rest).await;
        put_retrying(&c, rest[0], "pr/during", "2").await;
    });
    c.member(victim).restart();
    rt.block_on(async {
        let rev = c.wait_caught_up(&[0, 1, 2]).await;
        c.assert_hash_kv_equal(&[0, 1, 2], rev).await;
        assert_eq!(
            serializable_values(&c, victim, "pr/").await,
            vec![
                ("pr/before".to_string(), "1".to_string()),
                ("pr/during".to_string(), "2".to_string())
            ]
        );
    });
    // No member was refused for showing the revoked certificate.
    for (i, m) in c.members.iter().enumerate() {
        let log = m.log();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("rejected connection"))
            .collect();
        assert!(refused.is_empty(), "m{i} refused peers: {refused:#?}");
    }
}

#[test]
fn a_peer_url_as_http_and_https_on_one_port_or_on_the_client_port_stops_the_boot() {
    // Client URLs on one port share a listener (http_and_https_on_one_port); peer URLs do
    // not: two listeners on one port would split its connections between them.
    let p = Pki::new("peer-dup");
    let peer = p.pair("peer", "keel-peer", 0x9ee4, Kind::Member);
    let tls = [
        "--peer-cert-file",
        peer.cert(),
        "--peer-key-file",
        peer.key(),
    ];
    let mut s = Server::unstarted("peer-dup");
    let port = s.peer_port;
    let client = s.client_url();
    let cases = [
        (
            "http and https peer URLs on one port",
            format!("http://127.0.0.1:{port},https://127.0.0.1:{port}"),
        ),
        ("a peer URL on the client port", client.clone()),
    ];
    for (what, listen_peers) in cases {
        let mut args = single_member_args(&s, &client, &client);
        let i = args.iter().position(|a| a == "--listen-peer-urls").unwrap();
        args[i + 1] = listen_peers;
        args.extend(tls.iter().map(|s| s.to_string()));
        s.set_args(args);
        let (code, log) = s
            .run_expecting_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{what}: the server did not exit:\n{}", s.log()));
        assert_ne!(code, 0, "{what}: exit code 0:\n{log}");
        assert!(
            log.contains("bind: address already in use"),
            "{what}: the message lacks the bind error:\n{log}"
        );
    }
}

#[test]
fn unix_peer_url_single_member() {
    let mut s = Server::unstarted("unix-peer");
    s.peer_scheme = "unix".into();
    s.spawn();
    s.wait_ready(common::READY_TIME_MAX);
    assert!(s.peer_url().starts_with("unix://127.0.0.1:"));
    // etcd listens on the socket file `host:port` in its working directory.
    let socket = s.dir.join(format!("127.0.0.1:{}", s.peer_port));
    let meta = std::fs::metadata(&socket).expect("the peer socket file");
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()),
        "{} is no socket",
        socket.display()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", s.peer_port)).is_err(),
        "a TCP listener on the unix peer URL's port"
    );
    // The socket accepts connections (and drops one that says nothing useful).
    let mut u = std::os::unix::net::UnixStream::connect(&socket).expect("connect the peer socket");
    u.write_all(b"hello?\n").unwrap();
    drop(u);
    let members = s.etcdctl(&["member", "list"]);
    assert!(
        members.ok && members.stdout.contains(&s.peer_url()),
        "{members:?}"
    );
    s.etcdctl(&["put", "unix", "peer"]).expect_ok("OK\n");

    // A kill leaves the socket file behind; the restart binds again regardless.
    s.kill9();
    assert!(socket.exists(), "the socket file is gone after kill -9");
    s.restart();
    s.etcdctl(&["get", "unix", "--print-value-only"])
        .expect_ok("peer\n");
    s.etcdctl(&["put", "unix", "again"]).expect_ok("OK\n");
    s.etcdctl(&["get", "unix", "--print-value-only"])
        .expect_ok("again\n");
}

/// `keel grpc-proxy start` over TLS on both sides: to a mutual-TLS member with a client
/// certificate that has no Common Name (etcd's rule for a proxy: one with a CN would make
/// every forwarded call that user's), and to its own clients with its certificate, asking
/// theirs (`--trusted-ca-file`). A certificate with a CN is refused at start.
#[test]
fn grpc_proxy_over_tls_both_ways() {
    let p = Pki::new("mtls-proxy");
    let (server, alice) = (p.server(), p.alice());
    let proxy_client = p.pair("proxy-client", "", 0x9a0, Kind::Client);
    let s = Server::start_https(
        "mtls-proxy",
        &strs(&ctl_flags(&p, Some(&alice))),
        &strs(&mtls_server_flags(&p, &server)),
    );
    let upstream = [
        format!("--cacert={}", p.ca()),
        format!("--cert={}", proxy_client.cert()),
        format!("--key={}", proxy_client.key()),
        format!("--cert-file={}", server.cert()),
        format!("--key-file={}", server.key()),
        format!("--trusted-ca-file={}", p.ca()),
    ];
    let url = s.client_url();
    let px = common::Proxy::start("mtls-proxy", &[&url], &strs(&upstream));
    let ep = format!("--endpoints=https://127.0.0.1:{}", px.port);
    let mut args = vec![ep.clone()];
    args.extend(ctl_flags(&p, Some(&alice)));
    let run = |extra: &[&str]| {
        let mut a = strs(&args);
        a.extend_from_slice(extra);
        common::etcdctl_bare(&a)
    };
    run(&["put", "via", "proxy"]).expect_ok("OK\n");
    s.etcdctl(&["get", "via", "--print-value-only"])
        .expect_ok("proxy\n");
    run(&["get", "via", "--print-value-only"]).expect_ok("proxy\n");
    // A client without a certificate is refused by the proxy.
    let mut bare = vec![ep.clone()];
    bare.extend(ctl_flags(&p, None));
    let r = common::etcdctl_bare(&{
        let mut a = strs(&bare);
        a.extend_from_slice(&["get", "via"]);
        a
    });
    assert!(!r.ok, "a client without a certificate got through: {r:?}");
    // An upstream certificate with a Common Name: refused at start, as etcd does.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["grpc-proxy", "start", &format!("--endpoints={url}")])
        .arg(format!("--cacert={}", p.ca()))
        .arg(format!("--cert={}", alice.cert()))
        .arg(format!("--key={}", alice.key()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cert has non empty Common Name (alice)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
