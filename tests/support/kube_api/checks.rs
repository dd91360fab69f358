//! Validation the real server does before storing an object: names, labels, the typed fields a
//! wrong type would break (ConfigMap and Secret data), and the fields that are immutable once
//! set. Each failure is a `(field, message)` for a 422.

use base64::Engine as _;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::resources::Resource;

type Causes = Vec<(String, String)>;

const DNS_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

/// Label values and the name part of keys: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, ≤ 63.
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b.first().is_none_or(|c| c.is_ascii_alphanumeric())
        && b.last().is_none_or(|c| c.is_ascii_alphanumeric())
}

fn check_key(field: &str, key: &str, out: &mut Causes) {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let bad_prefix = prefix.is_some_and(|p| !is_subdomain(p));
    if name.is_empty() || !is_qualified_part(name) || bad_prefix {
        out.push((
            field.to_string(),
            format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"),
        ));
    }
}

/// Metadata and typed-field validation of a whole object about to be stored.
pub fn validate(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let mut out = Causes::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        out.push((
            "metadata.name".into(),
            "Required value: name or generateName is required".into(),
        ));
    } else if res.plural == "namespaces" && !is_label(name) {
        out.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: {DNS_LABEL}"),
        ));
    } else if !res.group.starts_with("rbac.") && !is_subdomain(name) {
        out.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: {DNS_SUBDOMAIN}"),
        ));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            check_key("metadata.labels", k, &mut out);
            match v.as_str() {
                Some(s) if is_qualified_part(s) => {}
                _ => out.push((
                    "metadata.labels".into(),
                    format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
                )),
            }
        }
    }
    if let Some(annotations) = obj["metadata"]["annotations"].as_object() {
        let mut size = 0;
        for (k, v) in annotations {
            check_key("metadata.annotations", k, &mut out);
            size += k.len() + v.as_str().map_or(0, str::len);
        }
        if size > 256 * 1024 {
            out.push((
                "metadata.annotations".into(),
                format!("Too long: may not be more than 262144 bytes (was {size})"),
            ));
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res, name, &out))
    }
}

/// Decoding checks that the real server fails with 400 before validation: a ConfigMap's data
/// must be strings, a Secret's data base64.
pub fn decode(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let kind = &res.kind;
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: {why}",
            res.version
        ))
    };
    // The structs every kind (and the server's own bookkeeping) relies on.
    let core_maps = res.group.is_empty() && matches!(res.plural.as_str(), "configmaps" | "secrets");
    for field in ["spec", "status", "data", "stringData"] {
        let typed = matches!(field, "spec" | "status") || core_maps;
        match obj.get(field) {
            Some(v) if typed && !v.is_object() && !v.is_null() => {
                return Err(cannot(format!(
                    "json: cannot unmarshal {} into Go struct field {kind}.{field} of type object",
                    json_type(v)
                )));
            }
            _ => {}
        }
    }
    if !core_maps {
        return Ok(());
    }
    for field in ["data", "stringData"] {
        if let Some(map) = obj[field].as_object() {
            for (k, v) in map {
                let Some(s) = v.as_str() else {
                    return Err(cannot(format!(
                        "json: cannot unmarshal {} into Go struct field {kind}.{field} of type string",
                        json_type(v)
                    )));
                };
                if res.plural == "secrets"
                    && field == "data"
                    && base64::engine::general_purpose::STANDARD.decode(s).is_err()
                {
                    return Err(cannot(format!(
                        "illegal base64 data at input byte 0 (key {k:?})"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::String(_) => "string",
        Value::Null => "null",
    }
}

/// A Secret's `stringData` merged into `data` (base64), as the real server stores it.
pub fn fold_string_data(res: &Resource, obj: &mut Value) {
    if !res.group.is_empty() || res.plural != "secrets" {
        return;
    }
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    let data = obj
        .as_object_mut()
        .expect("an object")
        .entry("data")
        .or_insert_with(|| json!({}));
    for (k, v) in strings {
        let s = v.as_str().unwrap_or_default();
        data[k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
    }
}

/// The immutable fields `new` changes relative to `old`.
pub fn immutable(res: &Resource, old: &Value, new: &Value) -> Causes {
    let mut out = Causes::new();
    let mut fixed = |path: &str| {
        let get = |v: &Value| path.split('.').fold(v.clone(), |v, k| v[k].clone());
        let (a, b) = (get(old), get(new));
        if a != b {
            out.push((
                path.to_string(),
                format!("Invalid value: {b}: field is immutable"),
            ));
        }
    };
    match (res.group.as_str(), res.plural.as_str()) {
        ("apps", "deployments" | "replicasets" | "daemonsets") => fixed("spec.selector"),
        ("apps", "statefulsets") => {
            fixed("spec.selector");
            fixed("spec.serviceName");
            fixed("spec.volumeClaimTemplates");
            fixed("spec.podManagementPolicy");
        }
        ("batch", "jobs") => {
            fixed("spec.selector");
            fixed("spec.template");
            fixed("spec.completionMode");
        }
        ("", "services")
            if old["spec"]["clusterIP"].is_string() && new["spec"]["clusterIP"].is_string() =>
        {
            fixed("spec.clusterIP");
        }
        ("", "secrets") => fixed("type"),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings")
            if old["roleRef"] != new["roleRef"] =>
        {
            out.push((
                "roleRef".into(),
                format!("Invalid value: {}: cannot change roleRef", new["roleRef"]),
            ));
        }
        ("", "persistentvolumeclaims") => {
            let strip = |v: &Value| {
                let mut s = v["spec"].clone();
                if let Some(r) = s.get_mut("resources").and_then(Value::as_object_mut) {
                    r.remove("requests");
                }
                s
            };
            if strip(old) != strip(new) {
                out.push(("spec".into(), "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into()));
            }
        }
        _ => {}
    }
    if res.group.is_empty()
        && matches!(res.plural.as_str(), "configmaps" | "secrets")
        && old["immutable"] == json!(true)
    {
        if new["immutable"] != json!(true) {
            out.push((
                "immutable".into(),
                "Forbidden: field is immutable when `immutable` is set".into(),
            ));
        }
        for field in ["data", "binaryData"] {
            if old[field] != new[field] {
                out.push((
                    field.into(),
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
        }
    }
    out
}

/// Drops the fields a structural schema does not declare, as the real server prunes custom
/// resources (`x-kubernetes-preserve-unknown-fields` keeps them).
pub fn prune(value: &mut Value, schema: &Value, root: bool) {
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) {
        if let (Some(map), Some(props)) = (value.as_object_mut(), schema["properties"].as_object())
        {
            for (k, v) in map.iter_mut() {
                if let Some(s) = props.get(k) {
                    prune(v, s, false);
                }
            }
        }
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                map.retain(|k, _| {
                    props.contains_key(k)
                        || (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                });
                for (k, v) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune(v, s, false);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for v in map.values_mut() {
                    prune(v, &schema["additionalProperties"], false);
                }
            } else if !root && schema.get("type").is_some() {
                map.clear();
            }
        }
        Value::Array(items) => {
            for item in items {
                prune(item, &schema["items"], false);
            }
        }
        _ => {}
    }
}
