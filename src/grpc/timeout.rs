//! `grpc-timeout` header values: 1 to 8 ASCII digits followed by a unit
//! (`H` hours, `M` minutes, `S` seconds, `m` millis, `u` micros, `n` nanos).

use std::time::Duration;

/// Why a `grpc-timeout` value was rejected.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidTimeout(pub String);

/// Parses a `grpc-timeout` value, e.g. `100m`, `5S`, `1H`.
pub fn parse(value: &str) -> Result<Duration, InvalidTimeout> {
    let invalid = || InvalidTimeout(value.to_string());
    if value.len() < 2 || !value.is_ascii() {
        return Err(invalid());
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    // The spec allows at most 8 digits.
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let duration = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(invalid()),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse("100m"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("5S"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("7u"), Ok(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Ok(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("0S"), Ok(Duration::ZERO));
        for bad in [
            "",
            "S",
            "5",
            "5s",
            "123456789S",
            "-5S",
            "1.5S",
            " 5S",
            "5 S",
            "٣S",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
