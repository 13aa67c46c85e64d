//! Cluster identity and bootstrap membership: etcd's member and cluster IDs, and
//! `--initial-cluster` checked against this member's name and advertised peer URLs.

use super::flags::{DEFAULT_INITIAL_CLUSTER, DEFAULT_NAME};
use super::{invalid, ClusterState, ConfigError, Url};

/// etcd's member ID: SHA-1 over the sorted peer URLs concatenated, then the
/// cluster token; the first 8 bytes big-endian. Initial members have no time
/// component (etcd adds one only for members added at runtime).
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    let mut bytes = sorted.concat().into_bytes();
    bytes.extend_from_slice(cluster_token.as_bytes());
    first_8_bytes_be(&bytes)
}

/// etcd's cluster ID: SHA-1 over the member IDs sorted ascending, each as 8
/// bytes big-endian; the first 8 bytes of the digest big-endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let bytes: Vec<u8> = sorted.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_8_bytes_be(&bytes)
}

fn first_8_bytes_be(bytes: &[u8]) -> u64 {
    let digest = sha1_smol::Sha1::from(bytes).digest().bytes();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 digest is 20 bytes"))
}

/// `--initial-cluster` (`text`), defaulted and checked the way etcd bootstraps a member.
pub(super) fn initial_cluster(
    text: &str,
    name: &str,
    advertise_peer_urls: &[Url],
    state: ClusterState,
) -> Result<Vec<(String, Url)>, ConfigError> {
    // etcd rewrites the untouched default as "<name>=<each advertise peer URL>",
    // so `--name x` alone bootstraps a one-member cluster called x.
    let members: Vec<(String, Url)> = if text == DEFAULT_INITIAL_CLUSTER && name != DEFAULT_NAME {
        advertise_peer_urls
            .iter()
            .map(|url| (name.to_string(), url.clone()))
            .collect()
    } else {
        let mut members = Vec::new();
        for entry in text.split(',').filter(|entry| !entry.is_empty()) {
            let (member, url) = entry.split_once('=').unwrap_or((entry, ""));
            let url = Url::parse(url)
                .map_err(|e| ConfigError::Invalid(format!("--initial-cluster {text:?}: {e}")))?;
            members.push((member.to_string(), url));
        }
        members
    };
    let local: Vec<&Url> = members
        .iter()
        .filter(|(m, _)| m == name)
        .map(|(_, u)| u)
        .collect();
    if local.is_empty() {
        return invalid(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    }
    let mut seen = Vec::new();
    for (_, url) in &members {
        if seen.contains(&url) {
            return invalid(format!("initial cluster {text} has duplicate url"));
        }
        seen.push(url);
    }
    if state == ClusterState::New {
        check_advertise_matches(name, &local, advertise_peer_urls)?;
    }
    Ok(members)
}

fn check_advertise_matches(
    name: &str,
    cluster_urls: &[&Url],
    advertise_peer_urls: &[Url],
) -> Result<(), ConfigError> {
    let in_advertise = |url: &Url| {
        advertise_peer_urls
            .iter()
            .any(|a| a.match_key() == url.match_key())
    };
    let in_cluster = |url: &Url| {
        cluster_urls
            .iter()
            .any(|c| c.match_key() == url.match_key())
    };
    let advertised: Vec<String> = advertise_peer_urls.iter().map(Url::to_string).collect();
    let as_members = |urls: &mut dyn Iterator<Item = &Url>| -> String {
        urls.map(|url| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let missing = as_members(&mut cluster_urls.iter().copied().filter(|u| !in_advertise(u)));
    if !missing.is_empty() {
        return invalid(format!(
            "--initial-cluster has {missing} but missing from --initial-advertise-peer-urls={}",
            advertised.join(",")
        ));
    }
    let extra: Vec<String> = advertise_peer_urls
        .iter()
        .filter(|u| !in_cluster(u))
        .map(Url::to_string)
        .collect();
    if !extra.is_empty() {
        return invalid(format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
            extra.join(","),
            as_members(&mut advertise_peer_urls.iter())
        ));
    }
    Ok(())
}
