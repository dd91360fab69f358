//! RBAC as the real authorizer evaluates it, over the Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding objects stored in the server; the bootstrap roles and bindings of a fresh
//! cluster; and the escalation check on writes of roles and bindings.

use serde_json::{Value, json};

/// Who is making a request, after authentication and impersonation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, groups: &[&str]) -> User {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if name != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User {
            name: name.into(),
            groups,
        }
    }

    /// A ServiceAccount's user, with the groups the token authenticator gives it.
    pub fn service_account(namespace: &str, name: &str) -> User {
        User::new(
            &format!("system:serviceaccount:{namespace}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{namespace}"),
            ],
        )
    }

    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// What is asked: a resource request or a non-resource path.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    /// `configmaps` or `deployments/status`; empty for a non-resource request.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub urls: Vec<String>,
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Rule {
            verbs: list("verbs"),
            groups: list("apiGroups"),
            resources: list("resources"),
            names: list("resourceNames"),
            urls: list("nonResourceURLs"),
        }
    }

    fn allows(&self, a: &Attributes) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == a.verb);
        if !verb {
            return false;
        }
        if a.resource.is_empty() {
            return self.urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || (u.ends_with('*') && a.path.starts_with(&u[..u.len() - 1]))
            });
        }
        let group = self.groups.iter().any(|g| g == "*" || *g == a.group);
        let resource = self
            .resources
            .iter()
            .any(|r| resource_matches(r, &a.resource));
        let name = self.names.is_empty() || (!a.name.is_empty() && self.names.contains(&a.name));
        group && resource && name
    }

    /// The real server's wording of a rule in escalation errors.
    fn describe(&self) -> String {
        let q = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut parts = Vec::new();
        if !self.groups.is_empty() || self.urls.is_empty() {
            parts.push(format!("APIGroups:[{}]", q(&self.groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:[{}]", q(&self.resources)));
        }
        if !self.names.is_empty() {
            parts.push(format!("ResourceNames:[{}]", q(&self.names)));
        }
        if !self.urls.is_empty() {
            parts.push(format!("NonResourceURLs:[{}]", q(&self.urls)));
        }
        parts.push(format!("Verbs:[{}]", q(&self.verbs)));
        format!("{{{}}}", parts.join(", "))
    }
}

fn resource_matches(rule: &str, resource: &str) -> bool {
    if rule == "*" || rule == resource {
        return true;
    }
    match (rule.split_once('/'), resource.split_once('/')) {
        (Some(("*", sub)), Some((_, rsub))) => sub == rsub,
        (Some((res, "*")), Some((rres, _))) => res == rres,
        _ => false,
    }
}

/// The role and binding objects the authorizer reads.
pub struct Policy<'a> {
    pub roles: Vec<&'a Value>,
    pub cluster_roles: Vec<&'a Value>,
    pub role_bindings: Vec<&'a Value>,
    pub cluster_role_bindings: Vec<&'a Value>,
}

impl Policy<'_> {
    fn subject_matches(user: &User, subject: &Value, binding_ns: &str) -> bool {
        let name = subject["name"].as_str().unwrap_or_default();
        match subject["kind"].as_str() {
            Some("User") => user.name == name,
            Some("Group") => user.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = subject["namespace"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(binding_ns);
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    }

    fn binds(user: &User, binding: &Value) -> bool {
        let ns = binding["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        binding["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| Self::subject_matches(user, s, ns)))
    }

    fn role_rules(&self, role_ref: &Value, namespace: &str) -> Vec<Rule> {
        let name = role_ref["name"].as_str().unwrap_or_default();
        let role = match role_ref["kind"].as_str() {
            Some("ClusterRole") => self
                .cluster_roles
                .iter()
                .find(|r| r["metadata"]["name"] == name),
            Some("Role") => self
                .roles
                .iter()
                .find(|r| r["metadata"]["name"] == name && r["metadata"]["namespace"] == namespace),
            _ => None,
        };
        role.and_then(|r| r["rules"].as_array())
            .map(|rules| rules.iter().map(Rule::from_json).collect())
            .unwrap_or_default()
    }

    /// The rules `user` holds in `namespace` (cluster-wide rules only when `namespace` is empty).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<Rule> {
        let mut out = Vec::new();
        for b in &self.cluster_role_bindings {
            if Self::binds(user, b) {
                out.extend(self.role_rules(&b["roleRef"], ""));
            }
        }
        if !namespace.is_empty() {
            for b in &self.role_bindings {
                if b["metadata"]["namespace"] == namespace && Self::binds(user, b) {
                    out.extend(self.role_rules(&b["roleRef"], namespace));
                }
            }
        }
        out
    }

    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        superuser(user)
            || self
                .rules_for(user, &a.namespace)
                .iter()
                .any(|r| r.allows(a))
    }

    /// The escalation check: the rules in `requested` that `user` does not hold in `namespace`.
    pub fn not_held(&self, user: &User, namespace: &str, requested: &[Rule]) -> Vec<Rule> {
        if superuser(user) {
            return Vec::new();
        }
        let owned = self.rules_for(user, namespace);
        let mut missing = Vec::new();
        for rule in requested {
            for atom in atoms(rule) {
                if !owned.iter().any(|o| covers(o, &atom)) {
                    missing.push(atom);
                }
            }
        }
        missing
    }
}

/// Members of `system:masters` are allowed everything before RBAC is asked, as on a real server.
fn superuser(user: &User) -> bool {
    user.groups.iter().any(|g| g == "system:masters")
}

/// A rule broken into one verb, one group and one resource (and one name or URL) per rule.
fn atoms(rule: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.urls {
            out.push(Rule {
                verbs: vec![verb.clone()],
                urls: vec![url.clone()],
                ..Rule::default()
            });
        }
        for group in &rule.groups {
            for resource in &rule.resources {
                let names: Vec<Vec<String>> = if rule.names.is_empty() {
                    vec![Vec::new()]
                } else {
                    rule.names.iter().map(|n| vec![n.clone()]).collect()
                };
                for names in names {
                    out.push(Rule {
                        verbs: vec![verb.clone()],
                        groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        names,
                        urls: Vec::new(),
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` covers the single-valued rule `atom` (a requested `*` needs an owned `*`).
fn covers(owner: &Rule, atom: &Rule) -> bool {
    let has = |list: &[String], item: &str| list.iter().any(|x| x == "*" || x == item);
    if !has(&owner.verbs, &atom.verbs[0]) {
        return false;
    }
    if let Some(url) = atom.urls.first() {
        return owner.urls.iter().any(|u| {
            u == "*" || u == url || (u.ends_with('*') && url.starts_with(&u[..u.len() - 1]))
        });
    }
    let resource = &atom.resources[0];
    has(&owner.groups, &atom.groups[0])
        && owner
            .resources
            .iter()
            .any(|r| resource_matches(r, resource))
        && (owner.names.is_empty() || atom.names.first().is_some_and(|n| owner.names.contains(n)))
}

/// The message of a refused escalation, as the real server words it.
pub fn escalation_message(resource: &str, name: &str, user: &User, missing: &[Rule]) -> String {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let rules: Vec<String> = missing.iter().map(Rule::describe).collect();
    format!(
        "{resource} {name:?} is forbidden: user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        groups.join(" "),
        rules.join("\n")
    )
}

/// Rules of the bootstrap roles: `(apiGroups, resources, verbs)`.
type Rules = &'static [(
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
)];

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = super::resources::VERBS;

/// The rules Kubernetes aggregates into `view`.
#[rustfmt::skip]
const TO_VIEW: Rules = &[
    (&[""], &["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services", "services/status"], READ),
    (&[""], &["bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status", "replicationcontrollers/status", "resourcequotas", "resourcequotas/status"], READ),
    (&[""], &["namespaces"], READ),
    (&["discovery.k8s.io"], &["endpointslices"], READ),
    (&["apps"], &["controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"], READ),
    (&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
    (&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
    (&["extensions"], &["daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status", "ingresses", "ingresses/status", "networkpolicies", "replicasets", "replicasets/scale", "replicasets/status", "replicationcontrollers/scale"], READ),
    (&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
    (&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
];

/// The rules Kubernetes aggregates into `edit` (besides `view`'s).
#[rustfmt::skip]
const TO_EDIT: Rules = &[
    (&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
    (&[""], &["serviceaccounts"], &["impersonate"]),
    (&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
    (&[""], &["pods/eviction"], &["create"]),
    (&[""], &["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy"], WRITE),
    (&[""], &["serviceaccounts/token"], &["create"]),
    (&["apps"], &["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale"], WRITE),
    (&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
    (&["batch"], &["cronjobs", "jobs"], WRITE),
    (&["extensions"], &["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "ingresses", "networkpolicies", "replicasets", "replicasets/scale", "replicationcontrollers/scale"], WRITE),
    (&["policy"], &["poddisruptionbudgets"], WRITE),
    (&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
    (&["coordination.k8s.io"], &["leases"], ALL),
];

/// The rules Kubernetes aggregates into `admin` (besides `edit`'s).
#[rustfmt::skip]
const TO_ADMIN: Rules = &[
    (&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
    (&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], ALL),
];

fn rules_json(rules: Rules) -> Value {
    Value::Array(
        rules
            .iter()
            .map(|(g, r, v)| json!({"apiGroups": g, "resources": r, "verbs": v}))
            .collect(),
    )
}

fn cluster_role(name: &str, labels: Value, rules: Value, aggregate: Option<&str>) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {
            "name": name, "labels": labels,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    });
    if let Some(to) = aggregate {
        role["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}
        ]});
    }
    role
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": groups.iter().map(|g| json!({
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g,
        })).collect::<Vec<_>>(),
    })
}

/// The ClusterRoles and ClusterRoleBindings a fresh cluster starts with (those that matter to
/// tenants); `admin`, `edit` and `view` are filled in by aggregation.
pub fn bootstrap() -> Vec<Value> {
    let discovery: Vec<&str> = vec![
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    let public: Vec<&str> = vec!["/healthz", "/livez", "/readyz", "/version", "/version/"];
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ]),
            None,
        ),
        cluster_role("admin", json!({}), json!([]), Some("admin")),
        cluster_role(
            "edit",
            json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            json!([]),
            Some("edit"),
        ),
        cluster_role(
            "view",
            json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            json!([]),
            Some("view"),
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            rules_json(TO_ADMIN),
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            rules_json(TO_EDIT),
            None,
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
            rules_json(TO_VIEW),
            None,
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            json!([{"nonResourceURLs": discovery, "verbs": ["get"]}]),
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            json!([{"nonResourceURLs": public, "verbs": ["get"]}]),
            None,
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            json!([
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ]),
            None,
        ),
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
    ]
}

/// Whether `labels` match one of an aggregation rule's `clusterRoleSelectors` (matchLabels only).
pub fn selected(aggregation: &Value, labels: &Value) -> bool {
    aggregation["clusterRoleSelectors"]
        .as_array()
        .is_some_and(|selectors| {
            selectors.iter().any(|s| {
                s["matchLabels"].as_object().is_some_and(|m| {
                    !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
            })
        })
}
