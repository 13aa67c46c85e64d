//! [`Url`]: a URL the way etcd's `types.NewURLs` accepts it, and the address it binds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A URL the way etcd accepts it: `scheme://host:port`, no path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    pub scheme: String,
    /// Without the brackets of an IPv6 literal; may be empty ("http://:2379").
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let text = s.trim();
        let scheme_error = || format!("URL scheme must be http, https, unix, or unixs: {text}");
        let (scheme, rest) = text.split_once("://").ok_or_else(scheme_error)?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
            return Err(scheme_error());
        }
        if rest.contains(['/', '?', '#']) {
            return Err(format!("URL must not contain a path: {text}"));
        }
        let form_error = || format!("URL address does not have the form \"host:port\": {text}");
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(form_error)?;
            (host, after.strip_prefix(':').ok_or_else(form_error)?)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(form_error)?;
            if host.contains(':') {
                return Err(form_error());
            }
            (host, port)
        };
        if host.contains('@') {
            return Err(format!("URL must not contain user information: {text}"));
        }
        let port = match port.parse::<u16>() {
            Ok(number) if port.bytes().all(|b| b.is_ascii_digit()) => number,
            _ => return Err(format!("URL has an invalid port {port:?}: {text}")),
        };
        Ok(Url {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// The address to bind. Only IP literals and `localhost` are accepted, as in
    /// etcd: binding must not depend on DNS.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        if self.scheme.starts_with("unix") {
            return Err(format!(
                "unix sockets are served on peer URLs only ({self})"
            ));
        }
        let ip = if self.host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host
                .parse::<IpAddr>()
                .map_err(|_| format!("expected IP in URL for binding ({self})"))?
        };
        Ok(SocketAddr::new(ip, self.port))
    }

    /// The key two URLs are compared by when matching `--initial-cluster` against
    /// `--initial-advertise-peer-urls`; etcd resolves names there, we only know
    /// that `localhost` is 127.0.0.1.
    pub(super) fn match_key(&self) -> (String, String, u16) {
        let host = if self.host == "localhost" {
            "127.0.0.1"
        } else {
            &self.host
        };
        (self.scheme.clone(), host.to_string(), self.port)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}
