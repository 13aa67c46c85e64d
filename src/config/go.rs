//! Go's syntax for flag values, so that a value etcd accepts is accepted here with the
//! same meaning, and a value etcd refuses is refused with the words Go's `flag` package
//! uses: booleans (`strconv.ParseBool`), integers (`strconv.ParseUint/ParseInt` with base
//! 0), durations (`time.ParseDuration`) and etcd's comma-separated URL lists.

use std::fmt;
use std::time::Duration;

use super::Url;

/// Why a flag value was refused; `Display` is the text Go puts after the colon in
/// `invalid value "x" for flag -f: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ValueError {
    /// Go's `strconv.ErrSyntax`.
    Syntax,
    /// Go's `strconv.ErrRange`.
    Range,
    /// Not one of a choice flag's values.
    Choice(&'static [&'static str]),
    /// A URL that etcd's `types.NewURLs` refuses, with its message.
    Url(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Syntax => f.write_str("parse error"),
            ValueError::Range => f.write_str("value out of range"),
            ValueError::Choice(valid) => {
                write!(f, "invalid value (valid values are {})", valid.join(", "))
            }
            ValueError::Url(message) => f.write_str(message),
        }
    }
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_go_bool(value: &str) -> Result<bool, ValueError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ValueError::Syntax),
    }
}

/// Go's `strconv.ParseUint(s, 0, bits)`: decimal, 0x, 0o, 0b or leading-0 octal.
pub(super) fn parse_go_uint(value: &str, bits: u32) -> Result<u64, ValueError> {
    let lower = value.to_ascii_lowercase();
    let (digits, radix) = if let Some(hex) = lower.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(octal) = lower.strip_prefix("0o") {
        (octal, 8)
    } else if let Some(binary) = lower.strip_prefix("0b") {
        (binary, 2)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8)
    } else {
        (lower.as_str(), 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(ValueError::Syntax);
    }
    let parsed = u64::from_str_radix(digits, radix).map_err(|_| ValueError::Range)?;
    if bits < 64 && parsed >> bits != 0 {
        return Err(ValueError::Range);
    }
    Ok(parsed)
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
pub(super) fn parse_go_int(value: &str) -> Result<i64, ValueError> {
    let (negative, magnitude) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let magnitude = parse_go_uint(magnitude, 64)?;
    let limit = if negative {
        1u64 << 63
    } else {
        (1u64 << 63) - 1
    };
    if magnitude > limit {
        return Err(ValueError::Range);
    }
    Ok(if negative {
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    })
}

/// Seconds per unit of `time.ParseDuration`.
fn duration_unit_s(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1e-9,
        "us" | "µs" | "μs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    })
}

/// Go's longest duration, `1<<63 - 1` nanoseconds, in seconds.
const GO_DURATION_S_MAX: f64 = 9_223_372_036.854_775;

/// The seconds in a Go duration with its sign dropped; `None` unless the text follows
/// `time.ParseDuration`'s grammar: `[-+]` then `<number><unit>` repeated, or "0".
fn duration_magnitude_s(value: &str) -> Option<f64> {
    let mut rest = value.strip_prefix(['-', '+']).unwrap_or(value);
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_s = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        total_s += number.parse::<f64>().ok()? * duration_unit_s(&rest[..unit_len])?;
        rest = &rest[unit_len..];
    }
    Some(total_s)
}

/// Go's `time.ParseDuration`: the grammar, and no more than Go's longest duration.
pub(super) fn check_go_duration(value: &str) -> Result<(), ValueError> {
    match duration_magnitude_s(value) {
        Some(total_s) if total_s < GO_DURATION_S_MAX => Ok(()),
        _ => Err(ValueError::Syntax),
    }
}

/// A Go duration (checked by `check_go_duration`) as a std Duration; negative values are
/// zero.
pub fn go_duration(value: &str) -> Option<Duration> {
    let total_s = duration_magnitude_s(value)?;
    if value.starts_with('-') {
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(total_s).ok()
}

/// A comma-separated URL list, duplicates dropped, order kept.
pub(super) fn parse_url_list(value: &str) -> Result<Vec<Url>, ValueError> {
    let mut urls: Vec<Url> = Vec::new();
    for item in value.split(',') {
        let url = Url::parse(item).map_err(ValueError::Url)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}
