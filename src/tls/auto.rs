//! `--auto-tls` / `--peer-auto-tls`: a self-signed certificate made once into
//! `<data-dir>/fixtures/{client,peer}/{cert,key}.pem` and reused on every later boot, as
//! etcd's `transport.SelfCert` does. Runs at boot on the main thread.
//!
//! etcd makes an ECDSA P-521 key; ring signs with P-256 and P-384 only, so Keel's is P-384.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the pair is, after it was made (or found).
pub struct SelfCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// True when this call made it.
    pub created: bool,
}

/// Finds or makes the pair in `dir`. `hosts` are the listen URLs' hosts (the SANs),
/// `validity_years` is `--self-signed-cert-validity`, `client_auth` adds the client-auth
/// purpose (peers dial each other with it).
pub fn self_cert(
    dir: &Path,
    hosts: &[String],
    validity_years: u32,
    client_auth: bool,
) -> Result<SelfCert, String> {
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    if cert_file.exists() && key_file.exists() {
        return Ok(SelfCert {
            cert_file,
            key_file,
            created: false,
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create cert directory: {e}"))?;
    let mut names: Vec<String> = Vec::new();
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| format!("cannot generate x509 certificate: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    let (year, month, day) = today_utc();
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let end_day = if month == 2 && day == 29 { 28 } else { day };
    params.not_after = rcgen::date_time_ymd(year + validity_years.max(1) as i32, month, end_day);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    if client_auth {
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .map_err(|e| format!("cannot generate ECDSA key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot generate x509 certificate: {e}"))?;
    write_file(&cert_file, cert.pem().as_bytes(), 0o644)?;
    write_file(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(SelfCert {
        cert_file,
        key_file,
        created: true,
    })
}

/// Today's date (UTC) from the system clock: days since 1970 to a civil date.
fn today_utc() -> (i32, u8, u8) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day) = crate::runtime::log::civil_from_days((secs / 86_400) as i64);
    (year as i32, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("keel-auto-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = self_cert(&dir, &["localhost".into(), "127.0.0.1".into()], 1, true).unwrap();
        assert!(first.created);
        let pem = std::fs::read(&first.cert_file).unwrap();
        let again = self_cert(&dir, &["localhost".into()], 1, true).unwrap();
        assert!(!again.created);
        assert_eq!(std::fs::read(&again.cert_file).unwrap(), pem);
        let info = crate::tls::TlsInfo {
            cert_file: again.cert_file,
            key_file: again.key_file,
            self_signed: true,
            ..Default::default()
        };
        info.load().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}
