//! Field ownership for server-side apply, following the documented behaviour of the API server's
//! field manager (structured-merge-diff):
//!
//! - a field set is a set of paths; `f:<name>` steps into a map field, `k:{..}` into the item of an
//!   associative list with those key fields, `v:<json>` into an item of a set-list; a path is a
//!   member when the manager owns that field (a leaf, an atomic list, or a list item itself);
//! - an apply owns exactly the fields in its configuration: fields the manager applied before and
//!   no longer applies are removed from the object unless another manager owns them too;
//! - applying a field another manager owns with a different value is a conflict, unless forced,
//!   which moves the field to the applier;
//! - an update (create, PUT, merge patch) takes ownership of every field it changed.
//!
//! Lists are atomic (replaced and owned as a whole) except the well-known associative lists of
//! the built-in kinds, recognised by field name and keys (containers by `name`, ports by
//! `containerPort`+`protocol`, volumeMounts by `mountPath`, ...), and `metadata.finalizers`, a set.
//! A CRD's lists are atomic, as on a real server without `x-kubernetes-list-type` markers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

pub type Path = Vec<String>;
pub type Fields = BTreeSet<Path>;

/// Metadata the field manager never tracks.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
];

/// Which part of an object a request writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Part {
    /// The main endpoint; `status` is excluded when `status_separate` (a `/status` subresource).
    Main { status_separate: bool },
    /// The `/status` subresource: only `status`.
    Status,
}

/// The field set of `obj` (a whole object) restricted to `part`.
pub fn fields_of(obj: &Value, part: Part) -> Fields {
    let mut out = Fields::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        let keep = match (part, k.as_str()) {
            (_, "apiVersion" | "kind") => false,
            (Part::Status, name) => name == "status",
            (Part::Main { status_separate }, "status") => !status_separate,
            _ => true,
        };
        if !keep {
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                for (mk, mv) in meta {
                    if SYSTEM_METADATA.contains(&mk.as_str()) {
                        continue;
                    }
                    path.push(format!("f:{mk}"));
                    collect(mv, Some(mk), &mut path, &mut out);
                    path.pop();
                }
            }
            continue;
        }
        collect(v, Some(k), &mut path, &mut out);
    }
    out
}

fn collect(value: &Value, field: Option<&str>, path: &mut Path, out: &mut Fields) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                collect(v, Some(k), path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_kind(field, items) {
            ListKind::Atomic => {
                out.insert(path.clone());
            }
            ListKind::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                for item in items {
                    path.push(key_element(item, keys));
                    out.insert(path.clone());
                    if let Some(map) = item.as_object() {
                        for (k, v) in map {
                            path.push(format!("f:{k}"));
                            collect(v, Some(k), path, out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

#[derive(Clone, Copy)]
enum ListKind {
    Atomic,
    Set,
    Map(&'static [&'static str]),
}

/// How a list field merges: by its name and, for `ports`, by the keys its items carry.
fn list_kind(field: Option<&str>, items: &[Value]) -> ListKind {
    let keys: &'static [&'static str] = match field {
        Some("finalizers") if items.iter().all(Value::is_string) => return ListKind::Set,
        Some(
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "env"
            | "volumes"
            | "imagePullSecrets",
        ) => &["name"],
        Some("volumeMounts") => &["mountPath"],
        Some("conditions") => &["type"],
        Some("ownerReferences") => &["uid"],
        Some("ports") if items.iter().all(|i| i.get("containerPort").is_some()) => {
            &["containerPort", "protocol"]
        }
        Some("ports") if items.iter().all(|i| i.get("port").is_some()) => &["port", "protocol"],
        _ => return ListKind::Atomic,
    };
    let keyed = items.iter().all(|i| {
        i.as_object()
            .is_some_and(|m| keys.iter().all(|k| *k == "protocol" || m.contains_key(*k)))
    });
    let mut seen = BTreeSet::new();
    let unique = items.iter().all(|i| seen.insert(key_element(i, keys)));
    if keyed && unique {
        ListKind::Map(keys)
    } else {
        ListKind::Atomic
    }
}

/// `k:{"name":"app"}`; a missing `protocol` is the API's default, TCP.
fn key_element(item: &Value, keys: &[&str]) -> String {
    let mut key = Map::new();
    for k in keys {
        let v = match item.get(*k) {
            Some(v) => v.clone(),
            None if *k == "protocol" => json!("TCP"),
            None => Value::Null,
        };
        key.insert((*k).to_string(), v);
    }
    format!("k:{}", Value::Object(key))
}

/// The value at `path` in `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    let mut field: Option<&str> = None;
    for step in path {
        cur = step_into(cur, field, step)?;
        field = step.strip_prefix("f:");
    }
    Some(cur)
}

fn step_into<'a>(cur: &'a Value, field: Option<&str>, step: &str) -> Option<&'a Value> {
    if let Some(name) = step.strip_prefix("f:") {
        return cur.as_object()?.get(name);
    }
    let items = cur.as_array()?;
    if let Some(v) = step.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).ok()?;
        return items.iter().find(|i| **i == v);
    }
    if step.starts_with("k:") {
        let ListKind::Map(keys) = list_kind(field, items) else {
            return None;
        };
        return items.iter().find(|i| key_element(i, keys) == step);
    }
    None
}

/// Removes the field at `path`, then any map or list left empty by the removal.
pub fn remove(obj: &mut Value, path: &[String]) {
    fn go(cur: &mut Value, field: Option<&str>, path: &[String]) -> bool {
        let Some((step, rest)) = path.split_first() else {
            return false;
        };

        if rest.is_empty() {
            remove_step(cur, field, step)
        } else {
            let next_field = step.strip_prefix("f:");
            match step_into_mut(cur, field, step) {
                Some(child) => {
                    let removed = go(child, next_field, rest);
                    let empty = match child {
                        Value::Object(m) => m.is_empty(),
                        Value::Array(a) => a.is_empty(),
                        _ => false,
                    };
                    if removed && empty {
                        remove_step(cur, field, step);
                    }
                    removed
                }
                None => false,
            }
        }
    }
    go(obj, None, path);
}

fn step_into_mut<'a>(cur: &'a mut Value, field: Option<&str>, step: &str) -> Option<&'a mut Value> {
    if let Some(name) = step.strip_prefix("f:") {
        return cur.as_object_mut()?.get_mut(name);
    }
    let index = index_of(cur, field, step)?;
    cur.as_array_mut()?.get_mut(index)
}

fn index_of(cur: &Value, field: Option<&str>, step: &str) -> Option<usize> {
    let items = cur.as_array()?;
    if let Some(v) = step.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).ok()?;
        return items.iter().position(|i| *i == v);
    }
    let ListKind::Map(keys) = list_kind(field, items) else {
        return None;
    };
    items.iter().position(|i| key_element(i, keys) == step)
}

fn remove_step(cur: &mut Value, field: Option<&str>, step: &str) -> bool {
    if let Some(name) = step.strip_prefix("f:") {
        return cur.as_object_mut().and_then(|m| m.remove(name)).is_some();
    }
    match index_of(cur, field, step) {
        Some(i) => {
            cur.as_array_mut().expect("index_of found a list").remove(i);
            true
        }
        None => false,
    }
}

/// Merges an applied configuration into the live object: maps field by field, associative lists
/// item by item, everything else replaced.
pub fn merge(live: &Value, applied: &Value, field: Option<&str>) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, v) in a {
                let merged = match l.get(k) {
                    Some(lv) => merge(lv, v, Some(k)),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => {
            let (ListKind::Map(keys), ListKind::Map(_)) =
                (list_kind(field, l), list_kind(field, a))
            else {
                return applied.clone();
            };
            let mut out: Vec<Value> = l.clone();
            for item in a {
                let key = key_element(item, keys);
                match out.iter().position(|i| key_element(i, keys) == key) {
                    Some(i) => out[i] = merge(&out[i], item, None),
                    None => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        _ => applied.clone(),
    }
}

/// RFC 7386 JSON merge patch; with `strategic`, associative lists merge by key as a strategic
/// merge patch does (enough for `kubectl edit`-style changes).
pub fn merge_patch(target: &Value, patch: &Value, strategic: bool, field: Option<&str>) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if k.starts_with("$") && strategic {
                    continue;
                }
                if v.is_null() {
                    out.remove(k);
                } else {
                    let base = out.get(k).cloned().unwrap_or(Value::Null);
                    out.insert(k.clone(), merge_patch(&base, v, strategic, Some(k)));
                }
            }
            Value::Object(out)
        }
        Value::Array(_) if strategic => merge(target, patch, field),
        _ => patch.clone(),
    }
}

/// `.spec.template.spec.containers[name="app"].image`, as conflicts are reported.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(name) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = step.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = step.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub time: String,
    pub fields: Fields,
}

impl Entry {
    pub fn same_owner(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or_default().into(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// Writes `entries` (dropping empty ones) into `obj`'s metadata.
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("objects have metadata");
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

#[derive(Default)]
struct Node {
    own: bool,
    children: BTreeMap<String, Node>,
}

pub fn to_fields_v1(fields: &Fields) -> Value {
    let mut root = Node::default();
    for path in fields {
        let mut node = &mut root;
        for step in path {
            node = node.children.entry(step.clone()).or_default();
        }
        node.own = true;
    }
    fn ser(node: &Node) -> Value {
        let mut map = Map::new();
        if node.own && !node.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (k, child) in &node.children {
            map.insert(k.clone(), ser(child));
        }
        Value::Object(map)
    }
    ser(&root)
}

pub fn from_fields_v1(v: &Value) -> Fields {
    fn go(v: &Value, path: &mut Path, out: &mut Fields) {
        let Some(map) = v.as_object() else {
            return;
        };
        if (map.is_empty() || map.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in map {
            if k != "." {
                path.push(k.clone());
                go(child, path, out);
                path.pop();
            }
        }
    }
    let mut out = Fields::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// True when `path`'s value is a leaf for conflict purposes (not a map with fields, whose leaves
/// are compared one by one).
fn is_leaf(obj: &Value, path: &[String]) -> bool {
    !matches!(value_at(obj, path), Some(Value::Object(m)) if !m.is_empty())
}

/// The paths of `fields` whose value differs between `old` and `new` (absent counts as different).
pub fn changed(fields: &Fields, old: &Value, new: &Value) -> Fields {
    fields
        .iter()
        .filter(|p| match (value_at(old, p), value_at(new, p)) {
            (Some(a), Some(b)) => is_leaf(new, p) && a != b,
            _ => true,
        })
        .cloned()
        .collect()
}

/// The conflicts of applying `applied` (fields `applied_fields`) over `live`: for each other
/// entry, the fields it owns that the apply would set to another value.
pub fn conflicts(
    entries: &[Entry],
    me: (&str, &str),
    live: &Value,
    applied: &Value,
    applied_fields: &Fields,
) -> Vec<(usize, Vec<Path>)> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.same_owner(me.0, "Apply", me.1) {
            continue;
        }
        let clash: Vec<Path> = e
            .fields
            .intersection(applied_fields)
            .filter(|p| is_leaf(applied, p))
            .filter(|p| matches!(value_at(live, p), Some(v) if Some(v) != value_at(applied, p)))
            .cloned()
            .collect();
        if !clash.is_empty() {
            out.push((i, clash));
        }
    }
    out
}

/// Drops from every entry the paths that no longer exist in `obj`.
pub fn forget_missing(entries: &mut [Entry], obj: &Value) {
    for e in entries {
        e.fields.retain(|p| value_at(obj, p).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_through_fields_v1() {
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}
            ]}}},
        });
        let fields = fields_of(
            &obj,
            Part::Main {
                status_separate: true,
            },
        );
        let v1 = to_fields_v1(&fields);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["."],
            json!({})
        );
        assert!(v1["f:metadata"].get("f:name").is_none());
        assert_eq!(from_fields_v1(&v1), fields);
        let port = fields
            .iter()
            .find(|p| p.last().unwrap().contains("containerPort"))
            .unwrap();
        assert_eq!(value_at(&obj, port), Some(&json!({"containerPort": 80})));
    }

    #[test]
    fn removing_the_last_label_removes_the_empty_map() {
        let mut obj = json!({"metadata": {"name": "x", "labels": {"a": "1"}}});
        remove(
            &mut obj,
            &["f:metadata".into(), "f:labels".into(), "f:a".into()],
        );
        assert_eq!(obj, json!({"metadata": {"name": "x"}}));
    }
}
