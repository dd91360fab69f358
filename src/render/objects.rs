//! Rendered documents → objects: required fields, `List` flattening, namespace defaulting,
//! ownership labels, the tenant's boundaries, and the sha256 of each object's canonical form.

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::scope::{Scope, Scopes};
use super::{LABEL_APP, LABEL_TENANT};
use crate::fleet::{Owner, Problem, Unit};

/// One YAML document as a renderer produced it, with where it came from.
#[derive(Clone, Debug)]
pub(super) struct Document {
    pub body: serde_json::Value,
    /// The file, relative to the repository root, or `<path> (kustomize output)`; shared by the
    /// documents of one file.
    pub file: Arc<str>,
    pub line: u32,
}

/// An object ready for the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub key: ObjectKey,
    pub api_version: String,
    pub scope: Scope,
    /// The full object, labels and namespace included, kept as compact JSON text until it is
    /// sent.
    pub body: Body,
    /// Hex sha256 of `body` serialized as compact JSON with sorted keys.
    pub hash: String,
    pub file: Arc<str>,
    pub line: u32,
    /// Why the tenant may not apply it (outside its namespaces or cluster-scoped kinds). A
    /// refused object is reported and never sent; the unit's other objects still are.
    pub refused: Option<String>,
    /// The Helm hook it is, if its annotations make it one a sync runs.
    pub hook: Option<super::hook::Hook>,
}

/// A rendered object's JSON as text: a quarter of the memory of its tree, which only the few
/// objects being sent need (a pass holds every unit's objects from render to sync).
#[derive(Clone, Debug, PartialEq)]
pub struct Body(Box<str>);

impl Body {
    pub fn of(value: &serde_json::Value) -> Body {
        Body(value.to_string().into_boxed_str())
    }

    /// The object as a JSON tree again. The text is serde_json's own output of a value no
    /// deeper than the YAML parser's depth budget (64), well inside serde_json's (128).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).expect("a rendered body is JSON serde_json wrote")
    }

    /// The JSON text.
    pub(super) fn text(&self) -> &str {
        &self.0
    }

    /// A body from text [`Body::text`] gave (a packed object's).
    pub(super) fn from_text(text: &str) -> Body {
        Body(text.into())
    }
}

impl Object {
    /// The problem a refused object is reported as: `file:line: object: why`.
    pub fn refusal(&self, unit: &crate::fleet::UnitId) -> Option<Problem> {
        self.refused.as_ref().map(|why| {
            Problem::new(
                Owner::Unit(unit.clone()),
                format!("{}:{}: {}: {why}", self.file, self.line, self.key),
            )
        })
    }
}

/// What identifies an object in a cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    /// `Deployment.apps ai/jupyter`, `ConfigMap ai/settings`, `PriorityClass.scheduling.k8s.io batch`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

/// Checks that an object's apiVersion, kind, name and namespace have the API's own syntax:
/// `version` or `group/version` (a DNS subdomain and a DNS label), a kind of letters and digits, a
/// name that is one path segment, a namespace that is a DNS label.
fn check_identity(
    api_version: &str,
    kind: &str,
    name: &str,
    namespace: &serde_json::Value,
) -> Result<(), String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let group_ok = group.is_empty() || (group.len() <= 253 && group.split('.').all(dns_label));
    if !group_ok || !dns_label(version) || !version.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "apiVersion {api_version:?} is not a version (v1) or group/version (apps/v1)"
        ));
    }
    if kind.len() > 63 || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("kind {kind:?} must be letters and digits only"));
    }
    let path_unsafe =
        |c: char| matches!(c, '/' | '%' | '?' | '#') || c.is_whitespace() || c.is_control();
    if name.len() > 253 || name == "." || name == ".." || name.chars().any(path_unsafe) {
        return Err(format!(
            "metadata.name {name:?} is not a valid name (at most 253 characters, no '/', '%', '?', '#' or spaces, not '.' or '..')"
        ));
    }
    match namespace {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::String(ns) if ns.is_empty() || dns_label(ns) => Ok(()),
        other => Err(format!(
            "metadata.namespace {other} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        )),
    }
}

/// An RFC 1123 label: 1–63 lowercase letters, digits and '-', starting and ending alphanumeric.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Turns a unit's documents into objects, or every problem found in them.
pub(super) fn finish(
    unit: &Unit,
    documents: Vec<Document>,
    secret_key: Option<&[u8; 32]>,
) -> Result<Vec<Object>, Vec<Problem>> {
    let owner = Owner::Unit(unit.id.clone());
    let mut problems = Vec::new();
    let mut fail = |d: &Document, what: &str, message: String| {
        problems.push(Problem::new(
            owner.clone(),
            format!("{}:{}: {what}{message}", d.file, d.line),
        ));
    };

    // Flatten `List`s first, so CRDs inside lists count too.
    let mut flat = Vec::with_capacity(documents.len());
    for d in documents {
        let is_list = d.body["kind"].as_str().is_some_and(|k| k.ends_with("List"))
            && d.body["items"].is_array();
        if is_list {
            let serde_json::Value::Object(mut map) = d.body else {
                unreachable!("checked above")
            };
            let Some(serde_json::Value::Array(items)) = map.remove("items") else {
                unreachable!()
            };
            flat.extend(items.into_iter().map(|body| Document {
                body,
                file: d.file.clone(),
                line: d.line,
            }));
        } else {
            flat.push(d);
        }
    }

    let mut scopes = Scopes::default();
    for d in &flat {
        if d.body["kind"] == "CustomResourceDefinition"
            && d.body["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("apiextensions.k8s.io/"))
        {
            scopes.learn_crd(&d.body);
        }
    }

    let mut objects = Vec::with_capacity(flat.len());
    for mut d in flat {
        if !d.body.is_object() {
            fail(
                &d,
                "",
                "a document must be a mapping (an object), not a scalar or a list".into(),
            );
            continue;
        }
        let api_version = d.body["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = d.body["kind"].as_str().unwrap_or_default().to_string();
        let name = d.body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let missing: Vec<&str> = [
            ("apiVersion", &api_version),
            ("kind", &kind),
            ("metadata.name", &name),
        ]
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(f, _)| *f)
        .collect();
        if !missing.is_empty() {
            let what = if kind.is_empty() {
                String::new()
            } else {
                format!("{kind} {name}: ")
            };
            fail(&d, &what, format!("missing {}", missing.join(", ")));
            continue;
        }
        // These end up in request paths (discovery is made with the agent's own identity): only
        // what the API itself accepts gets through, never a path or query of the tenant's making.
        if let Err(why) =
            check_identity(&api_version, &kind, &name, &d.body["metadata"]["namespace"])
        {
            fail(&d, &format!("{kind} {name:?}: "), why);
            continue;
        }
        let group = api_version
            .rsplit_once('/')
            .map(|(g, _)| g.to_string())
            .unwrap_or_default();
        let scope = scopes.of(&group, &kind);
        let given_ns = d.body["metadata"]["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let namespace = match (scope, given_ns) {
            (Scope::Cluster, _) => None,
            (Scope::Namespaced, None) => unit.namespace.clone(),
            // A tenant's object of a kind known only to the cluster (a CRD installed by infra) is
            // taken as namespaced and kept in the tenant's namespace; the apply engine checks its
            // real scope through discovery before anything is sent.
            (Scope::Unknown, None) if unit.limits.is_some() => unit.namespace.clone(),
            (_, given) => given,
        };
        let key = ObjectKey {
            group,
            kind,
            namespace,
            name,
        };
        let what = format!("{key}: ");

        // Outside the tenant's boundaries: refused, reported, never sent; its siblings go on.
        let mut refused = None;
        if let Some(limits) = &unit.limits {
            if scope == Scope::Cluster && !limits.allows_cluster_kind(&key.group, &key.kind) {
                refused = Some(format!(
                    "cluster-scoped kind {} is not in the tenant's limits.clusterScopedKinds; refused",
                    key.kind
                ));
            } else if let Some(ns) = &key.namespace
                && !limits.namespaces.contains(ns)
            {
                refused = Some(format!(
                    "namespace {ns} is not one of the tenant's namespaces ({}); refused",
                    limits.namespaces.join(", ")
                ));
            }
        } else if scope == Scope::Namespaced && key.namespace.is_none() {
            fail(
                &d,
                &what,
                "cluster infrastructure must name metadata.namespace".into(),
            );
            continue;
        }

        let meta = d.body["metadata"]
            .as_object_mut()
            .expect("metadata.name was found above");
        match &key.namespace {
            Some(ns) if scope != Scope::Cluster => {
                meta.insert("namespace".into(), ns.clone().into());
            }
            _ if scope == Scope::Cluster => {
                meta.remove("namespace");
            }
            _ => {}
        }
        let labels = meta
            .entry("labels")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(labels) = labels.as_object_mut() {
            if let Some(tenant) = &unit.id.tenant {
                labels.insert(LABEL_TENANT.into(), tenant.clone().into());
            }
            labels.insert(LABEL_APP.into(), unit.id.label().into());
        } else {
            fail(&d, &what, "metadata.labels must be a mapping".into());
            continue;
        }
        // A Secret's hash is keyed (HMAC with the agent's own key): the annotation on the live
        // object must not let anyone confirm a guessed value.
        let hash = match secret_key {
            Some(k) if key.group.is_empty() && key.kind == "Secret" => keyed_hash(&d.body, k),
            _ => hash(&d.body),
        };
        objects.push(Object {
            key,
            api_version,
            scope,
            body: Body::of(&d.body),
            hook: super::hook::of(&d.body),
            hash,
            file: d.file,
            line: d.line,
            refused,
        });
    }

    // The same object twice in one unit is as ambiguous as in two units.
    let mut keys: Vec<(&ObjectKey, &str, u32)> =
        objects.iter().map(|o| (&o.key, &*o.file, o.line)).collect();
    keys.sort();
    for pair in keys.windows(2) {
        if pair[0].0 == pair[1].0 {
            problems.push(Problem::new(
                owner.clone(),
                format!(
                    "{}:{}: {}: also defined at {}:{}",
                    pair[1].1, pair[1].2, pair[1].0, pair[0].1, pair[0].2
                ),
            ));
        }
    }

    if problems.is_empty() {
        // Held from render to sync with every other unit's: no spare capacity.
        objects.shrink_to_fit();
        Ok(objects)
    } else {
        Err(problems)
    }
}

/// sha256 of the canonical form: compact JSON, keys sorted (serde_json's map is a BTreeMap),
/// streamed into the hasher without an intermediate buffer.
/// Compact JSON with every object's keys sorted, whatever order the value keeps them in: the
/// same bytes for the same object however its YAML was written.
fn canonical(v: &serde_json::Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.write_all(b"{")?;
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                canonical(&map[k], out)?;
            }
            out.write_all(b"}")
        }
        serde_json::Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        scalar => serde_json::to_writer(&mut *out, scalar).map_err(std::io::Error::other),
    }
}

/// HMAC-SHA256 of `body`'s canonical form under `key`, hex.
pub(crate) fn keyed_hash(body: &serde_json::Value, key: &[u8; 32]) -> String {
    use hmac::Mac as _;
    struct Writer(hmac::Hmac<Sha256>);
    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    use hmac::KeyInit as _;
    let mut w = Writer(hmac::Hmac::<Sha256>::new_from_slice(key).expect("any key length"));
    canonical(body, &mut w).expect("hashing does not fail");
    w.0.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn hash(body: &serde_json::Value) -> String {
    struct Hasher(Sha256);
    impl std::io::Write for Hasher {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = Hasher(Sha256::new());
    canonical(body, &mut hasher).expect("hashing does not fail");
    let mut out = Vec::with_capacity(64);
    for b in hasher.0.finalize() {
        let _ = write!(out, "{b:02x}");
    }
    String::from_utf8(out).expect("hex is ASCII")
}
