//! The only code that talks to the Kubernetes API server: the connection, one discovery cache
//! shared by every unit, one impersonating client per tenant identity (built once, reused), and
//! the calls the engine makes (get, list by label, server-side apply and its dry run, delete).
//!
//! Objects travel as JSON values: flotilla applies whatever kinds Git holds.
//!
//! Errors: [`Error::Api`] is the API server's answer, with its reason and message; a 5xx, a 429
//! and [`Error::Transport`] are transient, and [`Error::kind`] says so of each.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

use crate::failure::{Failure, Kind};
use crate::fleet::Identity;

/// The field manager of every apply flotilla makes.
pub(crate) const FIELD_MANAGER: &str = "flotilla";

/// What went wrong talking to the cluster.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Config(String),
    /// The API server answered with an error status.
    #[error("{}", .0.message)]
    Api(ApiFailure),
    /// The API server could not be reached or its answer not read (transient).
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    /// Discovery does not know the kind.
    #[error("the cluster has no kind {kind} in {api_version} (is its CRD installed?)")]
    UnknownKind { api_version: String, kind: String },
    /// Not an apiVersion at all (`group/version` or `version` in lower case): no retry helps.
    #[error("{0:?} is not a valid apiVersion")]
    InvalidApiVersion(String),
}

/// An error status from the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiFailure {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// The causes the server gave.
    pub causes: Vec<Cause>,
}

/// One `details.causes` entry of an error status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable: `FieldValueInvalid`, `NamespaceTerminating`, ...
    pub reason: String,
    pub field: String,
    pub message: String,
}

/// A kind as the cluster serves it.
#[derive(Clone, Debug)]
pub(crate) struct Resource {
    pub api: ApiResource,
    pub namespaced: bool,
}

/// The connection to one cluster.
pub(crate) struct Cluster {
    admin: Client,
    /// The connection every tenant's requests share (one TLS setup, one pool of connections),
    /// each request carrying its tenant's impersonation header: the kubeconfig's own
    /// credentials without any impersonation of its own.
    shared: Client,
    config: Config,
    /// APIResourceLists by group-version (`v1`, `apps/v1`); refetched when a kind is missing.
    discovery: Mutex<HashMap<String, Arc<APIResourceList>>>,
    /// Impersonating clients by user name.
    tenants: Mutex<HashMap<String, Client>>,
    /// What the cluster serves, for Helm, and when it was read.
    capabilities: Mutex<Option<(std::time::Instant, Arc<crate::render::Capabilities>)>>,
    /// The key of Secrets' keyed hashes, once read.
    secret_hash_key: Mutex<Option<[u8; 32]>>,
}

/// A tenant's client: its requests go through the shared connection with its
/// `Impersonate-User` header (the only one: the shared connection impersonates no one).
#[derive(Clone)]
struct Impersonate {
    shared: Client,
    user: hyper::header::HeaderValue,
}

impl tower::Service<hyper::Request<kube::client::Body>> for Impersonate {
    type Response = hyper::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, kube::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: hyper::Request<kube::client::Body>) -> Self::Future {
        request
            .headers_mut()
            .insert("impersonate-user", self.user.clone());
        let shared = self.shared.clone();
        Box::pin(async move { shared.send(request).await })
    }
}

/// The Secret (in the agent's namespace) that holds the key of Secrets' keyed hashes.
pub(crate) const SECRET_HASH_KEY: &str = "flotilla-secret-hash-key";

// === impl Error ===

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(e.kind(), e.to_string())
    }
}

impl Error {
    fn from_kube(error: kube::Error) -> Error {
        match error {
            kube::Error::Api(status) => Error::Api(ApiFailure {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
                causes: status
                    .details
                    .as_ref()
                    .map(|d| {
                        d.causes
                            .iter()
                            .map(|c| Cause {
                                reason: c.reason.clone(),
                                field: c.field.clone(),
                                message: c.message.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            other => Error::Transport(other.to_string()),
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api(f) => Some(f.code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// Whether waiting could help (the error policy of [`crate::failure`]): the server was
    /// unreachable, overloaded or failing (a 5xx, a 429, a 408), a list's continue token expired
    /// (410), the object changed under a precondition (a 409 that is not a field-manager
    /// conflict), something it needs is not there yet (a 404: a namespace, a Role; a kind whose
    /// CRD another unit installs), or its namespace is being deleted. Other refusals (400, 401,
    /// 403, 422, a server-side apply conflict with another manager without `force`, ...), a
    /// malformed apiVersion and a kubeconfig that cannot be used wait for a change.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Transport(_) | Error::UnknownKind { .. } => Kind::Transient,
            Error::Api(f) if f.code == 409 => {
                if f.causes.iter().any(|c| c.reason == "FieldManagerConflict") {
                    Kind::Permanent
                } else {
                    Kind::Transient
                }
            }
            Error::Api(f) if matches!(f.code, 404 | 408 | 410 | 429) || f.code >= 500 => {
                Kind::Transient
            }
            Error::Api(_) if self.namespace_terminating() => Kind::Transient,
            Error::Api(_) | Error::Config(_) | Error::InvalidApiVersion(_) => Kind::Permanent,
        }
    }

    /// Whether the write was refused because its namespace is being deleted (the API server's
    /// NamespaceLifecycle admission: 403 with a `NamespaceTerminating` cause).
    pub fn namespace_terminating(&self) -> bool {
        matches!(self, Error::Api(f) if f.code == 403
            && f.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
    }

    /// The fields an Invalid error says are immutable, if it says so of any.
    pub fn immutable_fields(&self) -> Option<Vec<String>> {
        let Error::Api(f) = self else { return None };
        if f.code != 422 {
            return None;
        }
        let fields: Vec<String> = f
            .causes
            .iter()
            .filter(|c| c.message.contains("immutable"))
            .map(|c| c.field.clone())
            .collect();
        if !fields.is_empty() {
            Some(fields)
        } else if f.message.contains("immutable") {
            Some(Vec::new())
        } else {
            None
        }
    }
}

// === impl Cluster ===

impl Cluster {
    /// The cluster's version and every group/version and group/version/Kind it serves, read
    /// through aggregated discovery and kept for ten minutes; when a refresh fails, the last
    /// good answer is kept (a chart must not lose a kind for a failed discovery call).
    pub(crate) async fn capabilities(&self) -> Result<Arc<crate::render::Capabilities>, Error> {
        const FRESH: std::time::Duration = std::time::Duration::from_secs(600);
        let last = self.capabilities.lock().expect("not poisoned").clone();
        if let Some((at, c)) = &last
            && at.elapsed() < FRESH
        {
            return Ok(c.clone());
        }
        match self.read_capabilities().await {
            Ok(c) => {
                *self.capabilities.lock().expect("not poisoned") =
                    Some((std::time::Instant::now(), c.clone()));
                Ok(c)
            }
            Err(e) => match last {
                Some((_, c)) => {
                    tracing::warn!(error = %e, "cannot read the cluster's capabilities; keeping the last ones");
                    Ok(c)
                }
                None => Err(e),
            },
        }
    }

    async fn read_capabilities(&self) -> Result<Arc<crate::render::Capabilities>, Error> {
        let version = self
            .admin
            .apiserver_version()
            .await
            .map_err(Error::from_kube)?;
        let mut apis = std::collections::BTreeSet::new();
        for list in [
            self.admin.list_core_api_versions_aggregated().await,
            self.admin.list_api_groups_aggregated().await,
        ] {
            for group in list.map_err(Error::from_kube)?.items {
                let name = group.metadata.and_then(|m| m.name).unwrap_or_default();
                for v in group.versions {
                    let version = v.version.unwrap_or_default();
                    let gv = if name.is_empty() {
                        version.clone()
                    } else {
                        format!("{name}/{version}")
                    };
                    for r in v.resources {
                        if let Some(kind) = r.response_kind.and_then(|k| k.kind) {
                            apis.insert(format!("{gv}/{kind}"));
                        }
                    }
                    apis.insert(gv);
                }
            }
        }
        Ok(Arc::new(crate::render::Capabilities {
            kube_version: version.git_version,
            api_versions: apis.into_iter().collect(),
        }))
    }

    /// Connects with `kubeconfig`, or with kube's usual inference ($KUBECONFIG, ~/.kube/config,
    /// the in-cluster account) when `None`. Nothing is sent until the first call.
    pub(crate) async fn connect(kubeconfig: Option<&Path>) -> Result<Cluster, Error> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => Config::infer()
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        let mut plain = config.clone();
        let auth = &mut plain.auth_info;
        let impersonates = auth.impersonate.is_some()
            || auth.impersonate_groups.is_some()
            || auth.impersonate_uid.is_some()
            || auth.impersonate_user_extra.is_some();
        (
            auth.impersonate,
            auth.impersonate_groups,
            auth.impersonate_uid,
            auth.impersonate_user_extra,
        ) = (None, None, None, None);
        let shared = Client::try_from(plain).map_err(|e| Error::Config(e.to_string()))?;
        // A kubeconfig that impersonates someone itself keeps its own connection for the agent.
        let admin = if impersonates {
            Client::try_from(config.clone()).map_err(|e| Error::Config(e.to_string()))?
        } else {
            shared.clone()
        };
        Ok(Cluster {
            admin,
            shared,
            config,
            discovery: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
            capabilities: Mutex::new(None),
            secret_hash_key: Mutex::new(None),
        })
    }

    /// The API server's URL, for messages.
    pub(crate) fn url(&self) -> String {
        self.config.cluster_url.to_string()
    }

    /// The client a set's calls go through: the agent's own, or one impersonating the tenant's
    /// ServiceAccount, built on first use and reused after.
    pub(crate) fn client(&self, identity: &Identity) -> Result<Client, Error> {
        let Identity::ServiceAccount { namespace, name } = identity else {
            return Ok(self.admin.clone());
        };
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let mut tenants = self.tenants.lock().expect("not poisoned");
        if let Some(client) = tenants.get(&user) {
            return Ok(client.clone());
        }
        let header = hyper::header::HeaderValue::from_str(&user)
            .map_err(|e| Error::Config(format!("impersonating {user}: {e}")))?;
        let client = Client::new(
            Impersonate {
                shared: self.shared.clone(),
                user: header,
            },
            self.config.default_namespace.clone(),
        );
        tenants.insert(user, client.clone());
        Ok(client)
    }

    /// The key of Secrets' keyed hashes: 32 random bytes in a Secret of the agent's namespace,
    /// so that every replica and `flotilla diff` hash alike. Made by the first agent that needs
    /// it (`create`); a concurrent maker's key wins (create, never overwrite).
    pub(crate) async fn secret_hash_key(&self, create: bool) -> Result<Option<[u8; 32]>, String> {
        use base64::Engine as _;
        use k8s_openapi::api::core::v1::Secret;
        if let Some(key) = *self.secret_hash_key.lock().expect("not poisoned") {
            return Ok(Some(key));
        }
        let api: kube::Api<Secret> =
            kube::Api::namespaced(self.admin.clone(), crate::inventory::AGENT_NAMESPACE);
        let read = |s: Secret| {
            s.data
                .and_then(|d| d.get("key").cloned())
                .and_then(|b| <[u8; 32]>::try_from(b.0.as_slice()).ok())
        };
        let found = match api.get_opt(SECRET_HASH_KEY).await {
            Ok(Some(s)) => Some(read(s).ok_or_else(|| {
                format!(
                    "Secret {}/{SECRET_HASH_KEY} holds no 32-byte key",
                    crate::inventory::AGENT_NAMESPACE
                )
            })?),
            Ok(None) if !create => None,
            Ok(None) => {
                let mut key = [0u8; 32];
                {
                    use std::io::Read as _;
                    std::fs::File::open("/dev/urandom")
                        .and_then(|mut r| r.read_exact(&mut key))
                        .map_err(|e| format!("no random bytes: {e}"))?;
                }
                let secret: Secret = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": SECRET_HASH_KEY, "labels": {"app.kubernetes.io/managed-by": "flotilla"}},
                    "type": "Opaque",
                    "data": {"key": base64::engine::general_purpose::STANDARD.encode(key)},
                }))
                .map_err(|e| e.to_string())?;
                match api.create(&kube::api::PostParams::default(), &secret).await {
                    Ok(_) => Some(key),
                    // Another agent made it first: its key is the one.
                    Err(kube::Error::Api(e)) if e.code == 409 => api
                        .get_opt(SECRET_HASH_KEY)
                        .await
                        .map_err(|e| e.to_string())?
                        .and_then(read),
                    Err(e) => {
                        return Err(format!(
                            "creating Secret {}/{SECRET_HASH_KEY}: {e}",
                            crate::inventory::AGENT_NAMESPACE
                        ));
                    }
                }
            }
            Err(e) => {
                return Err(format!(
                    "reading Secret {}/{SECRET_HASH_KEY}: {e}",
                    crate::inventory::AGENT_NAMESPACE
                ));
            }
        };
        if let Some(key) = found {
            *self.secret_hash_key.lock().expect("not poisoned") = Some(key);
        }
        Ok(found)
    }

    /// A Secret's entries as text, read as `identity` (a tenant reads only its own namespaces).
    pub(crate) async fn read_secret(
        &self,
        identity: &Identity,
        namespace: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        use base64::Engine as _;
        let client = self.client(identity).map_err(|e| e.to_string())?;
        let secrets = self
            .resolve("v1", "Secret")
            .await
            .map_err(|e| e.to_string())?;
        let live = Cluster::get(&client, &secrets, Some(namespace), name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no such Secret")?;
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in live["data"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|_| format!("{k}: not base64"))?;
            let text = String::from_utf8(bytes).map_err(|_| format!("{k}: not text"))?;
            out.insert(k.clone(), text);
        }
        Ok(out)
    }

    /// How the cluster serves `kind` of `api_version`. A kind missing from the cached list is
    /// looked up again (a CRD may have just been applied).
    pub(crate) async fn resolve(&self, api_version: &str, kind: &str) -> Result<Resource, Error> {
        // The version goes into a discovery URL made with the agent's identity; it may come
        // from an inventory a tenant can edit, so only the API's own syntax is looked up.
        let syntax = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        let well_formed = match api_version.split_once('/') {
            Some((group, version)) => syntax(group) && syntax(version),
            None => syntax(api_version),
        };
        if !well_formed {
            return Err(Error::InvalidApiVersion(api_version.into()));
        }
        let cached = self
            .discovery
            .lock()
            .expect("not poisoned")
            .get(api_version)
            .cloned();
        if let Some(list) = &cached
            && let Some(found) = find(list, api_version, kind)
        {
            return Ok(found);
        }
        let fetched = if api_version.contains('/') {
            self.admin.list_api_group_resources(api_version).await
        } else {
            self.admin.list_core_api_resources(api_version).await
        };
        let list = match fetched.map_err(Error::from_kube) {
            Ok(list) => Arc::new(list),
            Err(e) if e.is_not_found() => {
                return Err(Error::UnknownKind {
                    api_version: api_version.into(),
                    kind: kind.into(),
                });
            }
            Err(e) => return Err(e),
        };
        self.discovery
            .lock()
            .expect("not poisoned")
            .insert(api_version.to_string(), list.clone());
        // What the cluster serves has changed, or was not known yet (a CRD just installed):
        // charts read it afresh at the next render, keeping the last answer if that fails.
        if let Some((at, _)) = self.capabilities.lock().expect("not poisoned").as_mut() {
            *at = at
                .checked_sub(std::time::Duration::from_secs(3600))
                .unwrap_or(*at);
        }
        find(&list, api_version, kind).ok_or_else(|| Error::UnknownKind {
            api_version: api_version.into(),
            kind: kind.into(),
        })
    }

    fn api(client: &Client, resource: &Resource, namespace: Option<&str>) -> Api<DynamicObject> {
        match (resource.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource.api),
            _ => Api::all_with(client.clone(), &resource.api),
        }
    }

    /// The object, or `None` if it does not exist.
    pub(crate) async fn get(
        client: &Client,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, Error> {
        match Self::api(client, resource, namespace).get_opt(name).await {
            Ok(found) => Ok(found.map(to_value)),
            Err(e) => Err(Error::from_kube(e)),
        }
    }

    /// Every object of `resource` in `namespace` (every namespace if `None`) matching `selector`,
    /// page by page.
    pub(crate) async fn list(
        client: &Client,
        resource: &Resource,
        namespace: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Value>, Error> {
        let api = Self::api(client, resource, namespace);
        paged(selector, |params| {
            let api = api.clone();
            async move {
                let page = api.list(&params).await?;
                Ok((
                    page.metadata.continue_,
                    page.items.into_iter().map(to_value).collect(),
                ))
            }
        })
        .await
    }

    /// The metadata of the objects matching `selector` (a metadata-only list, paged): for lists
    /// whose objects' bodies are not needed, so a tenant's large labelled objects cost nothing.
    pub(crate) async fn list_metadata(
        client: &Client,
        resource: &Resource,
        namespace: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Value>, Error> {
        let api = Self::api(client, resource, namespace);
        paged(selector, |params| {
            let api = api.clone();
            async move {
                let page = api.list_metadata(&params).await?;
                let items = page
                    .items
                    .into_iter()
                    .map(|o| {
                        serde_json::json!({"metadata": serde_json::to_value(&o.metadata).unwrap_or_default()})
                    })
                    .collect();
                Ok((page.metadata.continue_, items))
            }
        })
        .await
    }

    /// Server-side apply of `body` with field manager `flotilla`; a dry run changes nothing.
    pub(crate) async fn apply(
        client: &Client,
        resource: &Resource,
        body: &Value,
        force: bool,
        dry_run: bool,
    ) -> Result<Value, Error> {
        let namespace = body["metadata"]["namespace"].as_str();
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if force {
            params = params.force();
        }
        if dry_run {
            params = params.dry_run();
        }
        Self::api(client, resource, namespace)
            .patch(name, &params, &Patch::Apply(body))
            .await
            .map(to_value)
            .map_err(Error::from_kube)
    }

    /// Deletes the object in the background (its dependents follow), only if it is still the
    /// object with `uid`. Already gone is not an error.
    pub(crate) async fn delete(
        client: &Client,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), Error> {
        let mut params = DeleteParams::background();
        if let Some(uid) = uid {
            params = params.preconditions(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            });
        }
        match Self::api(client, resource, namespace)
            .delete(name, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match Error::from_kube(e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }
}

fn find(list: &APIResourceList, api_version: &str, kind: &str) -> Option<Resource> {
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    list.resources
        .iter()
        .find(|r| r.kind == kind && !r.name.contains('/'))
        .map(|r| Resource {
            api: ApiResource {
                group: group.to_string(),
                version: version.to_string(),
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                plural: r.name.clone(),
            },
            namespaced: r.namespaced,
        })
}

fn to_value(object: DynamicObject) -> Value {
    serde_json::to_value(object).expect("a DynamicObject serializes")
}

/// Runs a list `page` by `page` (500 objects at most each) until the server gives no continue
/// token, and returns every item.
async fn paged<F, Fut>(selector: &str, mut page: F) -> Result<Vec<Value>, Error>
where
    F: FnMut(ListParams) -> Fut,
    Fut: std::future::Future<Output = Result<(Option<String>, Vec<Value>), kube::Error>>,
{
    let mut params = ListParams::default().labels(selector).limit(500);
    let mut out = Vec::new();
    loop {
        let (next, items) = page(params.clone()).await.map_err(Error::from_kube)?;
        out.extend(items);
        match next.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_sorted_by_what_waiting_can_change() {
        let api = |code: u16, cause: &str| {
            Error::Api(ApiFailure {
                code,
                reason: String::new(),
                message: "m".into(),
                causes: (!cause.is_empty())
                    .then(|| Cause {
                        reason: cause.into(),
                        field: String::new(),
                        message: String::new(),
                    })
                    .into_iter()
                    .collect(),
            })
        };
        for transient in [
            api(500, ""),
            api(503, ""),
            api(429, ""),
            api(409, ""),
            api(404, ""),
            api(408, ""),
            api(410, ""),
            api(403, "NamespaceTerminating"),
            Error::Transport("reset".into()),
            Error::UnknownKind {
                api_version: "x/v1".into(),
                kind: "K".into(),
            },
        ] {
            assert_eq!(
                Failure::from(transient.clone()).kind,
                Kind::Transient,
                "{transient:?}"
            );
        }
        for permanent in [
            api(400, ""),
            api(401, ""),
            api(403, ""),
            api(422, ""),
            api(413, ""),
            api(409, "FieldManagerConflict"),
            Error::InvalidApiVersion("Apps/V1".into()),
        ] {
            assert_eq!(
                Failure::from(permanent.clone()).kind,
                Kind::Permanent,
                "{permanent:?}"
            );
        }
        assert_eq!(
            Failure::from(Error::Config("no such file".into())).kind,
            Kind::Permanent
        );
    }
}
