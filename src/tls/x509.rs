//! Just enough DER to read a certificate's subject Common Name (the user name a verified
//! client certificate stands for, and `--peer-cert-allowed-cn`).

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject's Common Name (the last one, as Go reads it), if it has one.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (tag, cert, _) = element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == CONTEXT_0 {
        rest = after; // version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (tag, subject, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut found = None;
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (tag, set, next) = element(rdns)?;
        rdns = next;
        if tag != SET {
            return None;
        }
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, next) = element(attrs)?;
            attrs = next;
            let (tag, oid, value) = element(attr)?;
            if tag == OID && oid == COMMON_NAME {
                let (_, text, _) = element(value)?;
                found = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "etcd");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), Some("alice".to_string()));
    }

    #[test]
    fn no_common_name_and_garbage_give_none() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "etcd");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff]), None);
        assert_eq!(common_name(&[]), None);
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            let _ = common_name(&der[..cut]); // never panics
        }
    }
}
