//! etcd's JWT auth tokens (`--auth-token jwt,pub-key=PATH,priv-key=PATH,sign-method=M,ttl=D`):
//! the options, the keys, signing a token at Authenticate and checking it on every request,
//! as etcd 3.4/3.5 do (`auth/jwt.go`, `auth/options.go` over golang-jwt).
//!
//! A token is `b64url(header).b64url(claims).b64url(signature)`, unpadded, with the header
//! `{"alg":M,"typ":"JWT"}` and the claims `{"exp":…,"revision":…,"username":…}`, keys sorted
//! and `<>&` escaped as Go's `encoding/json` writes them: RS256 and HS256 tokens are byte for
//! byte the ones etcd signs.
//!
//! Invariants:
//! - a token is accepted only if its header `alg` is exactly the configured method and its
//!   signature verifies with the configured key: no `none`, no HS256 keyed with a public key;
//! - `exp`, `nbf`, `iat` are checked as golang-jwt v4 does: valid while `now < exp`,
//!   `now >= nbf`, `now >= iat`; a claim absent or 0 is not checked, one not a number rejects;
//! - [`JwtProvider::info`] takes untrusted input: it never panics, and JSON nesting is capped
//!   at [`JSON_DEPTH_MAX`] so its recursion is bounded;
//! - a provider without a private key only verifies (`assign` fails with etcd's
//!   `ErrVerifyOnly`); a key that cannot work fails [`JwtProvider::new`], not each request.
//!
//! Keys are PEM, the first block of a type Keel reads: RSA private keys PKCS#1 or PKCS#8, EC
//! private keys SEC1 or PKCS#8, public keys SPKI, PKCS#1 `RSA PUBLIC KEY` or a certificate.
//! HMAC's secret is the raw bytes of the priv-key file, as in etcd.

use std::path::PathBuf;
use std::time::Duration;

use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, KeyPair, RsaEncoding, RsaKeyPair};
use ring::signature::{EcdsaSigningAlgorithm as EcSign, EcdsaVerificationAlgorithm as EcVerify};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED as P256, ECDSA_P256_SHA256_FIXED_SIGNING as P256_SIGN,
};
use ring::signature::{
    ECDSA_P384_SHA384_FIXED as P384, ECDSA_P384_SHA384_FIXED_SIGNING as P384_SIGN,
};
use rustls::pki_types::pem::{PemObject, SectionKind};

/// The token lifetime when `ttl` is absent or empty (etcd's `DefaultTTL`).
pub const TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Deepest JSON nesting accepted in a token's header or claims.
pub const JSON_DEPTH_MAX: usize = 32;
/// etcd's `ErrVerifyOnly`: [`JwtProvider::assign`] on a provider with no private key.
pub const ERR_VERIFY_ONLY: &str = "auth: token signing attempted with verify-only key";
const ERR_OPTS: &str = "auth: invalid auth options";
const ERR_MISSING_KEY: &str = "auth: missing key data";
const ERR_KEY_MISMATCH: &str = "auth: public and private keys don't match";
// DER contents of the object identifiers in keys and certificates.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// What ring needs for one method. ring signs PSS with a salt as long as the hash, as
/// golang-jwt does; the EC entry carries the curve's OID.
enum Alg {
    Rsa(&'static dyn RsaEncoding, &'static sig::RsaParameters),
    Ec(&'static EcSign, &'static EcVerify, &'static [u8]),
    Hmac(hmac::Algorithm),
}

const METHOD_NAMES: [&str; 11] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "HS256", "HS384",
    "HS512",
];

/// A signature method Keel supports (etcd's `sign-method`, the JWT `alg`), e.g. `RS256`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignMethod(&'static str);

impl SignMethod {
    /// The method called `name` (case-sensitive, as in golang-jwt).
    pub fn from_name(name: &str) -> Result<SignMethod, String> {
        if name == "ES512" {
            return Err("sign-method ES512 is not supported by Keel (ring has no P-521)".into());
        }
        match METHOD_NAMES.into_iter().find(|m| *m == name) {
            Some(m) => Ok(SignMethod(m)),
            None => Err(format!("auth: invalid auth signature method: {name:?}")),
        }
    }

    /// The JWT `alg` name.
    pub fn name(self) -> &'static str {
        self.0
    }

    fn alg(self) -> Alg {
        match self.0 {
            "RS256" => Alg::Rsa(&sig::RSA_PKCS1_SHA256, &sig::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => Alg::Rsa(&sig::RSA_PKCS1_SHA384, &sig::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => Alg::Rsa(&sig::RSA_PKCS1_SHA512, &sig::RSA_PKCS1_2048_8192_SHA512),
            "PS256" => Alg::Rsa(&sig::RSA_PSS_SHA256, &sig::RSA_PSS_2048_8192_SHA256),
            "PS384" => Alg::Rsa(&sig::RSA_PSS_SHA384, &sig::RSA_PSS_2048_8192_SHA384),
            "PS512" => Alg::Rsa(&sig::RSA_PSS_SHA512, &sig::RSA_PSS_2048_8192_SHA512),
            "ES256" => Alg::Ec(&P256_SIGN, &P256, OID_P256),
            "ES384" => Alg::Ec(&P384_SIGN, &P384, OID_P384),
            "HS256" => Alg::Hmac(hmac::HMAC_SHA256),
            "HS384" => Alg::Hmac(hmac::HMAC_SHA384),
            "HS512" => Alg::Hmac(hmac::HMAC_SHA512),
            other => unreachable!("SignMethod({other}) is not from METHOD_NAMES"),
        }
    }
}

/// The `--auth-token jwt,…` options; [`JwtProvider::new`] reads the key files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    pub sign_method: SignMethod,
    pub pub_key_path: Option<PathBuf>,
    pub priv_key_path: Option<PathBuf>,
    pub ttl: Duration,
    /// Keys etcd does not know. etcd logs "unknown JWT options" and goes on; so should the caller.
    pub unknown_keys: Vec<String>,
}

/// Parses what follows `jwt,` in `--auth-token`: comma-separated `key=value` pairs, split as
/// etcd's `decomposeOpts` does (a part without exactly one `=`, or a key given twice, is an
/// error). An empty value counts as absent; `sign-method` is required.
pub fn parse_options(s: &str) -> Result<JwtOptions, String> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for part in s.split(',').filter(|_| !s.is_empty()) {
        let (key, value) = match part.split('=').collect::<Vec<_>>()[..] {
            [key, value] => (key, value),
            _ => return Err(format!("{ERR_OPTS}: invalid token option {part:?}")),
        };
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(format!("{ERR_OPTS}: duplicated parameter {key:?}"));
        }
        pairs.push((key, value));
    }
    let get = |key| {
        pairs
            .iter()
            .find(|p| p.0 == key && !p.1.is_empty())
            .map(|p| p.1)
    };
    let ttl = match get("ttl") {
        None => TTL_DEFAULT,
        Some(ttl) => parse_go_duration(ttl).map_err(|e| format!("{ERR_OPTS}: ttl: {e}"))?,
    };
    let known = ["pub-key", "priv-key", "sign-method", "ttl"];
    let unknown = pairs.iter().filter(|p| !known.contains(&p.0));
    Ok(JwtOptions {
        sign_method: SignMethod::from_name(get("sign-method").unwrap_or_default())?,
        pub_key_path: get("pub-key").map(PathBuf::from),
        priv_key_path: get("priv-key").map(PathBuf::from),
        ttl,
        unknown_keys: unknown.map(|p| p.0.to_string()).collect(),
    })
}

/// Go's `time.ParseDuration` (`5m`, `1.5s`, `1h30m`, `300ms`) with Go's error words. A
/// negative duration, which Go takes, is refused: every token would be born expired.
fn parse_go_duration(orig: &str) -> Result<Duration, String> {
    const UNITS_NS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut rest = orig.strip_prefix(['-', '+']).unwrap_or(orig);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let (mut total_ns, mut parts) = (0u128, 0);
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.');
        let (number, tail) = rest.split_at(number_len.unwrap_or(rest.len()));
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.');
        let (unit, tail) = tail.split_at(unit_len.unwrap_or(tail.len()));
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(invalid());
        }
        let unit_ns = match UNITS_NS.iter().find(|u| u.0 == unit) {
            Some(u) => u.1,
            None if unit.is_empty() => {
                return Err(format!("time: missing unit in duration {orig:?}"))
            }
            None => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let int = format!("0{int}").parse::<u64>().map_err(|_| invalid())?;
        // Digits past the 18th cannot change a count of nanoseconds that fits in an i64.
        let frac = &frac[..frac.len().min(18)];
        let frac_ns = frac.parse::<u128>().unwrap_or(0) * unit_ns / 10u128.pow(frac.len() as u32);
        total_ns += u128::from(int) * unit_ns + frac_ns;
        if total_ns > i64::MAX as u128 {
            return Err(invalid());
        }
        (rest, parts) = (tail, parts + 1);
    }
    if parts == 0 {
        return Err(invalid());
    }
    if orig.starts_with('-') && total_ns > 0 {
        return Err(format!("ttl {orig:?} is negative"));
    }
    Ok(Duration::from_nanos(total_ns as u64))
}

impl std::fmt::Debug for JwtProvider {
    /// The method only: keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtProvider({})", self.method.name())
    }
}

/// Signs and checks tokens with the key of one sign method.
pub struct JwtProvider {
    method: SignMethod,
    ttl: Duration,
    key: Key,
    rng: SystemRandom,
}

enum Key {
    Hmac(hmac::Key),
    /// The signer (None: verify-only) and the key tokens are checked with.
    Pair(Option<Signer>, PublicKey),
}

enum Signer {
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
    Ec(EcdsaKeyPair),
}

/// A verification algorithm and its key: PKCS#1 `RSAPublicKey` DER or an uncompressed EC point.
struct PublicKey(&'static dyn sig::VerificationAlgorithm, Vec<u8>);

impl Signer {
    fn public(&self) -> &[u8] {
        match self {
            Signer::Rsa(pair, _) => pair.public_key().as_ref(),
            Signer::Ec(pair) => pair.public_key().as_ref(),
        }
    }
}

impl JwtProvider {
    /// Reads and checks the key files. Without a private key the provider only verifies;
    /// without a public key it checks tokens with the private key's own public half.
    pub fn new(opts: &JwtOptions) -> Result<JwtProvider, String> {
        // etcd reads both files whatever the method, so a missing file is always an error.
        let pub_file = KeyFile::read("pub-key", &opts.pub_key_path)?;
        let priv_file = KeyFile::read("priv-key", &opts.priv_key_path)?;
        let key = Key::new(opts.sign_method, pub_file, priv_file)?;
        let (method, ttl, rng) = (opts.sign_method, opts.ttl, SystemRandom::new());
        Ok(JwtProvider {
            method,
            ttl,
            key,
            rng,
        })
    }

    /// Whether the provider has no private key and so cannot [`assign`](Self::assign).
    pub fn verify_only(&self) -> bool {
        matches!(self.key, Key::Pair(None, _))
    }

    /// A token for `username` at auth `revision`, expiring `ttl` after `now_unix_secs`.
    pub fn assign(
        &self,
        username: &str,
        revision: u64,
        now_unix_secs: u64,
    ) -> Result<String, String> {
        let exp = now_unix_secs.saturating_add(self.ttl.as_secs());
        let mut claims = format!("{{\"exp\":{exp},\"revision\":{revision},\"username\":");
        json_string(&mut claims, username);
        claims.push('}');
        let header = format!("{{\"alg\":\"{}\",\"typ\":\"JWT\"}}", self.method.0);
        self.sign_token(&header, &claims)
    }

    /// `(username, revision)` from a token this provider's key signed and that is valid at
    /// `now_unix_secs`; None for anything else.
    pub fn info(&self, token: &str, now_unix_secs: u64) -> Option<(String, u64)> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let signed = &token.as_bytes()[..header.len() + 1 + claims.len()];
        let header = json_object(&b64_decode(header.as_bytes(), B64_URL)?)?;
        if field(&header, "alg") != Some(&Json::Str(self.method.0.into())) {
            return None;
        }
        let signature = b64_decode(signature.as_bytes(), B64_URL)?;
        if !self.verify(signed, &signature) {
            return None;
        }
        let claims = json_object(&b64_decode(claims.as_bytes(), B64_URL)?)?;
        let now = now_unix_secs as f64;
        let time_ok = |name, ok: fn(f64, f64) -> bool| match field(&claims, name) {
            None => true,
            // golang-jwt reads a number as a float64 (1e999 does not parse) and ignores 0.
            Some(Json::Num(n)) => n
                .parse()
                .is_ok_and(|t: f64| t.is_finite() && (t == 0.0 || ok(now, t))),
            Some(_) => false,
        };
        let valid = time_ok("exp", |now, t| now < t)
            && time_ok("nbf", |now, t| now >= t)
            && time_ok("iat", |now, t| now >= t);
        let (user, revision) = (field(&claims, "username"), field(&claims, "revision"));
        match (valid, user, revision) {
            (true, Some(Json::Str(user)), Some(Json::Num(rev))) => {
                Some((user.clone(), json_u64(rev)?))
            }
            _ => None,
        }
    }

    fn sign_token(&self, header_json: &str, claims_json: &str) -> Result<String, String> {
        let header = b64_encode(header_json.as_bytes(), B64_URL);
        let token = header + "." + &b64_encode(claims_json.as_bytes(), B64_URL);
        let failed = |_| "auth: failed to sign the token".to_string();
        let signature = match &self.key {
            Key::Hmac(key) => hmac::sign(key, token.as_bytes()).as_ref().to_vec(),
            Key::Pair(None, _) => return Err(ERR_VERIFY_ONLY.into()),
            Key::Pair(Some(Signer::Ec(pair)), _) => {
                let signature = pair.sign(&self.rng, token.as_bytes()).map_err(failed)?;
                signature.as_ref().to_vec()
            }
            Key::Pair(Some(Signer::Rsa(pair, encoding)), _) => {
                let mut out = vec![0; pair.public().modulus_len()];
                let rng = &self.rng;
                pair.sign(*encoding, rng, token.as_bytes(), &mut out)
                    .map_err(failed)?;
                out
            }
        };
        debug_assert!(self.verify(token.as_bytes(), &signature), "own signature");
        Ok(token + "." + &b64_encode(&signature, B64_URL))
    }

    fn verify(&self, signed: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Key::Hmac(key) => hmac::verify(key, signed, signature).is_ok(),
            Key::Pair(_, PublicKey(alg, public)) => {
                let public = sig::UnparsedPublicKey::new(*alg, public);
                public.verify(signed, signature).is_ok()
            }
        }
    }
}

impl Key {
    fn new(
        method: SignMethod,
        pub_file: Option<KeyFile>,
        priv_file: Option<KeyFile>,
    ) -> Result<Key, String> {
        let missing = format!("{ERR_MISSING_KEY}: sign-method {} needs priv-key", method.0);
        let (signer, given, verify): (_, _, &'static dyn sig::VerificationAlgorithm) =
            match method.alg() {
                Alg::Hmac(alg) => {
                    let secret = priv_file.map(|f| f.bytes).filter(|b| !b.is_empty());
                    return Ok(Key::Hmac(hmac::Key::new(alg, &secret.ok_or(missing)?)));
                }
                Alg::Rsa(encoding, verify) => {
                    let signer = priv_file.map(|f| f.rsa_private(encoding)).transpose()?;
                    let given = pub_file.map(|f| f.public_key(OID_RSA, None));
                    (signer, given, verify)
                }
                Alg::Ec(sign, verify, curve) => {
                    let signer = priv_file.map(|f| f.ec_private(sign, curve)).transpose()?;
                    let given = pub_file.map(|f| f.public_key(OID_EC, Some(curve)));
                    (signer, given, verify)
                }
            };
        // etcd means to refuse a mismatched pair, but its check fires only if N and E both differ.
        let public = match (&signer, given.transpose()?) {
            (Some(s), Some(given)) if s.public() != given => return Err(ERR_KEY_MISMATCH.into()),
            (Some(s), _) => s.public().to_vec(),
            (None, given) => given.ok_or(missing + " or pub-key")?,
        };
        Ok(Key::Pair(signer, PublicKey(verify, public)))
    }
}

/// A key file's option name, path and bytes; errors name the option and the path.
struct KeyFile {
    what: &'static str,
    path: String,
    bytes: Vec<u8>,
}

impl KeyFile {
    fn read(what: &'static str, path: &Option<PathBuf>) -> Result<Option<KeyFile>, String> {
        let Some(path) = path else { return Ok(None) };
        let path = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| format!("{ERR_OPTS}: {what} {path}: {e}"))?;
        Ok(Some(KeyFile { what, path, bytes }))
    }

    fn err(&self, why: &str) -> String {
        format!("{} {}: {why}", self.what, self.path)
    }

    /// The first PEM block of a type Keel reads, as (label, DER).
    fn pem(&self) -> Result<(&'static str, Vec<u8>), String> {
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&self.bytes) {
            let (kind, der) = item.map_err(|e| self.err(&format!("bad PEM: {e}")))?;
            let label = match kind {
                SectionKind::Certificate => "CERTIFICATE",
                SectionKind::PublicKey => "PUBLIC KEY",
                SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
                SectionKind::PrivateKey => "PRIVATE KEY",
                SectionKind::EcPrivateKey => "EC PRIVATE KEY",
                _ => continue,
            };
            return Ok((label, der));
        }
        // rustls-pki-types skips PKCS#1 public keys; being public, they need no constant-time
        // base64 either.
        let text = String::from_utf8_lossy(&self.bytes);
        let (_, rest) = text
            .split_once("-----BEGIN RSA PUBLIC KEY-----")
            .unwrap_or_default();
        let body = rest.split_once("-----END RSA PUBLIC KEY-----").map(|b| b.0);
        let b64: Vec<u8> = body
            .unwrap_or_default()
            .bytes()
            .filter(|b| b.is_ascii_graphic())
            .collect();
        let b64 = b64
            .strip_suffix(b"==")
            .or(b64.strip_suffix(b"="))
            .unwrap_or(&b64);
        match b64_decode(b64, B64_STD) {
            Some(der) if body.is_some() => Ok(("RSA PUBLIC KEY", der)),
            _ => Err(self.err("no key or certificate PEM block")),
        }
    }

    fn rsa_private(self, encoding: &'static dyn RsaEncoding) -> Result<Signer, String> {
        let pair = match self.pem()? {
            ("RSA PRIVATE KEY", der) => RsaKeyPair::from_der(&der),
            ("PRIVATE KEY", der) => RsaKeyPair::from_pkcs8(&der),
            (label, _) => return Err(self.err(&format!("want an RSA private key, found {label}"))),
        };
        let why = |e| {
            self.err(&format!(
                "not a usable RSA private key (2048 to 4096 bits): {e}"
            ))
        };
        Ok(Signer::Rsa(pair.map_err(why)?, encoding))
    }

    fn ec_private(self, alg: &'static EcSign, curve: &[u8]) -> Result<Signer, String> {
        let pkcs8 = match self.pem()? {
            ("PRIVATE KEY", der) => der,
            // ring reads only PKCS#8: wrap the SEC1 key in a PrivateKeyInfo (RFC 5208) naming
            // the method's curve; ring refuses it if the key names another.
            ("EC PRIVATE KEY", der) => {
                let alg_id = der_tlv(
                    0x30,
                    &[der_tlv(0x06, OID_EC), der_tlv(0x06, curve)].concat(),
                );
                let info = [vec![2, 1, 0], alg_id, der_tlv(0x04, &der)].concat();
                der_tlv(0x30, &info)
            }
            (label, _) => return Err(self.err(&format!("want an EC private key, found {label}"))),
        };
        let pair = EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &SystemRandom::new());
        let why = |e| self.err(&format!("not a usable EC private key for this curve: {e}"));
        Ok(Signer::Ec(pair.map_err(why)?))
    }

    /// The key bits of a public key of algorithm `oid` (and `curve`, for EC).
    fn public_key(self, oid: &[u8], curve: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let spki = match self.pem()? {
            ("RSA PUBLIC KEY", der) if curve.is_none() && rsa_public_ok(&der) => return Ok(der),
            ("PUBLIC KEY", der) => der,
            ("CERTIFICATE", der) => cert_spki(&der).unwrap_or_default().to_vec(),
            (label, _) => return Err(self.err(&format!("want a public key, found {label}"))),
        };
        let fits = |(o, params, key): &SpkiParts| match curve {
            None => *o == oid && rsa_public_ok(key),
            Some(_) => *o == oid && *params == curve && key.first() == Some(&4),
        };
        match spki_parts(&spki).filter(fits) {
            Some((_, _, key)) => Ok(key.to_vec()),
            None => Err(self.err("malformed, or not a key for this sign-method (RSA: 2048+ bits)")),
        }
    }
}

/// Splits the first DER element off `input` if its tag is `tag`: (contents, rest).
fn der_next(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&[found, first], rest) = input.split_first_chunk()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let (len, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
            let len = len.iter().fold(0, |acc, b| acc << 8 | usize::from(*b));
            (len, rest)
        }
        _ => return None,
    };
    (found == tag).then_some(())?;
    rest.split_at_checked(len)
}

fn der_tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len().to_be_bytes();
    let len = &len[len.iter().take_while(|b| **b == 0).count()..];
    let mut out = match contents.len() {
        0..=0x7f => vec![tag, contents.len() as u8],
        _ => [&[tag, 0x80 | len.len() as u8][..], len].concat(),
    };
    out.extend_from_slice(contents);
    out
}

/// The SubjectPublicKeyInfo element of an X.509 certificate (RFC 5280 §4.1): the field of
/// tbsCertificate after the optional `[0]` version and five more.
fn cert_spki(cert: &[u8]) -> Option<&[u8]> {
    let (tbs, _) = der_next(der_next(cert, 0x30)?.0, 0x30)?;
    let mut rest = der_next(tbs, 0xa0).map_or(tbs, |v| v.1);
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        rest = der_next(rest, tag)?.1; // serialNumber, signature, issuer, validity, subject
    }
    let (_, after) = der_next(rest, 0x30)?;
    Some(&rest[..rest.len() - after.len()])
}

/// A SubjectPublicKeyInfo's algorithm OID, curve OID (if any) and key bits.
type SpkiParts<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8]);

fn spki_parts(spki: &[u8]) -> Option<SpkiParts<'_>> {
    let (alg, rest) = der_next(der_next(spki, 0x30)?.0, 0x30)?;
    let (oid, params) = der_next(alg, 0x06)?;
    let (bits, _) = der_next(rest, 0x03)?;
    let (0, key) = bits.split_first()? else {
        return None;
    };
    Some((oid, der_next(params, 0x06).map(|c| c.0), key))
}

/// Whether a PKCS#1 `RSAPublicKey` has a modulus ring verifies with (2048 to 8192 bits).
fn rsa_public_ok(pkcs1: &[u8]) -> bool {
    let n = der_next(pkcs1, 0x30).and_then(|(body, _)| der_next(body, 0x02));
    let n = n.map_or(&[][..], |n| n.0);
    let n = &n[n.iter().take_while(|b| **b == 0).count()..];
    let bits = n
        .first()
        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    (2048..=8192).contains(&bits)
}

fn b64_encode(data: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let bytes = chunk.iter().enumerate();
        let n = bytes.fold(0, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        let sextets = (0..=chunk.len()).map(|i| (n >> (18 - 6 * i) & 63) as usize);
        out.extend(sextets.map(|i| char::from(alphabet[i])));
    }
    out
}

/// Unpadded base64; None on a byte outside `alphabet` or nonzero leftover bits, so each byte
/// string has exactly one accepted encoding.
fn b64_decode(text: &[u8], alphabet: &[u8; 64]) -> Option<Vec<u8>> {
    let mut sextets = [u8::MAX; 256];
    for (i, &c) in alphabet.iter().enumerate() {
        sextets[usize::from(c)] = i as u8;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in text {
        let sextet = Some(sextets[usize::from(c)]).filter(|s| *s != u8::MAX)?;
        acc = acc << 6 | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (acc == 0 && bits < 6).then_some(out)
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it (HTML-safe).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => out.extend(['\\', c]),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\u{1f}' | '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON value as the claims need it: strings and numbers (as written); the rest is only checked.
#[derive(Debug, PartialEq)]
enum Json {
    Str(String),
    Num(String),
    Other,
}

/// The last member called `name`, as Go's decoder keeps the last duplicate.
fn field<'a>(members: &'a [(String, Json)], name: &str) -> Option<&'a Json> {
    members.iter().rev().find(|m| m.0 == name).map(|m| &m.1)
}

/// A JSON number as golang-jwt reads `revision`: a float64 made uint64, truncating.
fn json_u64(n: &str) -> Option<u64> {
    let float = n
        .parse()
        .ok()
        .filter(|f| (0.0..18446744073709551616.0).contains(f));
    n.parse().ok().or(float.map(|f: f64| f as u64))
}

/// The members of `bytes` if it is exactly one JSON object.
fn json_object(bytes: &[u8]) -> Option<Vec<(String, Json)>> {
    let mut p = JsonParser(std::str::from_utf8(bytes).ok()?, 0);
    let members = p.object(0)?;
    p.ws();
    (p.1 == p.0.len()).then_some(members)
}

/// A JSON reader: the text, and the offset read up to (always on a char boundary).
struct JsonParser<'a>(&'a str, usize);

impl JsonParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.0.as_bytes().get(self.1).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.1 += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek() == Some(b)).then(|| self.1 += 1)
    }

    fn object(&mut self, depth: usize) -> Option<Vec<(String, Json)>> {
        self.eat(b'{')?;
        let mut members = Vec::new();
        while self.eat(b'}').is_none() {
            if !members.is_empty() {
                self.eat(b',')?;
            }
            let key = self.string()?;
            self.eat(b':')?;
            members.push((key, self.value(depth + 1)?));
        }
        Some(members)
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > JSON_DEPTH_MAX {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(Json::Str),
            b'{' => self.object(depth).map(|_| Json::Other),
            b'[' => {
                self.1 += 1;
                for n in 0.. {
                    if self.eat(b']').is_some() {
                        break;
                    }
                    if n > 0 {
                        self.eat(b',')?;
                    }
                    self.value(depth + 1)?;
                }
                Some(Json::Other)
            }
            b't' | b'f' | b'n' => {
                let rest = &self.0[self.1..];
                let literal = ["true", "false", "null"]
                    .into_iter()
                    .find(|l| rest.starts_with(l));
                self.1 += literal?.len();
                Some(Json::Other)
            }
            _ => self.number().map(Json::Num),
        }
    }

    fn digits(&mut self) -> usize {
        let digits = self.0.as_bytes()[self.1..]
            .iter()
            .take_while(|b| b.is_ascii_digit());
        let n = digits.count();
        self.1 += n;
        n
    }

    fn number(&mut self) -> Option<String> {
        let start = self.1;
        self.1 += usize::from(self.peek() == Some(b'-'));
        let int = self.digits();
        let mut ok = int == 1 || (int > 1 && self.0.as_bytes()[self.1 - int] != b'0');
        if self.peek() == Some(b'.') {
            self.1 += 1;
            ok &= self.digits() > 0;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.1 += 1 + usize::from(matches!(self.peek(), Some(b'+' | b'-')));
            ok &= self.digits() > 0;
        }
        ok.then(|| self.0[start..self.1].to_string())
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        // `\u` escapes gather as UTF-16, so a pair joins and a lone surrogate is U+FFFD, as in Go.
        let (mut out, mut units) = (String::new(), Vec::new());
        let mut chars = self.0[self.1..].char_indices();
        loop {
            let (at, c) = chars.next()?;
            let c = match c {
                '"' => None,
                '\\' => match chars.next()?.1 {
                    'u' => {
                        let mut hex = || chars.next()?.1.to_digit(16);
                        units.push((0..4).try_fold(0, |acc, _| Some(acc << 4 | hex()? as u16))?);
                        continue;
                    }
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    e @ ('"' | '\\' | '/') => Some(e),
                    _ => return None,
                },
                c if c < ' ' => return None,
                c => Some(c),
            };
            out.extend(char::decode_utf16(units.drain(..)).map(|r| r.unwrap_or('\u{fffd}')));
            let Some(c) = c else {
                self.1 += at + 1;
                return Some(out);
            };
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SecureRandom;

    const NOW: u64 = 1_700_000_000;

    fn testdata(name: &str) -> String {
        format!("{}/src/auth/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn provider(opts: &str) -> Result<JwtProvider, String> {
        JwtProvider::new(&parse_options(opts)?)
    }

    /// A provider from key bytes, as `new` makes one from files.
    fn build(m: &str, public: Option<Vec<u8>>, private: Option<Vec<u8>>) -> JwtProvider {
        let file = |what, bytes| KeyFile {
            what,
            path: "test".into(),
            bytes,
        };
        let (public, private) = (
            public.map(|b| file("pub-key", b)),
            private.map(|b| file("priv-key", b)),
        );
        let method = SignMethod::from_name(m).expect(m);
        let key = Key::new(method, public, private).expect(m);
        let (ttl, rng) = (Duration::from_secs(3600), SystemRandom::new());
        JwtProvider {
            method,
            ttl,
            key,
            rng,
        }
    }

    fn fixture(name: &str) -> Option<Vec<u8>> {
        Some(std::fs::read(testdata(name)).expect(name))
    }

    fn pem(label: &str, der: &[u8]) -> Option<Vec<u8>> {
        let b64 = b64_encode(der, B64_STD) + ["", "==", "="][der.len() % 3];
        Some(format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n").into_bytes())
    }

    /// (method, signer, verify-only provider) for every method; between them the keys come in
    /// every PEM form Keel reads.
    fn providers() -> Vec<(&'static str, JwtProvider, Option<JwtProvider>)> {
        let mut all = Vec::new();
        let rsa_public = ["server.crt", "server.pub.pem", "server.rsa-pub.pem"];
        let rsa = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];
        for (m, public) in rsa.into_iter().zip(rsa_public.iter().cycle()) {
            let signer = build(m, fixture("server.crt"), fixture("server.key.insecure"));
            all.push((m, signer, Some(build(m, fixture(public), None))));
        }
        let (crt, key) = (
            fixture("server-ecdsa.crt"),
            fixture("server-ecdsa.key.insecure"),
        );
        all.push((
            "ES256",
            build("ES256", crt.clone(), key),
            Some(build("ES256", crt, None)),
        ));
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&P384_SIGN, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&P384_SIGN, pkcs8.as_ref(), &rng).expect("pkcs8");
        let alg_id = der_tlv(
            0x30,
            &[der_tlv(0x06, OID_EC), der_tlv(0x06, OID_P384)].concat(),
        );
        let bits = der_tlv(0x03, &[&[0], pair.public_key().as_ref()].concat());
        let spki = der_tlv(0x30, &[alg_id, bits].concat());
        let signer = build("ES384", None, pem("PRIVATE KEY", pkcs8.as_ref()));
        all.push((
            "ES384",
            signer,
            Some(build("ES384", pem("PUBLIC KEY", &spki), None)),
        ));
        for m in ["HS256", "HS384", "HS512"] {
            let mut secret = vec![0; 32];
            rng.fill(&mut secret).expect("random");
            all.push((m, build(m, None, Some(secret)), None));
        }
        all
    }

    #[test]
    fn round_trip_every_method_and_verify_only() {
        for (m, signer, verifier) in providers() {
            assert!(!signer.verify_only());
            let token = signer.assign("abc", 123, NOW).expect(m);
            assert_eq!(signer.info(&token, NOW), Some(("abc".into(), 123)), "{m}");
            let Some(verifier) = verifier else { continue };
            assert!(verifier.verify_only(), "{m}");
            assert_eq!(verifier.info(&token, NOW), Some(("abc".into(), 123)), "{m}");
            assert_eq!(
                verifier.assign("abc", 123, NOW),
                Err(ERR_VERIFY_ONLY.into())
            );
        }
    }

    /// testdata/go-tokens.txt holds tokens golang-jwt signed (as etcd does) with the fixture
    /// keys for user `root<&>"é`, revision 42, exp 2000000000; HS256's secret is the EC key file.
    #[test]
    fn go_tokens_verify_and_match_byte_for_byte() {
        let text = std::fs::read_to_string(testdata("go-tokens.txt")).expect("go tokens");
        let (user, exp) = ("root<&>\"é".to_string(), 2_000_000_000);
        for (m, token) in text.lines().filter_map(|l| l.split_once(' ')) {
            let (public, private) = match &m[..2] {
                "HS" => (None, "server-ecdsa.key.insecure"),
                "ES" => (Some("server-ecdsa.crt"), "server-ecdsa.key.insecure"),
                _ => (Some("server.crt"), "server.key.insecure"),
            };
            let public = public.map(testdata).unwrap_or_default();
            let opts = format!(
                "sign-method={m},pub-key={public},priv-key={}",
                testdata(private)
            );
            let p = provider(&opts).expect(m);
            assert_eq!(p.info(token, exp - 1), Some((user.clone(), 42)), "{m}");
            assert_eq!(p.info(token, exp), None, "{m} has expired at exp");
            if m == "RS256" || m == "HS256" {
                assert_eq!(p.assign(&user, 42, exp - 300).as_deref(), Ok(token), "{m}");
            }
        }
    }

    #[test]
    fn a_changed_character_or_swapped_payload_rejects_the_token() {
        for (m, p, _) in providers() {
            let token = p.assign("abc", 7, NOW).expect(m);
            for (i, c) in token.char_indices() {
                let mut bad = token.clone();
                bad.replace_range(i..i + 1, if c == 'A' { "B" } else { "A" });
                assert_eq!(p.info(&bad, NOW), None, "{m} changed at {i}");
            }
            let root = p.assign("root", 7, NOW).expect(m);
            let (t, r): (Vec<_>, Vec<_>) = (token.split('.').collect(), root.split('.').collect());
            assert_eq!(
                p.info(&format!("{}.{}.{}", t[0], r[1], t[2]), NOW),
                None,
                "{m}"
            );
        }
    }

    #[test]
    fn header_alg_must_be_the_configured_one() {
        let (crt, key) = (testdata("server.crt"), testdata("server.key.insecure"));
        let rs256 = provider(&format!("sign-method=RS256,priv-key={key}")).expect("rs256");
        // The classic confusion: an HS256 token keyed with the RSA public key file.
        let confused = provider(&format!("sign-method=HS256,priv-key={crt}")).expect("hs256");
        assert_eq!(
            rs256.info(&confused.assign("root", 1, NOW).expect("hs256"), NOW),
            None
        );
        let ps256 = provider(&format!("sign-method=PS256,priv-key={key}")).expect("ps256");
        assert_eq!(
            ps256.info(&rs256.assign("root", 1, NOW).expect("rs256"), NOW),
            None
        );
        // Signatures valid for the configured key, under a header naming another alg or none.
        let claims = r#"{"exp":9999999999,"revision":1,"username":"root"}"#;
        let headers = [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256"}"#,
            r#"{"alg":["RS256"]}"#,
            "{}",
        ];
        for header in headers {
            let token = rs256.sign_token(header, claims).expect("sign");
            assert_eq!(rs256.info(&token, NOW), None, "{header}");
        }
        let token = rs256
            .sign_token(r#"{"alg":"RS256"}"#, claims)
            .expect("sign");
        assert!(rs256.info(&token, NOW).is_some());
    }

    #[test]
    fn claims_and_expiry_are_read_as_golang_jwt_reads_them() {
        let (_, p, _) = providers().pop().expect("HS512");
        let token = p.assign("abc", 1, NOW).expect("assign");
        assert!(p.info(&token, NOW + 3599).is_some());
        assert_eq!(
            p.info(&token, NOW + 3600),
            None,
            "exp is now + ttl, valid while now < exp"
        );
        let user = |claims: &str| {
            let token = p.sign_token(r#"{"alg":"HS512"}"#, claims).expect("sign");
            p.info(&token, NOW)
        };
        let ok = Some(("u".to_string(), 5));
        assert_eq!(
            user(r#"{"username":"u","revision":5}"#),
            ok,
            "no exp is not checked"
        );
        assert_eq!(
            user(r#"{"username":"u","revision":5,"exp":0}"#),
            ok,
            "exp 0 is absent"
        );
        let extra = r#"{"aud":["a",{"b":[null,true,false,-1.5e3]}],"username":"u","revision":5.9}"#;
        assert_eq!(
            user(extra),
            ok,
            "other claims pass; revision truncates as Go's uint64()"
        );
        assert_eq!(
            user(r#"{"username":"x","username":"u","revision":5e0}"#),
            ok,
            "last wins"
        );
        assert_eq!(
            user(&format!(r#"{{"username":"u","revision":5,"nbf":{NOW}}}"#)),
            ok
        );
        for bad in [
            format!(r#"{{"username":"u","revision":5,"exp":{NOW}}}"#),
            format!(r#"{{"username":"u","revision":5,"nbf":{}}}"#, NOW + 1),
            format!(r#"{{"username":"u","revision":5,"iat":{}}}"#, NOW + 1),
            r#"{"username":"u","revision":5,"exp":"9999999999"}"#.into(),
            r#"{"username":"u","revision":5,"exp":1e999}"#.into(),
            r#"{"username":1,"revision":5}"#.into(),
            r#"{"username":"u"}"#.into(),
            r#"{"username":"u","revision":-1}"#.into(),
            r#"{"username":"u","revision":05}"#.into(),
            r#"{"username":"u","revision":5}x"#.into(),
            r#"{"username":"u\x","revision":5}"#.into(),
            format!(
                r#"{{"username":"u","revision":5,"x":{}}}"#,
                "[".repeat(10_000)
            ),
        ] {
            assert_eq!(user(&bad), None, "{bad}");
        }
        let name = "a\"b\\c\n\u{1}<>&\u{2028}é😀";
        let token = p.assign(name, u64::MAX, NOW).expect("assign");
        assert_eq!(p.info(&token, NOW), Some((name.into(), u64::MAX)));
        let surrogates = r#"{"username":"\ud83d\ude00\ud800","revision":5}"#;
        assert_eq!(user(surrogates), Some(("😀\u{fffd}".into(), 5)));
    }

    #[test]
    fn garbage_tokens_are_refused() {
        let (_, p, _) = providers().pop().expect("HS512");
        let token = p.assign("abc", 1, NOW).expect("assign");
        let deep = b64_encode(format!("{}1", r#"{"a":"#.repeat(5000)).as_bytes(), B64_URL);
        for bad in [
            String::new(),
            "..".into(),
            "a.b.c".into(),
            "é.é.é".into(),
            format!("{token}."),
            format!("{token}=="),
            format!("Bearer {token}"),
            format!("{deep}.{deep}.AAAA"),
            token.replace('.', ".."),
        ] {
            assert_eq!(p.info(&bad, NOW), None, "{bad}");
        }
    }

    #[test]
    fn options_parse_as_etcd_splits_them() {
        let o = parse_options("pub-key=/a,priv-key=/b,sign-method=RS256,ttl=1h30m,foo=bar");
        let o = o.expect("options");
        assert_eq!(
            (o.sign_method.name(), o.ttl),
            ("RS256", Duration::from_secs(5400))
        );
        assert_eq!(
            (o.pub_key_path, o.priv_key_path),
            (Some("/a".into()), Some("/b".into()))
        );
        assert_eq!(
            o.unknown_keys,
            ["foo"],
            "etcd warns about unknown keys and goes on"
        );
        let o = parse_options("sign-method=HS256,ttl=,pub-key=").expect("empty values");
        assert_eq!((o.ttl, o.pub_key_path), (TTL_DEFAULT, None));
        let ttls = "5m=300000 300ms=300 1.5h=5400000 .5s=500 1m0.5s=60500 +2s=2000 -0=0 3000µs=3";
        for (ttl, ms) in ttls.split(' ').filter_map(|t| t.split_once('=')) {
            let o = parse_options(&format!("sign-method=ES256,ttl={ttl}")).expect(ttl);
            assert_eq!(Ok(o.ttl), ms.parse().map(Duration::from_millis), "{ttl}");
        }
        for (opts, want) in [
            ("", "auth: invalid auth signature method: \"\""),
            (
                "sign-method=rs256",
                "auth: invalid auth signature method: \"rs256\"",
            ),
            (
                "sign-method=none",
                "auth: invalid auth signature method: \"none\"",
            ),
            (
                "sign-method=ES512",
                "sign-method ES512 is not supported by Keel (ring has no P-521)",
            ),
            (
                "sign-method=HS256,ttl=forever",
                "ttl: time: invalid duration \"forever\"",
            ),
            (
                "sign-method=HS256,ttl=1",
                "time: missing unit in duration \"1\"",
            ),
            (
                "sign-method=HS256,ttl=1x",
                "time: unknown unit \"x\" in duration \"1x\"",
            ),
            (
                "sign-method=HS256,ttl=3000000h",
                "time: invalid duration \"3000000h\"",
            ),
            ("sign-method=HS256,ttl=-1s", "ttl \"-1s\" is negative"),
            (
                "sign-method=HS256,a=b=c",
                "invalid auth options: invalid token option \"a=b=c\"",
            ),
            (
                "sign-method=HS256,",
                "auth: invalid auth options: invalid token option \"\"",
            ),
            (
                "ttl=1s,ttl=2s",
                "auth: invalid auth options: duplicated parameter \"ttl\"",
            ),
        ] {
            let err = parse_options(opts).expect_err(opts);
            assert!(err.ends_with(want), "{opts}: {err}");
        }
    }

    #[test]
    fn bad_keys_fail_at_startup_naming_the_file() {
        let (crt, key) = (testdata("server.crt"), testdata("server.key.insecure"));
        let (ec_crt, ec_key) = (
            testdata("server-ecdsa.crt"),
            testdata("server-ecdsa.key.insecure"),
        );
        let err = |opts: &str| provider(opts).err().unwrap_or_default();
        let missing = err("sign-method=HS256,priv-key=/nonexistent/k");
        assert!(missing.starts_with("auth: invalid auth options: priv-key /nonexistent/k: "));
        let hs256 = format!("{ERR_MISSING_KEY}: sign-method HS256 needs priv-key");
        assert_eq!(err(&format!("sign-method=HS256,pub-key={crt}")), hs256);
        let es384 = format!("{ERR_MISSING_KEY}: sign-method ES384 needs priv-key or pub-key");
        assert_eq!(err("sign-method=ES384"), es384);
        let other = testdata("server2.crt");
        let mismatch = format!("sign-method=RS256,pub-key={other},priv-key={key}");
        assert_eq!(err(&mismatch), ERR_KEY_MISMATCH);
        for (opt, file) in [
            ("RS256,pub-key", &key),
            ("RS256,priv-key", &crt),
            ("RS256,pub-key", &ec_crt),
            ("RS256,priv-key", &ec_key),
            ("ES256,pub-key", &crt),
            ("ES256,priv-key", &key),
            ("ES384,priv-key", &ec_key),
            ("ES384,pub-key", &ec_crt),
            ("PS256,pub-key", &testdata("go-tokens.txt")),
        ] {
            let err = err(&format!("sign-method={opt}={file}"));
            assert!(
                err.starts_with(&format!("{} {file}: ", &opt[6..])),
                "{opt}: {err}"
            );
        }
    }

    #[test]
    fn der_and_base64_never_panic_on_damage() {
        let (_, der) = pem_first(&fixture("server.crt").unwrap_or_default());
        let (oid, _, key) = cert_spki(&der).and_then(spki_parts).expect("spki");
        assert!(oid == OID_RSA && rsa_public_ok(key));
        assert!((0..der.len()).all(|cut| cert_spki(&der[..cut]).is_none()));
        let data: Vec<u8> = (0..=255).collect();
        for n in 0..data.len() {
            let text = b64_encode(&data[..n], B64_URL);
            assert_eq!(
                b64_decode(text.as_bytes(), B64_URL).as_deref(),
                Some(&data[..n])
            );
        }
        assert_eq!(
            (b64_decode(b"AB", B64_URL), b64_decode(b"A", B64_URL)),
            (None, None)
        );
        assert_eq!(der_tlv(0x04, &[7; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    fn pem_first(bytes: &[u8]) -> (&'static str, Vec<u8>) {
        let file = KeyFile {
            what: "test",
            path: "test".into(),
            bytes: bytes.to_vec(),
        };
        file.pem().expect("pem")
    }
}
