//! HTTP: authentication by bearer token, impersonation, request parsing (the real server's
//! RequestInfo rules), RBAC authorization, dispatch, lists with selectors and paging, watches,
//! and the request log.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{Value, json};

use super::errors::ApiError;
use super::rbac::{Attributes, User};
use super::resources::{self, Resource};
use super::store::{Key, PatchType, Store, Write};

/// One request as the tests see it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub verb: String,
    /// The authenticated user.
    pub user: String,
    /// The user the request was made as (`Impersonate-User`), if impersonated.
    pub impersonated: Option<String>,
    pub impersonated_groups: Vec<String>,
    pub dry_run: bool,
    pub status: u16,
    pub field_manager: Option<String>,
    /// A POST's object name (the path of a create names only the collection).
    pub created: Option<String>,
    /// The `spec.holderIdentity` a POST or PUT wrote (a Lease's), `""` when it wrote none.
    pub holder: Option<String>,
}

impl Logged {
    /// POST, PUT, PATCH or DELETE that was not a dry run.
    pub fn is_write(&self) -> bool {
        !self.dry_run && matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

pub struct State {
    pub store: Mutex<Store>,
    pub log: Mutex<Vec<Logged>>,
    pub tokens: Mutex<HashMap<String, User>>,
    pub changed: tokio::sync::watch::Sender<u64>,
    token_counter: Mutex<u64>,
}

impl State {
    pub fn new() -> State {
        State {
            store: Mutex::new(Store::new()),
            log: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(0).0,
            token_counter: Mutex::new(0),
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_json())
}

/// The parsed target of a resource request.
struct Target {
    /// The field manager of a write that names none: the User-Agent up to its first `/`.
    default_manager: String,
    resource: Resource,
    namespace: String,
    name: String,
    subresource: String,
}

/// Query parameters (last value wins, as Go's `Get`).
fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && hex(bytes[i + 1]).is_some()
                && hex(bytes[i + 2]).is_some() =>
            {
                let (hi, lo) = (
                    hex(bytes[i + 1]).unwrap_or(0),
                    hex(bytes[i + 2]).unwrap_or(0),
                );
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().as_str().to_string();
    let uri = req.uri().clone();
    let q = query(&uri);
    let headers = req.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let mut entry = Logged {
        method: method.clone(),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        verb: String::new(),
        user: String::new(),
        impersonated: header("impersonate-user"),
        impersonated_groups: headers
            .get_all("impersonate-group")
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect(),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        status: 0,
        field_manager: q.get("fieldManager").cloned(),
        created: None,
        holder: None,
    };
    let body = match Limited::new(req.into_body(), 3 * 1024 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            );
            return Ok(finish(&state, entry, error_response(&e)));
        }
    };

    if method == "POST" || method == "PUT" {
        let sent = serde_json::from_slice::<Value>(&body).unwrap_or_default();
        if method == "POST" {
            entry.created = sent["metadata"]["name"].as_str().map(String::from);
        }
        entry.holder = Some(
            sent["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }

    // Authentication.
    let user = match header("authorization") {
        None => User::anonymous(),
        Some(auth) => {
            let token = auth.strip_prefix("Bearer ").unwrap_or_default().trim();
            match state.tokens.lock().unwrap().get(token) {
                Some(u) => u.clone(),
                None => {
                    let e = ApiError::new(401, "Unauthorized", "Unauthorized");
                    return Ok(finish(&state, entry, error_response(&e)));
                }
            }
        }
    };
    entry.user = user.name.clone();

    // Impersonation.
    let user = match impersonate(&state, &user, &entry) {
        Ok(u) => u,
        Err(e) => return Ok(finish(&state, entry, error_response(&e))),
    };

    let path = uri.path().trim_end_matches('/').to_string();
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let request = Req {
        method: &method,
        path: &path,
        q: &q,
        body: &body,
        content_type: &header("content-type").unwrap_or_default(),
        accept: &header("accept").unwrap_or_default(),
        user_agent: &header("user-agent").unwrap_or_default(),
    };
    let response = route(&state, &user, &request, &mut entry).await;
    Ok(finish(&state, entry, response))
}

fn finish(state: &State, mut entry: Logged, response: Response<Body>) -> Response<Body> {
    entry.status = response.status().as_u16();
    state.log.lock().unwrap().push(entry);
    response
}

fn impersonate(state: &State, user: &User, entry: &Logged) -> Result<User, ApiError> {
    let Some(target) = entry.impersonated.clone() else {
        if !entry.impersonated_groups.is_empty() {
            return Err(ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: requested [groups] without impersonating a user",
            ));
        }
        return Ok(user.clone());
    };
    let store = state.store.lock().unwrap();
    let policy = store.policy();
    let mut checks = Vec::new();
    let sa = target
        .strip_prefix("system:serviceaccount:")
        .and_then(|s| s.split_once(':'));
    match sa {
        Some((ns, name)) => checks.push(("serviceaccounts", ns.to_string(), name.to_string())),
        None => checks.push(("users", String::new(), target.clone())),
    }
    for g in &entry.impersonated_groups {
        checks.push(("groups", String::new(), g.clone()));
    }
    for (resource, namespace, name) in checks {
        let a = Attributes {
            verb: "impersonate".into(),
            group: String::new(),
            resource: resource.into(),
            namespace: namespace.clone(),
            name: name.clone(),
            path: String::new(),
        };
        if !policy.allows(user, &a) {
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {namespace:?}")
            };
            return Err(ApiError::forbidden(
                "",
                resource,
                &name,
                format!(
                    "{resource} {name:?} is forbidden: User {:?} cannot impersonate resource {resource:?} in API group \"\" {scope}",
                    user.name
                ),
            ));
        }
    }
    let mut groups: Vec<&str> = entry
        .impersonated_groups
        .iter()
        .map(String::as_str)
        .collect();
    let sa_groups;
    if groups.is_empty()
        && let Some((ns, _)) = sa
    {
        sa_groups = [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ];
        groups = sa_groups.iter().map(String::as_str).collect();
    }
    Ok(User::new(&target, &groups))
}

fn forbidden(user: &User, a: &Attributes) -> ApiError {
    if a.resource.is_empty() {
        return ApiError::new(
            403,
            "Forbidden",
            format!(
                "forbidden: User {:?} cannot {} path {:?}",
                user.name, a.verb, a.path
            ),
        )
        .with_details(json!({}));
    }
    let plural = a.resource.split('/').next().unwrap_or_default();
    let what = resources::qualified(&a.group, plural);
    let subject = if a.name.is_empty() {
        what
    } else {
        format!("{what} {:?}", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    ApiError::forbidden(
        &a.group,
        plural,
        &a.name,
        format!(
            "{subject} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            user.name, a.verb, a.resource, a.group
        ),
    )
}

/// The parts of a request that routing reads.
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    q: &'a HashMap<String, String>,
    body: &'a Bytes,
    content_type: &'a str,
    accept: &'a str,
    user_agent: &'a str,
}

async fn route(state: &Arc<State>, user: &User, r: &Req<'_>, entry: &mut Logged) -> Response<Body> {
    let Req {
        method,
        path,
        q,
        body,
        content_type,
        accept,
        user_agent,
    } = *r;
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // Non-resource requests: discovery, version, health.
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => {
            (String::new(), "v1".to_string(), rest.to_vec())
        }
        ["apis", g, v, rest @ ..] if !rest.is_empty() => {
            (g.to_string(), v.to_string(), rest.to_vec())
        }
        _ => {
            entry.verb = method.to_lowercase();
            let a = Attributes {
                verb: method.to_lowercase(),
                group: String::new(),
                resource: String::new(),
                namespace: String::new(),
                name: String::new(),
                path: path.to_string(),
            };
            let store = state.store.lock().unwrap();
            if !store.policy().allows(user, &a) {
                return error_response(&forbidden(user, &a));
            }
            return non_resource(&store, method, &segments, accept);
        }
    };

    // RequestInfo: [namespaces/<ns>/]<resource>[/<name>[/<subresource>]].
    let mut parts = rest;
    let mut namespace = String::new();
    if parts[0] == "namespaces" && parts.len() > 1 {
        namespace = parts[1].to_string();
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts = parts[2..].to_vec();
        }
    }
    if parts.len() > 3 {
        return error_response(&ApiError::unknown_resource());
    }
    let plural = parts[0];
    let name = parts.get(1).copied().unwrap_or_default().to_string();
    let subresource = parts.get(2).copied().unwrap_or_default().to_string();
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match method {
        "GET" if watch => "watch",
        "GET" if !name.is_empty() => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if !name.is_empty() => "delete",
        "DELETE" => "deletecollection",
        _ => {
            return error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({method})"
                ),
            ));
        }
    };
    entry.verb = verb.into();
    let authz_resource = if subresource.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}/{subresource}")
    };
    let attributes = Attributes {
        verb: verb.into(),
        group: group.clone(),
        resource: authz_resource,
        namespace: namespace.clone(),
        name: if verb == "create" && subresource.is_empty() {
            String::new()
        } else {
            name.clone()
        },
        path: path.to_string(),
    };
    let resource = {
        let store = state.store.lock().unwrap();
        if !store.policy().allows(user, &attributes) {
            return error_response(&forbidden(user, &attributes));
        }
        store.resource(&group, &version, plural)
    };
    let Some(resource) = resource else {
        return error_response(&ApiError::unknown_resource());
    };
    // The object of a namespace request is the namespace itself.
    let namespace = if resource.group.is_empty() && resource.plural == "namespaces" {
        String::new()
    } else {
        namespace
    };
    let valid_scope = if resource.namespaced {
        !namespace.is_empty() || (name.is_empty() && matches!(verb, "list" | "watch"))
    } else {
        namespace.is_empty()
    };
    let valid_sub = match subresource.as_str() {
        "" => true,
        "status" => resource.status && matches!(verb, "get" | "update" | "patch"),
        "token" => {
            resource.group.is_empty() && resource.plural == "serviceaccounts" && verb == "create"
        }
        _ => false,
    };
    if !valid_scope || !valid_sub {
        return error_response(&ApiError::unknown_resource());
    }
    let target = Target {
        default_manager: user_agent.split('/').next().unwrap_or_default().to_string(),
        resource,
        namespace,
        name,
        subresource,
    };
    if verb == "watch" {
        return watch_response(state, &target, q);
    }
    let mut store = state.store.lock().unwrap();
    let result = dispatch(
        state,
        &mut store,
        user,
        verb,
        &target,
        q,
        body,
        content_type,
    );
    let changed = store.rv;
    drop(store);
    state.changed.send_replace(changed);
    match result {
        // A metadata-only list (`Accept: ...;as=PartialObjectMetadataList`), as kube's
        // `list_metadata` asks for it.
        Ok((code, v)) if verb == "list" && accept.contains("as=PartialObjectMetadataList") => {
            let items: Vec<Value> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": i["metadata"]}))
                .collect();
            json_response(
                code,
                &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": v["metadata"], "items": items}),
            )
        }
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}

fn non_resource(store: &Store, method: &str, segments: &[&str], accept: &str) -> Response<Body> {
    if method != "GET" {
        return error_response(&ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let res = &store.resources;
    if accept.contains("as=APIGroupDiscoveryList") && matches!(segments, ["api"] | ["apis"]) {
        let body = resources::aggregated(res, segments == ["api"]);
        return Response::builder()
            .status(200)
            .header(
                "content-type",
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            )
            .body(Full::new(Bytes::from(body.to_string())).boxed())
            .expect("a response");
    }
    let body = match segments {
        ["version"] => json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-flotilla-test", "platform": "linux/amd64",
        }),
        ["healthz"] | ["livez"] | ["readyz"] => {
            return Response::builder()
                .status(200)
                .body(Full::new(Bytes::from_static(b"ok")).boxed())
                .expect("a response");
        }
        ["api"] => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}
            ]})
        }
        ["api", "v1"] => resources::resource_list(res, "", "v1"),
        ["apis"] => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups":
            resources::groups(res).iter().map(|(g, v)| resources::api_group(g, v)).collect::<Vec<_>>()}),
        ["apis", g] => match resources::groups(res)
            .into_iter()
            .find(|(name, _)| name == g)
        {
            Some((name, versions)) => {
                let mut group = resources::api_group(&name, &versions);
                group["kind"] = json!("APIGroup");
                group["apiVersion"] = json!("v1");
                group
            }
            None => return error_response(&ApiError::unknown_resource()),
        },
        ["apis", g, v] if res.iter().any(|r| r.group == *g && r.version == *v) => {
            resources::resource_list(res, g, v)
        }
        _ => return error_response(&ApiError::unknown_resource()),
    };
    json_response(200, &body)
}

/// YAML or JSON, as an apply patch may be either.
fn parse_body(body: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    if content_type.contains("yaml") {
        let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        return serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    Err(ApiError::bad_request(
        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
    ))
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    state: &State,
    store: &mut Store,
    user: &User,
    verb: &str,
    t: &Target,
    q: &HashMap<String, String>,
    body: &Bytes,
    content_type: &str,
) -> Result<(u16, Value), ApiError> {
    let res = &t.resource;
    let mut body = parse_body(body, content_type)?;
    let delete_options = if verb == "delete" {
        body.clone()
    } else {
        Value::Null
    };
    let dry_run = q.get("dryRun").map(String::as_str) == Some("All")
        || delete_options["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All"));
    if let Some(d) = q.get("dryRun").filter(|d| *d != "All") {
        return Err(ApiError::bad_request(format!(
            "Invalid dryRun value: {d:?}, supported values: \"All\""
        )));
    }
    let manager = q.get("fieldManager").cloned().unwrap_or_default();
    if manager.len() > 128 {
        return Err(ApiError::new(
            422,
            "Invalid",
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    let force = q.get("force").is_some_and(|f| f == "true");
    let w = Write {
        user,
        manager: if manager.is_empty() && !content_type.starts_with("application/apply-patch") {
            t.default_manager.clone()
        } else {
            manager.clone()
        },
        dry_run,
        force,
        subresource: &t.subresource,
    };
    match verb {
        "get" => store.get(res, &t.namespace, &t.name).map(|v| (200, v)),
        "list" => list(store, res, &t.namespace, q).map(|v| (200, v)),
        "create" if t.subresource == "token" => {
            store.get(res, &t.namespace, &t.name)?;
            let token = {
                let mut n = state.token_counter.lock().unwrap();
                *n += 1;
                let raw = format!("{}/{}/{}/{}", t.namespace, t.name, *n, std::process::id());
                format!(
                    "sa-{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
                )
            };
            state
                .tokens
                .lock()
                .unwrap()
                .insert(token.clone(), User::service_account(&t.namespace, &t.name));
            let mut out = body;
            out["apiVersion"] = json!("authentication.k8s.io/v1");
            out["kind"] = json!("TokenRequest");
            out["status"] = json!({"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"});
            Ok((201, out))
        }
        "create" => {
            let obj = store.create(res, &t.namespace, body, &w)?;
            Ok((201, obj))
        }
        "update" => {
            if force {
                return Err(ApiError::bad_request(
                    "force is only allowed for apply patches",
                ));
            }
            store
                .update(res, &t.namespace, &t.name, body, &w)
                .map(|v| (200, v))
        }
        "patch" => {
            let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the server does not support the patch type {other:?} here (the test API server supports apply, merge and strategic merge patches)"
                        ),
                    ));
                }
            };
            if force && kind != PatchType::Apply {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            if kind == PatchType::Apply && store.get(res, &t.namespace, &t.name).is_err() {
                // Creating through apply needs `create` as well (on the named object), checked
                // after the namespace is known to exist.
                if res.namespaced {
                    store.namespace_exists(res, &t.namespace, &t.name)?;
                }
                let a = Attributes {
                    verb: "create".into(),
                    group: res.group.clone(),
                    resource: res.plural.clone(),
                    namespace: if res.namespaced {
                        t.namespace.clone()
                    } else {
                        String::new()
                    },
                    name: t.name.clone(),
                    path: String::new(),
                };
                if !store.policy().allows(user, &a) {
                    return Err(forbidden(user, &a));
                }
            }
            if body.is_null() {
                body = json!({});
            }
            let (obj, created) = store.patch(res, &t.namespace, &t.name, kind, body, &w)?;
            Ok((if created { 201 } else { 200 }, obj))
        }
        "delete" => {
            let obj = store.delete(res, &t.namespace, &t.name, &w, &delete_options)?;
            Ok((200, obj))
        }
        "deletecollection" => {
            let listed = list(store, res, &t.namespace, q)?;
            for item in listed["items"].as_array().into_iter().flatten() {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let ns = item["metadata"]["namespace"].as_str().unwrap_or_default();
                store.delete(res, ns, name, &w, &Value::Null)?;
            }
            Ok((
                200,
                json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {}, "items": []}),
            ))
        }
        _ => Err(ApiError::unknown_resource()),
    }
}

// --- Selectors -----------------------------------------------------------------------------

#[derive(Debug)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Requirement {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
        }
    }
}

/// A label selector: `a=b`, `a==b`, `a!=b`, `a in (b,c)`, `a notin (b)`, `a`, `!a`, comma-joined.
fn parse_selector(s: &str) -> Result<Vec<Requirement>, ApiError> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    let bad = |p: &str| {
        ApiError::bad_request(format!(
            "unable to parse requirement: found '{p}', expected: identifier"
        ))
    };
    let set = |v: &str| -> Vec<String> {
        v.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().to_string())
            .collect()
    };
    let mut out = Vec::new();
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = p.split_once("!=") {
            Requirement::NotIn(k.trim().into(), vec![v.trim().into()])
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            Requirement::In(k.trim().into(), vec![v.trim().into()])
        } else if let Some((k, v)) = p.split_once(" notin ") {
            Requirement::NotIn(k.trim().into(), set(v))
        } else if let Some((k, v)) = p.split_once(" in ") {
            Requirement::In(k.trim().into(), set(v))
        } else if let Some(k) = p.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else {
            Requirement::Exists(p.into())
        };
        let key = match &req {
            Requirement::Exists(k)
            | Requirement::NotExists(k)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _) => k,
        };
        if key.is_empty() || key.contains(' ') {
            return Err(bad(p));
        }
        out.push(req);
    }
    Ok(out)
}

/// `metadata.name` and `metadata.namespace` field selectors.
fn parse_field_selector(s: &str) -> Result<Vec<(String, bool, String)>, ApiError> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, eq, value) = if let Some((f, v)) = p.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            (f, true, v)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{s}'; can't understand '{p}'"
            )));
        };
        if !matches!(field, "metadata.name" | "metadata.namespace") {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        out.push((field.to_string(), eq, value.to_string()));
    }
    Ok(out)
}

struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    fn parse(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
        Ok(Filter {
            labels: parse_selector(
                q.get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?,
            fields: parse_field_selector(
                q.get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?,
        })
    }
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|(f, eq, v)| {
                let actual = obj["metadata"][f.trim_start_matches("metadata.")]
                    .as_str()
                    .unwrap_or_default();
                (actual == v) == *eq
            })
    }
}

fn list_item(res: &Resource, obj: &Value) -> Value {
    let mut item = obj.clone();
    if res.custom {
        item["apiVersion"] = json!(res.api_version());
    } else if let Some(m) = item.as_object_mut() {
        // Typed lists carry the kind once, on the list.
        m.remove("apiVersion");
        m.remove("kind");
    }
    item
}

fn list(
    store: &Store,
    res: &Resource,
    namespace: &str,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let filter = Filter::parse(q)?;
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (rv, start) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?;
            let rv = raw["rv"].as_u64().unwrap_or_default();
            (
                rv,
                Some((
                    raw["ns"].as_str().unwrap_or_default().to_string(),
                    raw["name"].as_str().unwrap_or_default().to_string(),
                )),
            )
        }
        None => (store.rv, None),
    };
    let snapshot = store.snapshot(res, namespace, rv);
    let matching: Vec<(&Key, &Value)> = snapshot
        .iter()
        .filter(|(k, _)| {
            start
                .as_ref()
                .is_none_or(|(ns, name)| (&k.namespace, &k.name) > (ns, name))
        })
        .filter(|(_, v)| filter.matches(v))
        .collect();
    let take = if limit == 0 {
        matching.len()
    } else {
        limit.min(matching.len())
    };
    let items: Vec<Value> = matching[..take]
        .iter()
        .map(|(_, v)| list_item(res, v))
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if take < matching.len() {
        let (k, _) = matching[take - 1];
        let token = json!({"rv": rv, "ns": k.namespace, "name": k.name}).to_string();
        metadata["continue"] = json!(base64::engine::general_purpose::STANDARD.encode(token));
        if filter.is_empty() {
            metadata["remainingItemCount"] = json!(matching.len() - take);
        }
    }
    Ok(
        json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": metadata, "items": items}),
    )
}

// --- Watch ---------------------------------------------------------------------------------

fn watch_response(state: &Arc<State>, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let mut filter = match Filter::parse(q) {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    if !t.name.is_empty() {
        // A watch of one object.
        filter
            .fields
            .push(("metadata.name".into(), true, t.name.clone()));
    }
    let res = t.resource.clone();
    let namespace = t.namespace.clone();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800u64);
    let since: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let (cursor, initial) = {
        let store = state.store.lock().unwrap();
        match since {
            Some(rv) => (rv, Vec::new()),
            None => {
                let snap = store.snapshot(&res, &namespace, store.rv);
                let added = snap
                    .values()
                    .filter(|v| filter.matches(v))
                    .map(|v| event("ADDED", &res, v))
                    .collect();
                (store.rv, added)
            }
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        for e in initial {
            if tx.send(line(&e)).await.is_err() {
                return;
            }
        }
        let mut changes = state.changed.subscribe();
        let mut cursor = cursor;
        loop {
            let batch: Vec<Value> = {
                let store = state.store.lock().unwrap();
                let out = store
                    .events
                    .iter()
                    .filter(|e| {
                        e.rv > cursor && e.key.group == res.group && e.key.plural == res.plural
                    })
                    .filter(|e| namespace.is_empty() || e.key.namespace == namespace)
                    .filter_map(|e| {
                        let was = e.old.as_ref().is_some_and(|o| filter.matches(o));
                        let is = e.new.as_ref().is_some_and(|n| filter.matches(n));
                        match (&e.new, was, is) {
                            (Some(n), false, true) => Some(event("ADDED", &res, n)),
                            (Some(n), true, true) => Some(event("MODIFIED", &res, n)),
                            (Some(n), true, false) => {
                                let mut n = n.clone();
                                n["metadata"]["resourceVersion"] = json!(e.rv.to_string());
                                Some(event("DELETED", &res, &n))
                            }
                            (None, true, _) => Some(event(
                                "DELETED",
                                &res,
                                e.old.as_ref().expect("a deleted object"),
                            )),
                            _ => None,
                        }
                    })
                    .collect();
                cursor = store.rv;
                out
            };
            for e in batch {
                if tx.send(line(&e)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("a response")
}

fn event(kind: &str, res: &Resource, obj: &Value) -> Value {
    let mut obj = obj.clone();
    obj["apiVersion"] = json!(res.api_version());
    json!({"type": kind, "object": obj})
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}
