//! Tests of `units.rs`.
use super::*;
use crate::config::{GitRef, SourceLocation, SourceSpec};
use crate::fleet::{App, AppOptions, ClusterEntry, Matcher, NamespacePolicy, OnRemoval, Override};
use serde_json::json;

fn cluster(name: &str, env: &str) -> Cluster {
    Cluster {
        decryption: Vec::new(),
        name: name.into(),
        labels: BTreeMap::from([("env".into(), env.into())]),
        vars: BTreeMap::from([("domain".into(), format!("{name}.example.com"))]),
        infra: Vec::new(),
        tenant_defaults: Default::default(),
    }
}

fn tenant(name: &str, namespaces: &[&str], clusters: Vec<Matcher>) -> Tenant {
    Tenant {
        decryption: Vec::new(),
        name: name.into(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        service_account: "flotilla-tenant".into(),
        role: "admin".into(),
        source: SourceSpec {
            location: SourceLocation::Dir("/nowhere".into()),
            reference: GitRef::DefaultBranch,
            path: None,
            credentials: None,
            verify: None,
        },
        clusters,
        interval: None,
        prune: true,
        suspend: false,
        vars: BTreeMap::from([("domain".into(), "tenant-wins.example.com".into())]),
        cluster_scoped_kinds: vec![],
        credentials: vec![],
        schemes: vec![],
        remote_bases: false,
        on_removal: OnRemoval::Keep,
        namespace_policy: Default::default(),
        namespace_overrides: Default::default(),
        depends_on: vec![],
        app_verify: None,
        file: format!("tenants/{name}.yaml"),
    }
}

fn app(name: &str, enabled: bool, deps: &[&str]) -> App {
    App {
        name: name.into(),
        source: AppSource::Tenant {
            path: format!("apps/{name}"),
        },
        enabled,
        namespace: None,
        values: json!({"replicas": 1, "db": {"host": "db", "port": 5432}}),
        values_files: vec![],
        release_name: None,
        depends_on: deps.iter().map(|s| s.to_string()).collect(),
        options: AppOptions::default(),
    }
}

fn fleet_of(tenants: Vec<Tenant>) -> Fleet {
    Fleet {
        clusters: BTreeMap::new(),
        tenants: tenants.into_iter().map(|t| (t.name.clone(), t)).collect(),
    }
}

fn ids(p: &Placement) -> Vec<String> {
    p.units.iter().map(|u| u.id.to_string()).collect()
}

#[test]
fn a_tenant_not_placed_on_the_cluster_yields_nothing() {
    let fleet = fleet_of(vec![tenant(
        "ai",
        &["ai"],
        vec![Matcher::Name("prod".into())],
    )]);
    let catalogs = BTreeMap::from([(
        "ai".into(),
        Catalog {
            apps: vec![app("web", true, &[])],
            clusters: vec![],
        },
    )]);
    assert!(
        place(&fleet, &cluster("dev", "dev"), &catalogs)
            .units
            .is_empty()
    );
    assert_eq!(
        ids(&place(&fleet, &cluster("prod", "prod"), &catalogs)),
        vec!["ai/web"]
    );
}

#[test]
fn matching_entries_apply_in_file_order_and_values_deep_merge() {
    let entry = |m: Matcher, enabled: Option<bool>, values: serde_json::Value| ClusterEntry {
        matcher: m,
        apps: vec![(
            "web".into(),
            Override {
                enabled,
                values: Some(values),
                values_files: vec![],
            },
        )],
    };
    let catalog = Catalog {
        apps: vec![app("web", false, &[])],
        clusters: vec![
            entry(
                Matcher::Labels(BTreeMap::from([("env".into(), "prod".into())])),
                Some(true),
                json!({"replicas": 2, "db": {"port": 6432}}),
            ),
            entry(
                Matcher::Name("prod-eu".into()),
                None,
                json!({"replicas": 5}),
            ),
            entry(
                Matcher::Name("other".into()),
                Some(false),
                json!({"replicas": 9}),
            ),
        ],
    };
    let fleet = fleet_of(vec![tenant(
        "ai",
        &["ai"],
        vec![Matcher::Labels(BTreeMap::new())],
    )]);
    let catalogs = BTreeMap::from([("ai".into(), catalog)]);
    let placed = place(&fleet, &cluster("prod-eu", "prod"), &catalogs);
    let unit = &placed.units[0];
    assert_eq!(
        unit.values,
        json!({"replicas": 5, "db": {"host": "db", "port": 6432}})
    );
    assert_eq!(
        unit.vars["vars.domain"], "tenant-wins.example.com",
        "tenant vars override cluster vars"
    );
    assert_eq!(unit.vars["cluster.labels.env"], "prod");
    assert_eq!(unit.namespace.as_deref(), Some("ai"));
    assert_eq!(
        unit.identity,
        Identity::ServiceAccount {
            namespace: "ai".into(),
            name: "flotilla-tenant".into()
        }
    );
    assert!(
        place(&fleet, &cluster("dev", "dev"), &catalogs)
            .units
            .is_empty(),
        "disabled by default"
    );
}

#[test]
fn app_paths_take_variables_and_must_stay_in_the_repo() {
    let mut web = app("web", true, &[]);
    web.source = AppSource::Tenant {
        path: "apps/web/overlays/${cluster.labels.env}".into(),
    };
    let mut bad = app("bad", true, &[]);
    bad.source = AppSource::Tenant {
        path: "apps/${vars.nope}".into(),
    };
    let mut out = app("out", true, &[]);
    out.source = AppSource::Tenant {
        path: "${values.up}/etc".into(),
    };
    out.values = json!({"up": ".."});
    let fleet = fleet_of(vec![tenant(
        "ai",
        &["ai"],
        vec![Matcher::Name("prod".into())],
    )]);
    let catalogs = BTreeMap::from([(
        "ai".into(),
        Catalog {
            apps: vec![web, bad, out],
            clusters: vec![],
        },
    )]);
    let placed = place(&fleet, &cluster("prod", "prod"), &catalogs);
    assert_eq!(
        placed.units[0].source,
        UnitSource::Tenant {
            path: "apps/web/overlays/prod".into()
        }
    );
    let problems: Vec<String> = placed.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        vec![
            "tenant ai, app bad: tenant.yaml: source.path \"apps/${vars.nope}\": undefined variable ${vars.nope}",
            "tenant ai, app out: tenant.yaml: source.path \"${values.up}/etc\" becomes \"../etc\" must not contain '..': it would leave the repository",
        ]
    );
}

#[test]
fn depends_on_must_name_an_enabled_app_without_cycles() {
    let catalog = Catalog {
        apps: vec![
            app("db", true, &[]),
            app("api", true, &["db", "cache"]),
            app("web", true, &["api", "ghost"]),
            app("a", true, &["b"]),
            app("b", true, &["c"]),
            app("c", true, &["a"]),
            app("cache", false, &[]),
            app("ok", true, &["db"]),
            app("d", true, &["c"]),
            app("e", true, &["d"]),
        ],
        clusters: vec![],
    };
    let fleet = fleet_of(vec![tenant(
        "ai",
        &["ai"],
        vec![Matcher::Name("prod".into())],
    )]);
    let placed = place(
        &fleet,
        &cluster("prod", "prod"),
        &BTreeMap::from([("ai".into(), catalog)]),
    );
    assert_eq!(ids(&placed), vec!["ai/db", "ai/ok"]);
    let mut problems: Vec<String> = placed.problems.iter().map(|p| p.to_string()).collect();
    problems.sort();
    assert_eq!(
        problems,
        vec![
            "tenant ai, app a: tenant.yaml: dependsOn cycle: a → b → c → a",
            "tenant ai, app api: tenant.yaml: dependsOn names \"cache\", which is not enabled on cluster prod",
            "tenant ai, app b: tenant.yaml: dependsOn cycle: a → b → c → a",
            "tenant ai, app c: tenant.yaml: dependsOn cycle: a → b → c → a",
            "tenant ai, app d: tenant.yaml: dependsOn names \"c\", which is held back on cluster prod (see its problem)",
            "tenant ai, app e: tenant.yaml: dependsOn names \"d\", which is held back on cluster prod (see its problem)",
            "tenant ai, app web: tenant.yaml: dependsOn names \"ghost\", which is not an app of tenant ai",
        ]
    );
}

#[test]
fn two_tenants_claiming_one_namespace_are_both_held_back() {
    let everywhere = || vec![Matcher::Labels(BTreeMap::new())];
    let fleet = fleet_of(vec![
        tenant("ai", &["ai", "shared"], everywhere()),
        tenant("data", &["data", "shared"], everywhere()),
        tenant("sec", &["sec"], everywhere()),
    ]);
    let catalog = || Catalog {
        apps: vec![app("web", true, &[])],
        clusters: vec![],
    };
    let catalogs = BTreeMap::from([
        ("ai".into(), catalog()),
        ("data".into(), catalog()),
        ("sec".into(), catalog()),
    ]);
    let placed = place(&fleet, &cluster("prod", "prod"), &catalogs);
    assert_eq!(ids(&placed), vec!["sec/web"]);
    assert_eq!(
        placed.problems[0].to_string(),
        "tenant ai: namespace shared on cluster prod is claimed by tenants ai, data"
    );
}

fn layer(name: &str, deps: &[&str]) -> InfraUnit {
    InfraUnit {
        depends_on: deps.iter().map(|d| format!("infra/{d}")).collect(),
        ..InfraUnit::folder(format!("infra/{name}"), format!("infra/{name}"))
    }
}

#[test]
fn infra_layers_are_units_and_tenant_apps_wait_for_the_ones_they_name() {
    let mut prod = cluster("prod", "prod");
    prod.infra = vec![
        layer("controllers", &[]),
        layer("configs", &["controllers"]),
    ];
    let mut ai = tenant("ai", &["ai"], vec![Matcher::Name("prod".into())]);
    ai.depends_on = vec!["infra/controllers".into()];
    let catalogs = BTreeMap::from([(
        "ai".into(),
        Catalog {
            apps: vec![
                app("web", true, &["infra/configs", "db"]),
                app("db", true, &[]),
            ],
            clusters: vec![],
        },
    )]);
    let p = place(&fleet_of(vec![ai]), &prod, &catalogs);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(
        ids(&p),
        vec!["infra/controllers", "infra/configs", "ai/web", "ai/db"]
    );
    let unit = |id: &str| p.units.iter().find(|u| u.id.to_string() == id).unwrap();
    assert_eq!(unit("infra/configs").depends_on, vec!["infra/controllers"]);
    assert_eq!(unit("infra/configs").identity, Identity::Agent);
    // The app's own infra entries and its tenant's; its app dependencies stay apart.
    assert_eq!(unit("ai/web").depends_on, vec!["db"]);
    assert_eq!(
        unit("ai/web").after_infra,
        vec!["infra/configs", "infra/controllers"]
    );
    assert_eq!(unit("ai/db").after_infra, vec!["infra/controllers"]);
    assert_eq!(
        UnitId::infra_named("infra/configs").label(),
        "infra.configs"
    );
}

#[test]
fn an_unknown_or_cyclic_infra_dependency_holds_back_exactly_its_dependents() {
    let mut prod = cluster("prod", "prod");
    prod.infra = vec![
        layer("a", &["b"]),
        layer("b", &["a"]),
        layer("c", &["ghost"]),
        layer("d", &[]),
    ];
    let ai = tenant("ai", &["ai"], vec![Matcher::Name("prod".into())]);
    let catalogs = BTreeMap::from([(
        "ai".into(),
        Catalog {
            apps: vec![
                app("after-a", true, &["infra/a"]),
                app("after-d", true, &["infra/d"]),
                app("after-nothing", true, &["infra/missing"]),
            ],
            clusters: vec![],
        },
    )]);
    let p = place(&fleet_of(vec![ai]), &prod, &catalogs);
    assert_eq!(ids(&p), vec!["infra/d", "ai/after-d"]);
    let problem = |id: &str| {
        p.problems
            .iter()
            .filter(|q| matches!(&q.owner, Owner::Unit(u) if u.to_string() == id))
            .map(|q| q.detail.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    assert!(problem("infra/a").contains("cycle"), "{:?}", p.problems);
    assert!(
        problem("infra/c").contains("\"infra/ghost\", which is not an infra unit of cluster prod"),
        "{:?}",
        p.problems
    );
    assert!(
        problem("ai/after-a").contains("\"infra/a\", which is held back"),
        "{:?}",
        p.problems
    );
    assert!(
        problem("ai/after-nothing").contains("not an infra unit"),
        "{:?}",
        p.problems
    );
}

#[test]
fn namespace_policies_merge_cluster_tenant_and_namespace() {
    let defaults = NamespacePolicy {
        labels: BTreeMap::from([
            ("tier".into(), "shared".into()),
            ("zone".into(), "a".into()),
        ]),
        limit_range: Some(json!({"limits": []})),
        ..Default::default()
    };
    let mut t = tenant("ai", &["ai", "ai-jobs"], vec![]);
    t.namespace_policy = NamespacePolicy {
        labels: BTreeMap::from([("zone".into(), "b".into())]),
        resource_quota: Some(json!({"hard": {"pods": "10"}})),
        ..Default::default()
    };
    t.namespace_overrides.insert(
        "ai-jobs".into(),
        NamespacePolicy {
            labels: BTreeMap::from([("zone".into(), "c".into())]),
            resource_quota: Some(json!({"hard": {"pods": "50"}})),
            ..Default::default()
        },
    );
    let ai = t.policy_of("ai", &defaults);
    assert_eq!(ai.labels["tier"], "shared");
    assert_eq!(ai.labels["zone"], "b");
    assert_eq!(ai.resource_quota, Some(json!({"hard": {"pods": "10"}})));
    assert_eq!(ai.limit_range, Some(json!({"limits": []})));
    let jobs = t.policy_of("ai-jobs", &defaults);
    assert_eq!(jobs.labels["zone"], "c");
    assert_eq!(jobs.resource_quota, Some(json!({"hard": {"pods": "50"}})));
}

#[test]
fn an_app_after_a_held_back_app_is_held_back_and_a_bare_infra_may_be_an_app() {
    let prod = cluster("prod", "prod");
    let ai = tenant("ai", &["ai"], vec![Matcher::Name("prod".into())]);
    let catalogs = BTreeMap::from([(
        "ai".into(),
        Catalog {
            apps: vec![
                app("first", true, &["infra/missing"]),
                app("second", true, &["first"]),
                app("infra", true, &[]),
                app("after-infra-app", true, &["infra"]),
            ],
            clusters: vec![],
        },
    )]);
    let p = place(&fleet_of(vec![ai]), &prod, &catalogs);
    assert_eq!(
        ids(&p),
        vec!["ai/infra", "ai/after-infra-app"],
        "{:?}",
        p.problems
    );
    let unit = p
        .units
        .iter()
        .find(|u| u.id.app == "after-infra-app")
        .unwrap();
    assert_eq!(unit.depends_on, vec!["infra"], "the tenant's own app infra");
    assert!(unit.after_infra.is_empty());
    assert!(
        p.problems
            .iter()
            .any(|q| q.owner == Owner::Unit(UnitId::app("ai", "second"))
                && q.detail.contains("\"first\", which is held back")),
        "{:?}",
        p.problems
    );
}
