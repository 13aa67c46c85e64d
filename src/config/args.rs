//! The command line and the environment: Go `flag` syntax, then `ETCD_<FLAG>` variables for
//! the flags the command line left unset.

use super::flags::{check_value, find_spec, usage, Kind, SPECS};
use super::go::parse_go_bool;
use super::{invalid, ConfigError, Values};

/// Go `flag` syntax: `-f`, `--f`, `-f=v`, `-f v`; booleans never take the next
/// argument; `--` or the first non-flag argument ends the flags.
pub(super) fn parse_args(
    args: &[String],
    warnings: &mut Vec<String>,
) -> Result<Values, ConfigError> {
    let mut values = Values::new();
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        if arg == "--" {
            break;
        }
        let Some(dashless) = arg.strip_prefix('-').filter(|rest| !rest.is_empty()) else {
            return invalid(format!("'{arg}' is not a valid flag"));
        };
        let body = dashless.strip_prefix('-').unwrap_or(dashless);
        if body.is_empty() || body.starts_with(['-', '=']) {
            return invalid(format!("bad flag syntax: {arg}"));
        }
        let (name, inline_value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let Some(spec) = find_spec(name) else {
            if name == "h" || name == "help" {
                return Err(ConfigError::Help(usage().to_string()));
            }
            return invalid(format!("flag provided but not defined: -{name}"));
        };
        let value = if matches!(spec.kind, Kind::Bool | Kind::Ignored) {
            let value = inline_value.unwrap_or_else(|| "true".to_string());
            if spec.kind == Kind::Bool {
                parse_go_bool(&value).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "invalid boolean value {value:?} for -{name}: {e}"
                    ))
                })?;
            }
            value
        } else {
            let value = match inline_value {
                Some(value) => value,
                None if index < args.len() => {
                    index += 1;
                    args[index - 1].clone()
                }
                None => return invalid(format!("flag needs an argument: -{name}")),
            };
            check_value(spec.kind, &value).map_err(|e| {
                ConfigError::Invalid(format!("invalid value {value:?} for flag -{name}: {e}"))
            })?;
            value
        };
        if spec.kind == Kind::Ignored {
            warnings.push(format!("--{name}: deprecated etcd flag; ignored"));
        }
        values.insert(spec.name, value);
    }
    if let Some(extra) = args.get(index) {
        return invalid(format!("'{extra}' is not a valid flag"));
    }
    Ok(values)
}

fn env_key(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// `ETCD_FOO_BAR` sets `--foo-bar` unless the command line set it.
pub(super) fn apply_env(
    mut values: Values,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<Values, ConfigError> {
    let from_args: Vec<&'static str> = values.keys().copied().collect();
    let mut used = vec!["ETCD_CONFIG_FILE".to_string()];
    for spec in SPECS {
        let key = env_key(spec.name);
        if from_args.contains(&spec.name) {
            continue;
        }
        let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == key) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        check_value(spec.kind, value)
            .map_err(|e| ConfigError::Invalid(format!("invalid value {value:?} for {key}: {e}")))?;
        values.insert(spec.name, value.clone());
        used.push(key);
    }
    for (key, value) in env {
        if used.contains(key) || !key.starts_with("ETCD_") {
            continue;
        }
        let shadowed = from_args.iter().any(|name| env_key(name) == *key);
        if shadowed {
            // etcd 3.4 exits here; we let the command line win and say so.
            warnings.push(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding \
                 command-line flag"
            ));
        } else {
            warnings.push(format!("unrecognized environment variable {key}={value}"));
        }
    }
    Ok(values)
}
