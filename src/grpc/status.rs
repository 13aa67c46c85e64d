//! gRPC status codes, `Status`, and the `grpc-status` / `grpc-message` trailers
//! (percent-encoded as the gRPC HTTP/2 spec requires).

use http::{HeaderMap, HeaderName, HeaderValue};

/// The gRPC status codes, with their wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// grpc-go's name of the code (`codes.Code.String()`), as in "rpc error: code = …".
    pub fn go_name(self) -> String {
        match self {
            Code::Ok => "OK".into(),
            Code::Cancelled => "Canceled".into(),
            other => format!("{other:?}"),
        }
    }

    /// The code for a wire number; unknown numbers map to `Unknown` as grpc-go does.
    pub fn from_u32(n: u32) -> Code {
        use Code::*;
        const ALL: [Code; 17] = [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ];
        ALL.get(n as usize).copied().unwrap_or(Unknown)
    }
}

/// A gRPC status: what a call ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn ok() -> Status {
        Status::new(Code::Ok, "")
    }

    /// The trailer fields for this status (`grpc-message` only when non-empty).
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(2);
        self.add_to(&mut map);
        map
    }

    /// Adds `grpc-status` and, if non-empty, `grpc-message` to `map`. The names and the
    /// codes are static values: no allocation beyond the map's own for an OK status, which
    /// every unary reply sends (issue 22: parsing the names and formatting the code were
    /// four allocations per call).
    pub fn add_to(&self, map: &mut HeaderMap) {
        const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
        const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
        const CODES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        map.insert(
            GRPC_STATUS,
            HeaderValue::from_static(CODES[self.code as usize]),
        );
        if !self.message.is_empty() {
            let encoded = percent_encode(&self.message);
            // Percent-encoding leaves only printable ASCII: always a valid value.
            let value = HeaderValue::from_str(&encoded).expect("percent-encoded is visible ASCII");
            map.insert(GRPC_MESSAGE, value);
        }
    }

    /// Reads a status from trailers (or trailers-only headers); `None` if `grpc-status`
    /// is absent or not a number.
    pub fn from_header_map(map: &HeaderMap) -> Option<Status> {
        let code = map.get("grpc-status")?.to_str().ok()?.parse::<u32>().ok()?;
        let message = map
            .get("grpc-message")
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default();
        Some(Status::new(Code::from_u32(code), message))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rpc error: code = {:?} desc = {}",
            self.code, self.message
        )
    }
}

impl std::error::Error for Status {}

/// Percent-encodes a `grpc-message`: bytes outside 0x20..=0x7E and `%` become `%XX`
/// (upper-case hex) over the UTF-8 encoding, as the gRPC HTTP/2 spec says.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded `grpc-message`. Malformed escapes are kept verbatim and
/// invalid UTF-8 is replaced, as the spec asks receivers to be lenient.
pub fn percent_decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            let hex = std::str::from_utf8(&value[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code goes out as its number (from the static table) and reads back as itself,
    /// with and without a message.
    #[test]
    fn every_code_round_trips_through_the_trailers() {
        for n in 0..=16u32 {
            let code = Code::from_u32(n);
            assert_eq!(code as u32, n);
            let map = Status::new(code, "").to_header_map();
            assert_eq!(map.get("grpc-status").unwrap(), n.to_string().as_str());
            assert!(map.get("grpc-message").is_none());
            assert_eq!(Status::from_header_map(&map), Some(Status::new(code, "")));
            let map = Status::new(code, "a b%").to_header_map();
            assert_eq!(
                Status::from_header_map(&map),
                Some(Status::new(code, "a b%"))
            );
        }
    }

    #[test]
    fn percent_round_trip() {
        for message in [
            "",
            "plain text",
            "100% sure",
            "naïve ☃ \n\t\r",
            "a%zzb",
            "\u{0}\u{7f}",
        ] {
            let encoded = percent_encode(message);
            assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            assert_eq!(percent_decode(encoded.as_bytes()), message);
        }
        assert_eq!(percent_encode("100% sure"), "100%25 sure");
        assert_eq!(percent_encode("é"), "%C3%A9");
        // Lenient decoding of malformed escapes.
        assert_eq!(percent_decode(b"50%"), "50%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }

    #[test]
    fn trailers_round_trip() {
        let status = Status::new(Code::ResourceExhausted, "too big: 5% over");
        let map = status.to_header_map();
        assert_eq!(map["grpc-status"], "8");
        assert_eq!(map["grpc-message"], "too big: 5%25 over");
        assert_eq!(Status::from_header_map(&map), Some(status));
        assert_eq!(Status::ok().to_header_map().get("grpc-message"), None);
        assert_eq!(Code::from_u32(99), Code::Unknown);
    }
}
