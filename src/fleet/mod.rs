//! The fleet model: clusters and tenants from the fleet repo, each tenant's catalog
//! (`tenant.yaml`), and the **units** they make for one cluster: the cluster's infra unit and one
//! unit per tenant app enabled there.
//!
//! Pure: it reads files from checkouts already on local disk and never touches the network, tokio
//! or a cluster. Problems are collected, never fatal to unrelated tenants: a broken tenant file or
//! catalog takes out that tenant only, a broken app that app only.

mod catalog;
pub(crate) mod layers;
mod parse;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use catalog::read_catalog;
pub use parse::read_fleet;
pub use units::{Placement, place};

use crate::config::SourceSpec;

/// The longest `interval` a fleet or tenant file may ask for (a unit is reconciled at least
/// weekly).
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest health `timeout` a fleet or tenant file may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Everything the fleet repo says.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    pub clusters: BTreeMap<String, Cluster>,
    pub tenants: BTreeMap<String, Tenant>,
}

/// `clusters/<name>/cluster.yaml`, plus the cluster's infra units.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub vars: BTreeMap<String, String>,
    /// The infra units, in order: the `infra:` list of `cluster.yaml`; else each folder under
    /// `clusters/<name>/infra/` when it holds folders only; else that folder as one unit `infra`.
    pub infra: Vec<InfraUnit>,
    /// What the platform writes into every tenant's namespaces on this cluster
    /// (`tenantDefaults`); a tenant's own settings win.
    pub tenant_defaults: NamespacePolicy,
    /// The agent's `decryption` keys the cluster's infra units may use (SOPS files).
    pub decryption: Vec<String>,
}

/// One infra unit of a cluster: applied with the agent's identity.
#[derive(Clone, Debug, PartialEq)]
pub struct InfraUnit {
    /// The unit's name: `infra` (the whole folder) or `infra/<name>`.
    pub name: String,
    /// Its folder, relative to the fleet root (a folder shared by several clusters is fine);
    /// empty for a chart.
    pub path: String,
    /// A chart from a Helm repository or an OCI registry instead of a folder.
    pub chart: Option<crate::config::ChartSpec>,
    /// The release namespace of a chart, and the namespace of namespaced objects that name none.
    pub namespace: Option<String>,
    /// The chart's values.
    pub values: serde_json::Value,
    /// Infra units (by their full name, `infra/<name>`) that must converge first.
    pub depends_on: Vec<String>,
    /// Wait for its objects' health before it counts as converged (always, when something
    /// depends on it).
    pub wait: bool,
    pub timeout: Option<Duration>,
}

impl InfraUnit {
    /// A layer that is a folder of the fleet, with no dependencies.
    pub fn folder(name: String, path: String) -> InfraUnit {
        InfraUnit {
            name,
            path,
            chart: None,
            namespace: None,
            values: serde_json::Value::Object(Default::default()),
            depends_on: Vec::new(),
            wait: false,
            timeout: None,
        }
    }
}

/// What the platform writes into a tenant's namespaces at onboarding, with the agent's
/// identity: labels and annotations on the Namespace (Pod Security levels, network-policy
/// selectors, cost centres), and a ResourceQuota and a LimitRange (`flotilla-tenant`) in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespacePolicy {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The `spec` of the ResourceQuota.
    pub resource_quota: Option<serde_json::Value>,
    /// The `spec` of the LimitRange.
    pub limit_range: Option<serde_json::Value>,
}

/// Where something lands: `{ name: prod }` or `{ labels: { env: prod } }` (all labels must match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    Name(String),
    Labels(BTreeMap<String, String>),
}

/// `tenants/<name>.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub name: String,
    /// The agent's `decryption` keys the tenant's SOPS files may be opened with.
    pub decryption: Vec<String>,
    /// The namespaces the tenant owns; the first is where its ServiceAccount lives.
    pub namespaces: Vec<String>,
    pub service_account: String,
    /// The ClusterRole bound to the ServiceAccount in each namespace.
    pub role: String,
    /// The tenant repo (its `tenant.yaml` is at the root, or at `path`).
    pub source: SourceSpec,
    pub clusters: Vec<Matcher>,
    pub interval: Option<Duration>,
    pub prune: bool,
    pub suspend: bool,
    pub vars: BTreeMap<String, String>,
    /// Cluster-scoped kinds the tenant may apply (`PriorityClass`, `storage.k8s.io/StorageClass`).
    pub cluster_scoped_kinds: Vec<String>,
    /// Agent credentials the tenant's app repos may use, besides its own source's (which serves
    /// its own repository only).
    pub credentials: Vec<String>,
    /// URL schemes the tenant's app repos may use besides `https` and `ssh`: `http`, `git`,
    /// `file` (which also stands for absolute paths); none by default.
    pub schemes: Vec<String>,
    /// Whether its kustomizations may fetch remote bases and resources (off by default).
    pub remote_bases: bool,
    /// What happens to the tenant's objects when it leaves this cluster.
    pub on_removal: OnRemoval,
    /// For all its namespaces, over the cluster's `tenantDefaults`.
    pub namespace_policy: NamespacePolicy,
    /// Per namespace, over the tenant's: labels and annotations of a `namespaces` entry.
    pub namespace_overrides: BTreeMap<String, NamespacePolicy>,
    /// Infra units (`infra/<name>`, or `infra`) every app of the tenant waits for.
    pub depends_on: Vec<String>,
    /// The signatures its app repos must carry (`limits.verify`, else its own source's
    /// `verify`): an app may ask for more, never less.
    pub app_verify: Option<crate::config::Verify>,
    /// The file it came from, relative to the fleet root.
    pub file: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnRemoval {
    /// Keep the objects; report the tenant as removed.
    #[default]
    Keep,
    /// Prune the tenant's objects (never its namespaces).
    Prune,
}

/// A tenant's `tenant.yaml`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub apps: Vec<App>,
    pub clusters: Vec<ClusterEntry>,
}

/// One app of a catalog, with its defaults for clusters that say nothing about it.
#[derive(Clone, Debug, PartialEq)]
pub struct App {
    pub name: String,
    pub source: AppSource,
    pub enabled: bool,
    pub namespace: Option<String>,
    /// A mapping: Helm values and `${values.x}` substitution.
    pub values: serde_json::Value,
    /// Values files in the tenant's repository, in order (below `values`).
    pub values_files: Vec<ValuesFile>,
    /// The Helm release name (default: the app's name).
    pub release_name: Option<String>,
    pub depends_on: Vec<String>,
    pub options: AppOptions,
}

/// A values file of an app: a path in the tenant's repository (variables allowed), and whether
/// it may be missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValuesFile {
    pub path: String,
    pub optional: bool,
}

/// Where an app's manifests are.
#[derive(Clone, Debug, PartialEq)]
pub enum AppSource {
    /// A folder of the tenant repo (may contain `${...}` variables).
    Tenant { path: String },
    /// A separate app repo, pinned by its ref.
    Repo(SourceSpec),
    /// A chart from a Helm repository or an OCI registry.
    Chart(crate::config::ChartSpec),
}

/// Per-app options; `None` falls back to the tenant's setting or the default.
#[derive(Clone, Debug, PartialEq)]
pub struct AppOptions {
    pub prune: Option<bool>,
    /// Take over fields owned by other field managers on conflict (default on).
    pub force: bool,
    /// Wait for the unit's objects to become healthy before it counts as converged.
    pub wait: bool,
    pub timeout: Option<Duration>,
    /// Allow an empty render to prune everything the unit applied before.
    pub allow_empty: bool,
    /// Delete and recreate an object whose change touches an immutable field.
    pub recreate: bool,
    pub interval: Option<Duration>,
    pub suspend: Option<bool>,
}

impl Default for AppOptions {
    fn default() -> AppOptions {
        AppOptions {
            prune: None,
            force: true,
            wait: false,
            timeout: None,
            allow_empty: false,
            recreate: false,
            interval: None,
            suspend: None,
        }
    }
}

/// A `clusters` entry of a catalog: for matching clusters, enable/disable apps and override values.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterEntry {
    pub matcher: Matcher,
    pub apps: Vec<(String, Override)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Override {
    pub enabled: Option<bool>,
    pub values: Option<serde_json::Value>,
    /// Values files added for matching clusters, after the app's own.
    pub values_files: Vec<ValuesFile>,
}

/// One thing reconciled on its own: the cluster infra unit or one tenant app.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    pub id: UnitId,
    pub identity: Identity,
    /// The namespace given to namespaced objects that name none (`None` for infra: they must).
    pub namespace: Option<String>,
    pub source: UnitSource,
    /// The merged values: app defaults ← matching cluster entries, in file order. With
    /// `values_files`, what those files hold comes first, these over them (the pipeline merges).
    pub values: serde_json::Value,
    /// Values files in the tenant's repository, paths substituted: the app's, then its matching
    /// cluster entries', in order.
    pub values_files: Vec<ValuesFile>,
    /// The Helm release name.
    pub release_name: String,
    /// Variables for `${...}` substitution, flattened (`cluster.name`, `vars.domain`, ...);
    /// `values.*` are looked up in `values`.
    pub vars: BTreeMap<String, String>,
    /// Units that must converge first: apps of the same tenant, or for an infra unit other
    /// infra units (`infra/<name>`).
    pub depends_on: Vec<String>,
    /// Infra units a tenant app waits for (`infra/<name>`): its tenant's and its own.
    pub after_infra: Vec<String>,
    pub options: UnitOptions,
    /// What a tenant unit may touch; `None` for the infra unit.
    pub limits: Option<Limits>,
    /// The `decryption` keys its SOPS files may be opened with (its tenant's, or for infra the
    /// cluster's).
    pub decryption: Vec<String>,
}

/// `tenant/app`, or `infra` for the cluster's infra unit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId {
    pub tenant: Option<String>,
    pub app: String,
}

/// Who a unit's API calls are made as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The agent's own identity (the infra unit).
    Agent,
    /// Impersonating `system:serviceaccount:<namespace>:<name>`.
    ServiceAccount { namespace: String, name: String },
}

/// Where a unit's manifests are, relative to which checkout.
#[derive(Clone, Debug, PartialEq)]
pub enum UnitSource {
    /// A folder of the fleet repo.
    Fleet { path: String },
    /// A folder of the tenant's repo.
    Tenant { path: String },
    /// An app repo; `path` is already substituted.
    Repo(SourceSpec),
    /// A chart from a Helm repository or an OCI registry.
    Chart(crate::config::ChartSpec),
}

#[derive(Clone, Debug, PartialEq)]
pub struct UnitOptions {
    pub prune: bool,
    pub force: bool,
    pub wait: bool,
    pub timeout: Option<Duration>,
    pub allow_empty: bool,
    pub recreate: bool,
    pub interval: Option<Duration>,
    pub suspend: bool,
}

impl Default for UnitOptions {
    /// Prune what left Git and force conflicts (as Argo CD and kube-applier do); the rest off.
    fn default() -> UnitOptions {
        UnitOptions {
            prune: true,
            force: true,
            wait: false,
            timeout: None,
            allow_empty: false,
            recreate: false,
            interval: None,
            suspend: false,
        }
    }
}

/// The boundaries of a tenant unit, checked before anything reaches a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub namespaces: Vec<String>,
    pub cluster_scoped_kinds: Vec<String>,
    /// Whether its kustomizations may use remote bases and resources (`limits.remoteBases`).
    pub remote_bases: bool,
}

/// A problem found in the fleet, a catalog or a unit, with whose it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub owner: Owner,
    /// `file:line:col: field: message`, or a message with the object it is about.
    pub detail: String,
    /// Permanent, but for a source that could not be fetched for a transient reason.
    pub kind: crate::failure::Kind,
}

/// Whose a problem is: it decides what fails (the fleet, one tenant, one unit).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    Fleet,
    Tenant(String),
    Unit(UnitId),
}

// === impl Matcher ===

impl Matcher {
    pub fn matches(&self, cluster: &Cluster) -> bool {
        match self {
            Matcher::Name(name) => *name == cluster.name,
            Matcher::Labels(labels) => labels.iter().all(|(k, v)| cluster.labels.get(k) == Some(v)),
        }
    }
}

// === impl Limits ===

impl Limits {
    /// Whether the tenant may apply cluster-scoped objects of `kind` in `group`
    /// (`limits.clusterScopedKinds` names `Kind` or `group/Kind`).
    pub fn allows_cluster_kind(&self, group: &str, kind: &str) -> bool {
        self.cluster_scoped_kinds
            .iter()
            .any(|k| k == kind || *k == format!("{group}/{kind}"))
    }
}

// === impl Tenant ===

impl Tenant {
    /// What the platform writes into namespace `ns` of this tenant on a cluster whose
    /// `tenantDefaults` are `defaults`.
    pub fn policy_of(&self, ns: &str, defaults: &NamespacePolicy) -> NamespacePolicy {
        let mut policy = defaults.with(&self.namespace_policy);
        if let Some(over) = self.namespace_overrides.get(ns) {
            policy = policy.with(over);
        }
        policy
    }

    pub fn lands_on(&self, cluster: &Cluster) -> bool {
        self.clusters.iter().any(|m| m.matches(cluster))
    }
}

// === impl UnitId ===

impl UnitId {
    /// The value of the `flotilla.dev/app` label of the unit's objects: the app's name, or for
    /// an infra layer `infra.controllers` (a label value has no `/`; an app name has no `.`).
    pub fn label(&self) -> String {
        self.app.replace('/', ".")
    }

    /// An infra unit by its name (`infra`, `infra/controllers`).
    pub fn infra_named(name: &str) -> UnitId {
        UnitId {
            tenant: None,
            app: name.to_string(),
        }
    }
    pub fn app(tenant: &str, app: &str) -> UnitId {
        UnitId {
            tenant: Some(tenant.to_string()),
            app: app.to_string(),
        }
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "{t}/{}", self.app),
            None => f.write_str(&self.app),
        }
    }
}

// === impl Owner ===

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Fleet => f.write_str("fleet"),
            Owner::Tenant(t) => write!(f, "tenant {t}"),
            Owner::Unit(UnitId {
                tenant: Some(t),
                app,
            }) => write!(f, "tenant {t}, app {app}"),
            Owner::Unit(UnitId { tenant: None, app }) => write!(f, "cluster {app}"),
        }
    }
}

// === impl NamespacePolicy ===

impl NamespacePolicy {
    /// `self` with `over` on top: labels and annotations key by key, a quota or limit range
    /// replaced whole.
    pub fn with(&self, over: &NamespacePolicy) -> NamespacePolicy {
        let mut out = self.clone();
        out.labels.extend(over.labels.clone());
        out.annotations.extend(over.annotations.clone());
        if over.resource_quota.is_some() {
            out.resource_quota = over.resource_quota.clone();
        }
        if over.limit_range.is_some() {
            out.limit_range = over.limit_range.clone();
        }
        out
    }
}

// === impl Problem ===

impl Problem {
    /// A permanent problem: it stays until the fleet, the catalog or the app changes.
    pub fn new(owner: Owner, detail: impl Into<String>) -> Problem {
        Problem::of_kind(owner, detail, crate::failure::Kind::Permanent)
    }

    pub fn of_kind(owner: Owner, detail: impl Into<String>, kind: crate::failure::Kind) -> Problem {
        Problem {
            owner,
            detail: detail.into(),
            kind,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.owner, self.detail)
    }
}
