//! The config file (`--config-file`): etcd's YAML keys read into the same values the flags
//! set, so a file and the equivalent flags build the same `Config`.
//!
//! etcd reads the file with `sigs.k8s.io/yaml` (YAML 1.1 through go-yaml v2, then
//! `encoding/json` into its config struct), and this reader follows it:
//! - only the first YAML document is read;
//! - a key etcd's config does not have is ignored (here with a warning); Keel's own flags
//!   (`cores`, `cpu-list`, `shard-split-keys`, `idle-spin`) are keys too;
//! - a null or empty value (`key:`, `~`) keeps the default; an empty string does too for
//!   URL lists, choices, `cors` and `host-whitelist`, as etcd's `configFromFile` does;
//! - TLS settings live in two sections, `client-transport-security` and
//!   `peer-transport-security` (`cert-file`, `key-file`, `client-cert-auth`, ...), which set
//!   the same values as `--cert-file`, `--peer-cert-file`, ...; etcd's file has no top-level
//!   TLS keys, so top-level `cert-file` is an unknown key here too;
//! - plain `yes`/`no`/`on`/`off` are booleans (YAML 1.1); a duration given as a number is
//!   nanoseconds (a Go `time.Duration` in JSON).
//!
//! Keel is more lenient than etcd in a few harmless ways: a scalar of any type is read as
//! text and checked with the flag's own syntax (`snapshot-count: '5'` works), a duration may
//! also be written `1m30s`, and any comma-separated list (URLs, `cors`) may be a YAML list.
//!
//! Parsing is done by `saphyr-parser`'s event API into a small tree of [`Node`]s that keeps
//! each scalar's text exactly as written, whether it was quoted, and its line.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, SpannedEventReceiver, Tag};

use super::flags::{check_value, find_spec, Kind, Spec, TLS, TLS_FLAGS};
use super::go::ValueError;
use super::Values;

/// What a config file sets.
#[derive(Debug, Default)]
pub(super) struct FileValues {
    pub(super) values: Values,
    /// The file key that set a flag's value, where it is not the flag's own name (the keys
    /// of the TLS sections), so that warnings name what the user wrote.
    pub(super) labels: BTreeMap<&'static str, String>,
}

/// Why a config file was refused. `Display` follows "config file PATH: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FileError {
    /// Not YAML: the parser's message and where it stopped.
    Syntax {
        line: usize,
        column: usize,
        info: String,
    },
    /// Well-formed YAML of a shape etcd's config cannot take (`key` is empty at the top).
    Shape {
        line: usize,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A mapping key that is not a string.
    Key { line: usize },
    /// An alias to a node that contains the alias.
    Alias { line: usize },
    /// More nodes than any config file needs: aliases that expand without bound.
    TooLarge { nodes_max: usize },
    /// A value the flag's Go type refuses.
    Value {
        key: String,
        value: String,
        error: ValueError,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Syntax { line, column, info } => {
                write!(f, "line {line} column {column}: not valid YAML: {info}")
            }
            FileError::Shape {
                line,
                key,
                expected,
                found,
            } if key.is_empty() => {
                write!(
                    f,
                    "line {line}: expected {expected} at the top, found {found}"
                )
            }
            FileError::Shape {
                line,
                key,
                expected,
                found,
            } => write!(f, "line {line}: {key}: expected {expected}, found {found}"),
            FileError::Key { line } => write!(f, "line {line}: a key must be a string"),
            FileError::Alias { line } => {
                write!(
                    f,
                    "line {line}: an alias may not refer to a node containing it"
                )
            }
            FileError::TooLarge { nodes_max } => {
                write!(
                    f,
                    "more than {nodes_max} YAML nodes once aliases are expanded"
                )
            }
            FileError::Value { key, value, error } => {
                write!(f, "invalid value {value:?} for {key}: {error}")
            }
        }
    }
}

/// etcd's two TLS sections, with the flag each of their keys sets (etcd's `securityConfig`).
const CLIENT_TLS_SECTION: &str = "client-transport-security";
const PEER_TLS_SECTION: &str = "peer-transport-security";

/// `client-transport-security` key → flag. `allowed-cn` has no flag: etcd sets it only
/// from a file.
const CLIENT_TLS_KEYS: &[(&str, Option<&str>)] = &[
    ("cert-file", Some("cert-file")),
    ("key-file", Some("key-file")),
    ("client-cert-file", Some("client-cert-file")),
    ("client-key-file", Some("client-key-file")),
    ("client-cert-auth", Some("client-cert-auth")),
    ("trusted-ca-file", Some("trusted-ca-file")),
    ("auto-tls", Some("auto-tls")),
    ("allowed-cn", None),
    ("allowed-hostname", Some("client-cert-allowed-hostname")),
];

/// `peer-transport-security` key → flag.
const PEER_TLS_KEYS: &[(&str, Option<&str>)] = &[
    ("cert-file", Some("peer-cert-file")),
    ("key-file", Some("peer-key-file")),
    ("client-cert-file", Some("peer-client-cert-file")),
    ("client-key-file", Some("peer-client-key-file")),
    ("client-cert-auth", Some("peer-client-cert-auth")),
    ("trusted-ca-file", Some("peer-trusted-ca-file")),
    ("auto-tls", Some("peer-auto-tls")),
    ("allowed-cn", Some("peer-cert-allowed-cn")),
    ("allowed-hostname", Some("peer-cert-allowed-hostname")),
];

/// Reads a config file's text; `path` only names it in warnings.
pub(super) fn read(
    path: &str,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<FileValues, FileError> {
    let mut out = FileValues::default();
    let Some(root) = parse_tree(text)? else {
        return Ok(out);
    };
    let entries = match root.value {
        NodeValue::Null => return Ok(out),
        NodeValue::Map(entries) => entries,
        other => {
            return Err(FileError::Shape {
                line: root.line,
                key: String::new(),
                expected: "a mapping of etcd's config keys",
                found: other.name(),
            })
        }
    };
    for (key, value) in entries {
        let key = key_text(key)?;
        let section = match key.as_str() {
            CLIENT_TLS_SECTION => Some(CLIENT_TLS_KEYS),
            PEER_TLS_SECTION => Some(PEER_TLS_KEYS),
            _ => None,
        };
        if let Some(section) = section {
            read_tls_section(path, &key, section, value, &mut out, warnings)?;
            continue;
        }
        match find_spec(&key).filter(|spec| !is_flag_only(spec)) {
            Some(spec) => set(&mut out, spec, &key, value)?,
            None => warnings.push(unknown_key(path, &key)),
        }
    }
    Ok(out)
}

/// Flags etcd's config file has no top-level key for: the TLS files and switches (set in
/// the transport-security sections), and the flags about the command line itself.
fn is_flag_only(spec: &Spec) -> bool {
    let tls_in_sections = TLS_FLAGS.contains(&spec.name);
    tls_in_sections || spec.kind == Kind::Ignored || matches!(spec.name, "config-file" | "version")
}

fn unknown_key(path: &str, key: &str) -> String {
    format!("config file {path}: unknown key {key}; ignored")
}

fn read_tls_section(
    path: &str,
    section: &str,
    keys: &[(&str, Option<&'static str>)],
    node: Node,
    out: &mut FileValues,
    warnings: &mut Vec<String>,
) -> Result<(), FileError> {
    let entries = match node.value {
        NodeValue::Null => return Ok(()),
        NodeValue::Map(entries) => entries,
        other => {
            return Err(FileError::Shape {
                line: node.line,
                key: section.to_string(),
                expected: "a mapping of TLS settings",
                found: other.name(),
            })
        }
    };
    for (key, value) in entries {
        let key = key_text(key)?;
        let label = format!("{section}.{key}");
        match keys.iter().find(|(name, _)| *name == key) {
            Some((_, Some(flag))) => {
                let spec = find_spec(flag).expect("every TLS section key names a flag in SPECS");
                set(out, spec, &label, value)?;
            }
            // No flag sets it, so no flag can warn about it either.
            Some((_, None)) => {
                if list_text(&label, value)?.is_some_and(|text| !text.is_empty()) {
                    warnings.push(format!("{label}: {TLS}; ignored"));
                }
            }
            None => warnings.push(unknown_key(path, &label)),
        }
    }
    Ok(())
}

/// Sets `spec`'s value from the file key `key`.
fn set(out: &mut FileValues, spec: &'static Spec, key: &str, node: Node) -> Result<(), FileError> {
    let Some(text) = flag_text(spec, key, node)? else {
        return Ok(());
    };
    if let Err(error) = check_value(spec.kind, &text) {
        return Err(FileError::Value {
            key: key.to_string(),
            value: text,
            error,
        });
    }
    out.values.insert(spec.name, text);
    if key == spec.name {
        out.labels.remove(spec.name);
    } else {
        out.labels.insert(spec.name, key.to_string());
    }
    Ok(())
}

/// A YAML value as the text the flag would take; `None` keeps the default.
fn flag_text(spec: &Spec, key: &str, node: Node) -> Result<Option<String>, FileError> {
    let text = match node.value {
        NodeValue::Scalar { text, plain } => scalar_flag_text(spec.kind, text, plain),
        NodeValue::Seq(_) if matches!(spec.kind, Kind::List | Kind::Urls) => {
            match list_text(key, node)? {
                Some(text) => text,
                None => return Ok(None),
            }
        }
        NodeValue::Null => return Ok(None),
        other => {
            return Err(FileError::Shape {
                line: node.line,
                key: key.to_string(),
                expected: match spec.kind {
                    Kind::List | Kind::Urls => "a value or a list",
                    _ => "a single value",
                },
                found: other.name(),
            })
        }
    };
    let keeps_default = text.is_empty()
        && (matches!(spec.kind, Kind::Urls | Kind::Choice(_))
            || matches!(spec.name, "cors" | "host-whitelist"));
    Ok((!keeps_default).then_some(text))
}

fn scalar_flag_text(kind: Kind, text: String, plain: bool) -> String {
    match kind {
        Kind::Bool if plain => match yaml_11_bool(&text) {
            Some(value) => value.to_string(),
            None => text,
        },
        Kind::Duration if plain && is_integer(&text) => format!("{text}ns"),
        _ => text,
    }
}

/// go-yaml v2 (YAML 1.1) reads these plain scalars as booleans.
fn yaml_11_bool(text: &str) -> Option<bool> {
    match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A scalar, or a list of scalars joined with commas (how the flag takes a list).
fn list_text(key: &str, node: Node) -> Result<Option<String>, FileError> {
    match node.value {
        NodeValue::Null => Ok(None),
        NodeValue::Scalar { text, .. } => Ok(Some(text)),
        NodeValue::Seq(items) => {
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                match item.value {
                    NodeValue::Scalar { text, .. } => texts.push(text),
                    NodeValue::Null => {}
                    other => {
                        return Err(FileError::Shape {
                            line: item.line,
                            key: key.to_string(),
                            expected: "a list of values",
                            found: other.name(),
                        })
                    }
                }
            }
            Ok(Some(texts.join(",")))
        }
        other => Err(FileError::Shape {
            line: node.line,
            key: key.to_string(),
            expected: "a value or a list",
            found: other.name(),
        }),
    }
}

fn key_text(key: Node) -> Result<String, FileError> {
    match key.value {
        NodeValue::Scalar { text, .. } => Ok(text),
        _ => Err(FileError::Key { line: key.line }),
    }
}

// ---------------------------------------------------------------------------
// YAML text → a tree of nodes.

/// A YAML node and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    line: usize,
    value: NodeValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeValue {
    Null,
    /// `plain`: neither quoted nor tagged, so YAML 1.1 may read it as a boolean or number.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl NodeValue {
    fn name(&self) -> &'static str {
        match self {
            NodeValue::Null => "null",
            NodeValue::Scalar { .. } => "a value",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// Nodes in this subtree, itself included.
    fn count(&self) -> usize {
        1 + match &self.value {
            NodeValue::Null | NodeValue::Scalar { .. } => 0,
            NodeValue::Seq(items) => items.iter().map(Node::count).sum(),
            NodeValue::Map(entries) => entries.iter().map(|(k, v)| k.count() + v.count()).sum(),
        }
    }
}

/// An etcd config has about a hundred keys; this many nodes can only come from aliases
/// that nest (a "billion laughs" file), which would otherwise exhaust memory.
const NODES_MAX: usize = 100_000;

/// The first YAML document of `text` as a tree; `None` when there is no document.
fn parse_tree(text: &str) -> Result<Option<Node>, FileError> {
    let mut builder = TreeBuilder::default();
    // Only the first document, as go-yaml's Unmarshal.
    let loaded = Parser::new_from_str(text).load(&mut builder, false);
    if let Some(error) = builder.error {
        return Err(error);
    }
    loaded.map_err(|error: ScanError| FileError::Syntax {
        line: error.marker().line(),
        column: error.marker().col() + 1,
        info: error.info().to_string(),
    })?;
    Ok(builder.root)
}

/// A sequence or mapping whose end the parser has not reached yet.
#[derive(Debug)]
struct OpenNode {
    node: Node,
    anchor_id: usize,
    /// For a mapping: the key read, waiting for its value.
    key: Option<Node>,
}

/// Builds the tree from the parser's events. The first error is kept and later events
/// are ignored (the receiver cannot stop the parser).
#[derive(Debug, Default)]
struct TreeBuilder {
    open: Vec<OpenNode>,
    anchors: BTreeMap<usize, Node>,
    root: Option<Node>,
    node_count: usize,
    error: Option<FileError>,
}

impl<'input> SpannedEventReceiver<'input> for TreeBuilder {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        if self.error.is_some() {
            return;
        }
        let line = span.start.line();
        let result = match event {
            Event::Scalar(text, style, anchor_id, tag) => self
                .count(1)
                .and_then(|()| self.finish(scalar_node(text, style, tag, line), anchor_id)),
            Event::SequenceStart(anchor_id, _) => {
                self.start(NodeValue::Seq(Vec::new()), anchor_id, line)
            }
            Event::MappingStart(anchor_id, _) => {
                self.start(NodeValue::Map(Vec::new()), anchor_id, line)
            }
            Event::SequenceEnd | Event::MappingEnd => match self.open.pop() {
                Some(open) => self.finish(open.node, open.anchor_id),
                None => Ok(()),
            },
            // A copy counts in full: nested aliases grow exponentially.
            Event::Alias(anchor_id) => match self.anchors.get(&anchor_id).cloned() {
                Some(node) => self.count(node.count()).and_then(|()| self.finish(node, 0)),
                None => Err(FileError::Alias { line }),
            },
            _ => Ok(()),
        };
        if let Err(error) = result {
            self.error = Some(error);
        }
    }
}

impl TreeBuilder {
    fn start(&mut self, value: NodeValue, anchor_id: usize, line: usize) -> Result<(), FileError> {
        self.count(1)?;
        self.open.push(OpenNode {
            node: Node { line, value },
            anchor_id,
            key: None,
        });
        Ok(())
    }

    /// Places a complete (and counted) node in its parent, or makes it the root.
    fn finish(&mut self, node: Node, anchor_id: usize) -> Result<(), FileError> {
        if anchor_id != 0 {
            self.anchors.insert(anchor_id, node.clone());
        }
        let Some(parent) = self.open.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match (&mut parent.node.value, parent.key.take()) {
            (NodeValue::Seq(items), _) => items.push(node),
            (NodeValue::Map(entries), Some(key)) => entries.push((key, node)),
            (NodeValue::Map(_), None) => parent.key = Some(node),
            _ => unreachable!("only sequences and mappings are open"),
        }
        Ok(())
    }

    fn count(&mut self, nodes: usize) -> Result<(), FileError> {
        self.node_count = self.node_count.saturating_add(nodes);
        if self.node_count > NODES_MAX {
            return Err(FileError::TooLarge {
                nodes_max: NODES_MAX,
            });
        }
        Ok(())
    }
}

fn scalar_node(
    text: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<Cow<'_, Tag>>,
    line: usize,
) -> Node {
    let plain = style == ScalarStyle::Plain && tag.is_none();
    let value = if plain && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
        NodeValue::Null
    } else {
        NodeValue::Scalar {
            text: text.into_owned(),
            plain,
        }
    };
    Node { line, value }
}
