//! Spanned YAML: a parsed document that remembers where each node came from, and a reader that
//! turns it into typed values while collecting *every* error with `file:line:column` and the field
//! path. The config file, the fleet files and `tenant.yaml` are all read through it, so all of
//! them report errors the same way.
//!
//! serde-saphyr parses (the same YAML stack kube uses); we only ask it for a tree of
//! [`Node`]s with positions and do the typing ourselves. A derived `Deserialize` with
//! `deny_unknown_fields` stops at the first error, and users of a config file want them all.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// The longest duration any file may give: a year.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// One YAML node and where it starts (1-based line and column).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: u32,
    pub column: u32,
}

/// The value of a [`Node`]. Mapping entries keep their file order.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// One problem found in a file: where, which field, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Dotted field path (`credentials.platform.ssh_key_file`); empty for the document itself.
    pub path: String,
    pub message: String,
}

/// Every problem found in one pass over one or more files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// Collects diagnostics for one file while a reader walks it.
#[derive(Debug)]
pub struct Report {
    file: String,
    found: Vec<Diagnostic>,
}

/// A mapping being read field by field; [`Fields::finish`] reports the fields nobody asked for.
pub struct Fields<'a> {
    entries: &'a [(Node, Node)],
    taken: Vec<bool>,
    path: String,
}

// === impl Node ===

impl Node {
    /// Parses one YAML document. An empty document (nothing or only comments) is an error: every
    /// file flotilla reads must say something.
    pub fn parse(text: &str, file: &str) -> Result<Node, Diagnostics> {
        match serde_saphyr::from_str_with_options::<Node>(text, options()) {
            Ok(node) if node.value == Value::Null => Err(Diagnostics::one(Diagnostic {
                file: file.to_string(),
                line: 1,
                column: 1,
                path: String::new(),
                message: "the file is empty; expected a mapping".to_string(),
            })),
            Ok(node) => Ok(node),
            Err(error) => Err(Diagnostics::one(syntax_error(&error, file))),
        }
    }

    /// The value of `key` when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// What a user would call this node's type, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node as JSON (positions dropped): values, rendered objects.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A scalar as text (a map key written as `80:` is the string "80"); `None` for collections.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Null => Some(String::new()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// Parses a stream of YAML documents, dropping empty ones (`---` with nothing after it).
    pub fn parse_stream(text: &str, file: &str) -> Result<Vec<Node>, Diagnostic> {
        serde_saphyr::from_multiple_with_options::<Node>(text, options())
            .map(|docs| docs.into_iter().filter(|d| !d.is_null()).collect())
            .map_err(|error| syntax_error(&error, file))
    }

    /// Parses a stream of manifests straight into JSON values, each with the position of its
    /// document; empty documents are dropped. Faster than [`Node::parse_stream`] (positions are
    /// kept per document only), which is what rendering needs.
    pub fn parse_documents(
        text: &str,
        file: &str,
    ) -> Result<Vec<(u32, serde_json::Value)>, Diagnostic> {
        serde_saphyr::from_multiple_with_options::<Spanned<serde_json::Value>>(text, options())
            .map(|docs| {
                docs.into_iter()
                    .filter(|d| !d.value.is_null())
                    .map(|d| (d.referenced.line() as u32, d.value))
                    .collect()
            })
            .map_err(|error| syntax_error(&error, file))
    }

    /// A scalar as text for a variable (`vars`), or a "wrong type" diagnostic.
    pub fn scalar(&self, path: &str, report: &mut Report) -> Option<String> {
        match &self.value {
            Value::Null | Value::Seq(_) | Value::Map(_) => {
                report.wrong_type(self, path, "a string, number or boolean")
            }
            _ => self.scalar_text(),
        }
    }

    pub fn is_null(&self) -> bool {
        self.value == Value::Null
    }

    /// The node as a string, or a "wrong type" diagnostic.
    pub fn str(&self, path: &str, report: &mut Report) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => report.wrong_type(self, path, "a string"),
        }
    }

    pub fn bool(&self, path: &str, report: &mut Report) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(b),
            _ => report.wrong_type(self, path, "a boolean (true or false)"),
        }
    }

    pub fn u32(&self, path: &str, report: &mut Report) -> Option<u32> {
        match self.value {
            Value::Int(i) => match u32::try_from(i) {
                Ok(n) => Some(n),
                Err(_) => {
                    report.error(
                        self,
                        path,
                        format!("{i} is out of range (0 to {})", u32::MAX),
                    );
                    None
                }
            },
            _ => report.wrong_type(self, path, "a whole number"),
        }
    }

    /// A humantime duration such as `30s`, `5m` or `1h 30m`, at most [`MAX_DURATION`] (a
    /// duration from a file never overflows a deadline).
    pub fn duration(&self, path: &str, report: &mut Report) -> Option<std::time::Duration> {
        self.duration_at_most(path, MAX_DURATION, report)
    }

    /// A duration no longer than `max`; a longer one is an error naming the bound.
    pub fn duration_at_most(
        &self,
        path: &str,
        max: std::time::Duration,
        report: &mut Report,
    ) -> Option<std::time::Duration> {
        let text = self.str(path, report)?;
        match humantime::parse_duration(text) {
            Ok(d) if d > max => {
                report.error(
                    self,
                    path,
                    format!(
                        "{text:?} is too long; the most is {}",
                        humantime::format_duration(max)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
            Err(error) => {
                report.error(
                    self,
                    path,
                    format!("{text:?} is not a duration ({error}); write it like 30s, 5m or 1h"),
                );
                None
            }
        }
    }

    /// A list of strings.
    pub fn strings(&self, path: &str, report: &mut Report) -> Option<Vec<String>> {
        let Value::Seq(items) = &self.value else {
            return report.wrong_type(self, path, "a list of strings");
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(item.str(&format!("{path}[{i}]"), report)?.to_string());
        }
        Some(out)
    }

    /// A mapping of string keys to scalars, as text (labels, vars).
    pub fn string_map(
        &self,
        path: &str,
        report: &mut Report,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let Value::Map(entries) = &self.value else {
            return report.wrong_type(self, path, "a mapping of strings");
        };
        let mut out = std::collections::BTreeMap::new();
        for (key, value) in entries {
            let key = key.str(path, report)?;
            let value = value.scalar(&join(path, key), report)?;
            out.insert(key.to_string(), value);
        }
        Some(out)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Node {
            value: spanned.value,
            line: spanned.referenced.line() as u32,
            column: spanned.referenced.column() as u32,
        })
    }
}

// === impl Value ===

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Value, E> {
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| E::custom("binary data is not supported"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((key, value)) = map.next_entry::<Node, Node>()? {
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

// === impl Diagnostic ===

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

// === impl Diagnostics ===

impl Diagnostics {
    pub fn one(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    /// One diagnostic per line, in file order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            d.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

// === impl Report ===

impl Report {
    pub fn new(file: impl Into<String>) -> Self {
        Report {
            file: file.into(),
            found: Vec::new(),
        }
    }

    /// Records a problem at `node`.
    pub fn error(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.found.push(Diagnostic {
            file: self.file.clone(),
            line: node.line,
            column: node.column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Records "expected X, found Y" and returns `None`, so readers can `return` it.
    pub fn wrong_type<T>(&mut self, node: &Node, path: &str, expected: &str) -> Option<T> {
        self.error(
            node,
            path,
            format!("expected {expected}, found {}", node.kind()),
        );
        None
    }

    /// The diagnostics, sorted by position so they read top to bottom.
    pub fn finish(mut self) -> Diagnostics {
        self.found.sort_by_key(|d| (d.line, d.column));
        Diagnostics(self.found)
    }

    pub fn is_clean(&self) -> bool {
        self.found.is_empty()
    }
}

// === impl Fields ===

impl<'a> Fields<'a> {
    /// Starts reading `node` as a mapping. `null` reads as an empty mapping (`fleet:` with
    /// nothing under it), so the missing fields are reported rather than a type error.
    pub fn new(node: &'a Node, path: &str, report: &mut Report) -> Option<Self> {
        let entries: &[(Node, Node)] = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => return report.wrong_type(node, path, "a mapping"),
        };
        Some(Fields {
            entries,
            taken: vec![false; entries.len()],
            path: path.to_string(),
        })
    }

    /// The path of a field of this mapping.
    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`, if present and not null; marks it as known.
    pub fn get(&mut self, key: &str) -> Option<&'a Node> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.value == Value::Str(key.to_string()))?;
        self.taken[i] = true;
        let value = &self.entries[i].1;
        (!value.is_null()).then_some(value)
    }

    /// The value of a required `key`; its absence is reported at `at` (the mapping itself).
    pub fn require(&mut self, key: &str, at: &Node, report: &mut Report) -> Option<&'a Node> {
        let value = self.get(key);
        if value.is_none() {
            report.error(at, &self.path(key), "required field is missing");
        }
        value
    }

    /// The keys present in the mapping, in order (for "exactly one of" checks).
    pub fn present(&self, keys: &[&'static str]) -> Vec<&'static str> {
        keys.iter()
            .copied()
            .filter(|key| {
                self.entries
                    .iter()
                    .any(|(k, v)| k.value == Value::Str(key.to_string()) && !v.is_null())
            })
            .collect()
    }

    /// Reports every field that no reader asked for, naming the ones that are allowed.
    pub fn finish(self, allowed: &[&str], report: &mut Report) {
        for ((key, _), taken) in self.entries.iter().zip(&self.taken) {
            if *taken {
                continue;
            }
            let Value::Str(name) = &key.value else {
                report.wrong_type::<()>(key, &self.path, "a field name");
                continue;
            };
            let hint = match closest(name, allowed) {
                Some(near) => format!("did you mean {near:?}? "),
                None => String::new(),
            };
            report.error(
                key,
                &join(&self.path, name),
                format!("unknown field; {hint}allowed here: {}", allowed.join(", ")),
            );
        }
    }
}

/// Parser options for every file flotilla reads: YAML 1.2 booleans (`on`/`yes` stay strings),
/// duplicate keys refused, plain one-line messages. The default budget stays on: it bounds
/// alias expansion, so a tenant's file cannot stall the agent.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    }
}

/// A parser error as one diagnostic at its position.
fn syntax_error(error: &serde_saphyr::Error, file: &str) -> Diagnostic {
    let (line, column) = error
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((1, 1));
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        path: String::new(),
        message: format!(
            "not valid YAML: {}",
            strip_position(&error.without_snippet().to_string())
        ),
    }
}

/// Drops the parser's own trailing "at line L, column C": the diagnostic already says where.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i)
            if message[i + 9..]
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == ' ' || c.is_ascii_alphabetic()) =>
        {
            &message[..i]
        }
        _ => message,
    }
}

/// Joins a field path and a key: `join("fleet", "ref")` is `fleet.ref`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The allowed name closest to a misspelt one, if it is close enough to be a likely typo.
fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

#[cfg(test)]
#[path = "yaml_tests.rs"]
mod tests;
