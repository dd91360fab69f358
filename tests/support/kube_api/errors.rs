//! `Status` failures with the codes, reasons, messages and details the real API server returns.

use serde_json::{Value, json};

use super::resources::Resource;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unknown_resource() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn not_found(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", res.qualified()),
        )
        .with_details(details(&res.group, &res.plural, name))
    }

    pub fn namespace_not_found(namespace: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("namespaces {namespace:?} not found"),
        )
        .with_details(json!({"name": namespace, "kind": "namespaces"}))
    }

    pub fn already_exists(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", res.qualified()),
        )
        .with_details(details(&res.group, &res.plural, name))
    }

    pub fn conflict(res: &Resource, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                res.qualified()
            ),
        )
        .with_details(details(&res.group, &res.plural, name))
    }

    /// 422 Invalid with one cause per `(field, message)`.
    pub fn invalid(res: &Resource, name: &str, causes: &[(String, String)]) -> ApiError {
        let texts: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let joined = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let mut d = json!({"name": name, "kind": res.kind, "causes": causes.iter().map(|(f, m)| json!({
            "reason": cause_reason(m), "message": m, "field": f,
        })).collect::<Vec<_>>()});
        if !res.group.is_empty() {
            d["group"] = json!(res.group);
        }
        ApiError::new(
            422,
            "Invalid",
            format!("{} {name:?} is invalid: {joined}", res.qualified_kind()),
        )
        .with_details(d)
    }

    /// A create in a namespace being deleted, refused by NamespaceLifecycle admission.
    pub fn namespace_terminating(res: &Resource, namespace: &str, name: &str) -> ApiError {
        let mut d = details(&res.group, &res.plural, name);
        d["causes"] = json!([{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {namespace} is being terminated"),
            "field": "metadata.namespace",
        }]);
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} {name:?} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                res.qualified()
            ),
        )
        .with_details(d)
    }

    pub fn forbidden(group: &str, resource: &str, name: &str, message: String) -> ApiError {
        ApiError::new(403, "Forbidden", message).with_details(details(group, resource, name))
    }
}

fn cause_reason(message: &str) -> &'static str {
    if message.starts_with("Required value") {
        "FieldValueRequired"
    } else if message.starts_with("Forbidden") {
        "FieldValueForbidden"
    } else if message.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else if message.starts_with("Duplicate value") {
        "FieldValueDuplicate"
    } else {
        "FieldValueInvalid"
    }
}

fn details(group: &str, plural: &str, name: &str) -> Value {
    let mut d = json!({"kind": plural});
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}
