//! The config file (`--config-file`): etcd's YAML keys read into the same values the flags
//! set. A YAML subset, parsed by hand: enough for etcd's config files.

use super::flags::{check_value, find_spec, TLS};
use super::go::parse_go_bool;
use super::{ConfigError, Values};

pub(super) fn values_from_yaml(
    path: &str,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Values, ConfigError> {
    let entries =
        yaml_entries(text).map_err(|e| ConfigError::Invalid(format!("config file {path}: {e}")))?;
    let mut values = Values::new();
    for (key, value) in entries {
        let Some(value) = value else { continue };
        if let Some(field) = key
            .strip_prefix("client-transport-security.")
            .or_else(|| key.strip_prefix("peer-transport-security."))
        {
            let unset = value.is_empty() || parse_go_bool(&value) == Ok(false);
            if ![
                "cert-file",
                "key-file",
                "client-cert-auth",
                "trusted-ca-file",
                "auto-tls",
            ]
            .contains(&field)
            {
                warnings.push(format!("config file {path}: unknown key {key}; ignored"));
            } else if !unset {
                warnings.push(format!("{key}: {TLS}; ignored"));
            }
            continue;
        }
        let Some(spec) = find_spec(&key).filter(|s| !matches!(s.name, "config-file" | "version"))
        else {
            warnings.push(format!("config file {path}: unknown key {key}; ignored"));
            continue;
        };
        check_value(spec.kind, &value).map_err(|e| {
            ConfigError::Invalid(format!(
                "config file {path}: invalid value {value:?} for {key}: {e}"
            ))
        })?;
        values.insert(spec.name, value);
    }
    Ok(values)
}

// ---------------------------------------------------------------------------
// A YAML subset: enough for etcd's config files.

/// Flattens `key: value` lines into `("parent.child", value)` pairs; `None` is
/// YAML null. Block lists (`- item`) and flow lists (`[a, b]`) become one
/// comma-joined value, which is how etcd's list-valued keys read as flags.
pub(super) fn yaml_entries(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    // (indent, key path) of the keys that may still receive children.
    let mut parents: Vec<(usize, String)> = Vec::new();
    for (line_index, raw_line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let line = strip_yaml_comment(raw_line).trim_end();
        let content = line.trim_start();
        if content.is_empty() || content == "---" || content == "..." {
            continue;
        }
        let indent = line.len() - content.len();
        if line[..indent].contains('\t') {
            return Err(format!(
                "line {line_number}: tabs are not allowed in indentation"
            ));
        }
        if let Some(item) = content
            .strip_prefix('-')
            .filter(|r| r.is_empty() || r.starts_with(' '))
        {
            let item = yaml_scalar(item.trim(), line_number)?.unwrap_or_default();
            let Some((_, value)) = entries.last_mut() else {
                return Err(format!("line {line_number}: list item without a key"));
            };
            match value {
                Some(joined) => {
                    joined.push(',');
                    joined.push_str(&item);
                }
                None => *value = Some(item),
            }
            continue;
        }
        let (key, value) = split_yaml_key(content)
            .ok_or_else(|| format!("line {line_number}: expected \"key: value\""))?;
        while parents
            .last()
            .is_some_and(|(parent_indent, _)| *parent_indent >= indent)
        {
            parents.pop();
        }
        let path = match parents.last() {
            Some((_, parent)) => format!("{parent}.{key}"),
            None => key.to_string(),
        };
        if value.is_empty() {
            parents.push((indent, path.clone()));
        }
        entries.push((path, yaml_scalar(value, line_number)?));
    }
    // A key that turned out to be a map parent carries no value of its own.
    let parent_paths: Vec<String> = entries
        .iter()
        .filter_map(|(key, _)| key.rsplit_once('.').map(|(parent, _)| parent.to_string()))
        .collect();
    entries.retain(|(key, _)| !parent_paths.contains(key));
    Ok(entries)
}

fn strip_yaml_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (index, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return &line[..index],
            None => {}
        }
        previous = c;
    }
    line
}

fn split_yaml_key(content: &str) -> Option<(&str, &str)> {
    let (key, value) = match content.split_once(": ") {
        Some((key, value)) => (key, value.trim()),
        None => (content.strip_suffix(':')?, ""),
    };
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then_some((key, value))
}

fn yaml_scalar(value: &str, line_number: usize) -> Result<Option<String>, String> {
    if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL" {
        return Ok(None);
    }
    if value.starts_with('|') || value.starts_with('>') {
        return Err(format!(
            "line {line_number}: block scalars are not supported"
        ));
    }
    if let Some(inner) = value.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| format!("line {line_number}: unterminated quoted string"))?;
        return Ok(Some(inner.replace("''", "'")));
    }
    if let Some(inner) = value.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("line {line_number}: unterminated quoted string"))?;
        return unescape_double_quoted(inner)
            .map(Some)
            .map_err(|e| format!("line {line_number}: {e}"));
    }
    if let Some(inner) = value.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("line {line_number}: unterminated flow list"))?;
        let mut items = Vec::new();
        for item in inner
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            items.push(yaml_scalar(item, line_number)?.unwrap_or_default());
        }
        return Ok(Some(items.join(",")));
    }
    Ok(Some(value.to_string()))
}

fn unescape_double_quoted(inner: &str) -> Result<String, String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('/') => out.push('/'),
            other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}
