//! `flotilla render` and `flotilla validate` on whole platforms: the shipped example for `dev` and
//! `prod` (golden), the real kustomize binary, Helm, and each pre-apply check by its error text.

use crate::support::{Platform, Run, documents, flotilla, repo_root};

/// `unit kind namespace/name sha256` per object: what a cluster gets, in order.
fn summary(run: &Run) -> String {
    let mut out = String::new();
    let mut unit = "";
    for line in run.stdout.lines() {
        if let Some(rest) = line.strip_prefix("# Source: ") {
            unit = rest.split(' ').next().unwrap_or_default();
        }
        if let Some(hash) = line.strip_prefix("# sha256: ") {
            out.push_str(&format!("{unit} {hash}\n"));
        }
    }
    let docs = documents(&run.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), docs.len(), "one header per document");
    lines
        .iter()
        .zip(&docs)
        .map(|(line, d)| {
            let (unit, hash) = line.split_once(' ').unwrap();
            let ns = d["metadata"]["namespace"]
                .as_str()
                .map(|n| format!("{n}/"))
                .unwrap_or_default();
            format!(
                "{unit} {} {ns}{} {hash}\n",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// Compares with `tests/golden/<name>`; `FLOTILLA_BLESS=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = repo_root().join("tests/golden").join(name);
    if std::env::var_os("FLOTILLA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual,
        expected,
        "{name} differs from {} (FLOTILLA_BLESS=1 to update)",
        path.display()
    );
}

fn render_example(cluster: &str) -> Run {
    let run = flotilla(
        &repo_root(),
        &[
            "render",
            "--config",
            "config/examples/flotilla.yaml",
            "--cluster",
            cluster,
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
    run
}

#[test]
fn the_example_renders_the_golden_objects_for_dev_and_prod() {
    golden("examples-dev.txt", &summary(&render_example("dev")));
    golden("examples-prod.txt", &summary(&render_example("prod")));
}

#[test]
fn app_sets_and_values_differ_per_cluster_as_the_catalogs_say() {
    let dev = render_example("dev");
    let prod = render_example("prod");
    let units = |run: &Run| -> std::collections::BTreeSet<String> {
        run.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("# Source: "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let (dev_units, prod_units) = (units(&dev), units(&prod));
    for only_prod in [
        "ai/model-serving",
        "security/falco-rules",
        "bigdata/kafka-ui",
    ] {
        assert!(
            prod_units.contains(only_prod) && !dev_units.contains(only_prod),
            "{only_prod}"
        );
    }
    for only_dev in [
        "ai/notebook-cleanup",
        "bigdata/sandbox",
        "security/audit-dashboard",
    ] {
        assert!(
            dev_units.contains(only_dev) && !prod_units.contains(only_dev),
            "{only_dev}"
        );
    }
    let find = |run: &Run, kind: &str, name: &str| -> serde_json::Value {
        documents(&run.stdout)
            .into_iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap()
    };
    // Per-cluster values (tenant.yaml clusters entries) and variables land in the objects.
    assert_eq!(
        find(&prod, "ResourceQuota", "training")["spec"]["hard"]["requests.nvidia.com/gpu"],
        "16"
    );
    assert_eq!(
        find(&dev, "ResourceQuota", "training")["spec"]["hard"]["requests.nvidia.com/gpu"],
        "2"
    );
    assert_eq!(
        find(&prod, "Deployment", "model-serving")["spec"]["replicas"],
        3
    );
    assert_eq!(
        find(&prod, "Ingress", "model-serving")["spec"]["rules"][0]["host"],
        "models.prod.example.com"
    );
    assert_eq!(
        find(&prod, "StatefulSet", "airflow-worker")["spec"]["replicas"],
        4
    );
    assert_eq!(
        find(&dev, "StatefulSet", "airflow-worker")["spec"]["replicas"],
        1
    );
    // The kustomize overlay is chosen per cluster through ${cluster.labels.env} and built by the
    // real binary; variables are substituted in its output.
    let jupyter = find(&prod, "Deployment", "jupyter");
    assert_eq!(jupyter["spec"]["replicas"], 2);
    assert_eq!(
        jupyter["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "8Gi"
    );
    assert_eq!(
        jupyter["metadata"]["annotations"]["example.com/owner"],
        "ai@example.com"
    );
    assert_eq!(find(&dev, "Deployment", "jupyter")["spec"]["replicas"], 1);
    // Ownership labels and namespaces.
    assert_eq!(jupyter["metadata"]["labels"]["flotilla.dev/tenant"], "ai");
    assert_eq!(jupyter["metadata"]["labels"]["flotilla.dev/app"], "jupyter");
    assert_eq!(jupyter["metadata"]["namespace"], "ai");
    assert_eq!(
        find(&dev, "CronJob", "notebook-cleanup")["metadata"]["namespace"],
        "ai-jobs"
    );
}

#[test]
fn rendering_is_deterministic() {
    let a = render_example("prod");
    let b = render_example("prod");
    assert_eq!(
        a.stdout, b.stdout,
        "same inputs, byte-identical output and hashes"
    );
}

#[test]
fn render_filters_by_tenant_and_app() {
    let run = flotilla(
        &repo_root(),
        &[
            "render",
            "--config",
            "config/examples/flotilla.yaml",
            "--tenant",
            "ai",
            "--app",
            "jupyter",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let sources: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("# Source: "))
        .collect();
    assert_eq!(sources.len(), 2, "{run:?}");
    assert!(
        sources
            .iter()
            .all(|l| l.starts_with("# Source: ai/jupyter ")),
        "{run:?}"
    );
}

#[test]
fn an_unknown_cluster_or_tenant_is_named() {
    let run = flotilla(
        &repo_root(),
        &[
            "render",
            "--config",
            "config/examples/flotilla.yaml",
            "--cluster",
            "staging",
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("cluster \"staging\" is not in the fleet (clusters: dev, prod)"),
        "{run:?}"
    );
    let run = flotilla(
        &repo_root(),
        &[
            "render",
            "--config",
            "config/examples/flotilla.yaml",
            "--tenant",
            "nope",
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("tenant \"nope\" is not in the fleet"),
        "{run:?}"
    );
}

/// Issue 13: a tenant whose fleet file is broken is not silently left out of `render`: the full
/// render prints the other tenants' objects and every fleet and catalog problem, and exits 1;
/// `--tenant` naming the broken tenant says why it could not be read.
#[test]
fn render_reports_every_fleet_and_catalog_problem() {
    let p = Platform::new();
    p.tenant("ops", "[ops]", "apps:\n  - { name: web, source: { path: web } }\n")
        .file("tenants/ops/web/cm.yaml", WEB)
        .tenant("bi", "[bi]", "apps:\n  - { name: x, source: { path: x }, bogus: 1 }\n")
        .file(
            "fleet/tenants/ai.yaml",
            "name: ai\nnamespaces: [ai]\nsource: { url: \"https://git.example.com/ai.git\", ref: { semver: \">=1.0.0 <2.0.0 ||\" } }\nclusters: [{ name: dev }]\n",
        );
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("# Source: ops/web "), "{run:?}");
    let problems: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(problems.len(), 2, "{run:?}");
    assert!(
        problems[0].starts_with("fleet: tenants/ai.yaml:3:")
            && problems[0].contains("source.ref.semver"),
        "{run:?}"
    );
    assert!(
        problems[1].starts_with("tenant bi: tenant.yaml:2:") && problems[1].contains("bogus"),
        "{run:?}"
    );

    let run = p.run(&["render", "--tenant", "ai"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(
        run.stderr
            .contains("tenant \"ai\" could not be read from the fleet: tenants/ai.yaml:3:"),
        "{run:?}"
    );
    let run = p.run(&["render", "--tenant", "bi"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("tenant bi: tenant.yaml:2:"), "{run:?}");
}

const WEB: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  host: web.${vars.domain}\n";

#[test]
fn a_broken_app_fails_alone_and_the_others_still_render() {
    let p = Platform::new();
    p.tenant("ai", "[ai]", "apps:\n  - { name: web, source: { path: apps/web } }\n  - { name: broken, source: { path: apps/broken } }\n")
        .file("tenants/ai/apps/web/cm.yaml", WEB)
        .file("tenants/ai/apps/broken/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n")
        .file("tenants/ai/apps/broken/b.yaml", "apiVersion: v1\nkind: Secret\nmetadata: { name: s, namespace: other }\n")
        .tenant("data", "[data]", "apps:\n  - { name: etl, source: { path: etl } }\n")
        .file("tenants/data/etl/job.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: etl }\n");
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    let names: Vec<String> = documents(&run.stdout)
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["web", "etl"], "{run:?}");
    assert_eq!(
        documents(&run.stdout)[0]["data"]["host"],
        "web.dev.example.com"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "both files of the broken app are reported: {run:?}"
    );
    assert!(
        lines[0].starts_with(
            "tenant ai, app broken: apps/broken/a.yaml:4:9: not valid YAML: unclosed bracket"
        ),
        "{run:?}"
    );
    assert_eq!(
        lines[1],
        "tenant ai, app broken: apps/broken/b.yaml:1: Secret other/s: namespace other is not one of the tenant's namespaces (ai); refused"
    );
}

#[test]
fn an_undefined_variable_is_named_with_its_file_and_line() {
    let p = Platform::new();
    p.tenant("ai", "[ai]", "apps:\n  - { name: web, source: { path: web }, values: { port: 80 } }\n")
        .file("tenants/ai/web/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: c }\ndata:\n  port: \"${values.port}\"\n  user: ${values.user}\n  home: $${HOME}\n");
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "tenant ai, app web: web/cm.yaml:line 6: undefined variable ${values.user} (write $${values.user} for a literal)"
    );
}

#[test]
fn missing_identity_fields_and_lists_are_handled_per_document() {
    let p = Platform::new();
    p.tenant("ai", "[ai]", "apps:\n  - { name: web, source: { path: web } }\n").file(
        "tenants/ai/web/all.yml",
        "---\n---\napiVersion: v1\nkind: List\nitems:\n  - { apiVersion: v1, kind: ConfigMap, metadata: { name: a } }\n  - { apiVersion: v1, kind: ConfigMap, metadata: { name: b } }\n---\nkind: Service\nmetadata: { name: svc }\n",
    );
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "tenant ai, app web: web/all.yml:9: Service svc: missing apiVersion"
    );
    // Errors hold the unit back entirely: nothing of a failed unit is printed.
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn the_same_object_from_two_tenants_fails_both() {
    let p = Platform::new();
    let pc = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: { name: high }\nvalue: 1000\n";
    for t in ["ai", "data"] {
        p.file(
            &format!("fleet/tenants/{t}.yaml"),
            &format!("name: {t}\nnamespaces: [{t}]\nsource: {{ dir: ../../tenants/{t} }}\nclusters: [{{ name: dev }}]\nlimits: {{ clusterScopedKinds: [scheduling.k8s.io/PriorityClass] }}\n"),
        )
        .file(&format!("tenants/{t}/tenant.yaml"), "apps:\n  - { name: prio, source: { path: p } }\n")
        .file(&format!("tenants/{t}/p/pc.yaml"), pc);
    }
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        [
            "tenant ai, app prio: PriorityClass.scheduling.k8s.io high is also rendered by data/prio; an object must have one owner",
            "tenant data, app prio: PriorityClass.scheduling.k8s.io high is also rendered by ai/prio; an object must have one owner",
        ]
    );
    // Asking for one tenant reports the same: the other catalogs are still read.
    let run = p.run(&["render", "--tenant", "ai"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("also rendered by data/prio"), "{run:?}");
}

#[test]
fn a_kustomize_failure_carries_its_stderr() {
    let p = Platform::new();
    p.tenant(
        "ai",
        "[ai]",
        "apps:\n  - { name: web, source: { path: web } }\n",
    )
    .file(
        "tenants/ai/web/kustomization.yaml",
        "resources:\n  - broken.yaml\n",
    )
    // A resource that exists (missing ones are refused before kustomize runs) but that
    // kustomize cannot read.
    .file("tenants/ai/web/broken.yaml", "kind: [unclosed\n");
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .starts_with("tenant ai, app web: web: kustomize build failed: exit status: 1: "),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("broken.yaml"),
        "kustomize's own message: {run:?}"
    );
}

#[test]
fn a_symlink_out_of_the_repository_is_refused() {
    let p = Platform::new();
    p.tenant(
        "ai",
        "[ai]",
        "apps:\n  - { name: web, source: { path: web } }\n",
    )
    .file(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: { name: stolen }\n",
    )
    .file(
        "tenants/ai/web/ok.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: ok }\n",
    );
    std::os::unix::fs::symlink(
        p.dir.path().join("secret.yaml"),
        p.dir.path().join("tenants/ai/web/link.yaml"),
    )
    .unwrap();
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "tenant ai, app web: web/link.yaml: leaves the repository through a symlink; refused"
    );
    assert!(!run.stdout.contains("stolen"), "{run:?}");
}

#[test]
fn helm_charts_render_with_helm_or_say_that_helm_is_needed() {
    let p = Platform::new();
    p.tenant("ai", "[ai]", "apps:\n  - { name: chart, source: { path: chart }, values: { greeting: hello } }\n")
        .file("tenants/ai/chart/Chart.yaml", "apiVersion: v2\nname: chart\nversion: 0.1.0\n")
        .file("tenants/ai/chart/values.yaml", "greeting: default\nreplicas: 1\n")
        .file(
            "tenants/ai/chart/templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  greeting: {{ .Values.greeting }}\n  replicas: \"{{ .Values.replicas }}\"\n",
        );
    // Helm's own engine through the stand-in (CI installs its SDK); without it, the message.
    match crate::support::helm_standin(p.dir.path()) {
        Some(helm) => {
            p.file(
                "flotilla.yaml",
                &format!(
                    "cluster: dev\nfleet: {{ dir: fleet }}\nrender: {{ helm: {} }}\n",
                    helm.display()
                ),
            );
            let run = p.run(&["render"]);
            assert_eq!(run.code, 0, "{run:?}");
            let docs = documents(&run.stdout);
            assert_eq!(docs[0]["metadata"]["name"], "chart");
            assert_eq!(
                docs[0]["data"]["greeting"], "hello",
                "app values over chart defaults"
            );
            assert_eq!(docs[0]["data"]["replicas"], "1", "chart defaults kept");
        }
        None => {
            eprintln!(
                "helm_charts_render: no Python with helm-python-sdk (set FLOTILLA_TEST_HELM_PYTHON); testing the message only"
            );
            let run = p.run(&["render"]);
            assert_eq!(run.code, 1, "{run:?}");
            assert_eq!(
                run.stderr.trim(),
                "tenant ai, app chart: chart: app chart is a Helm chart (Chart.yaml) and Helm is needed to render it: install helm, or set render.helm in the agent config"
            );
        }
    }
}

#[test]
fn validate_checks_every_cluster_and_every_catalog() {
    let p = Platform::new();
    p.tenant(
        "ai",
        "[ai]",
        "apps:\n  - name: web\n    source: { path: web }\n    enabled: false\n    dependsOn: [ghost]\nclusters:\n  - match: { name: prod }\n    apps:\n      web: { enabled: true }\n      wbe: { enabled: true }\n",
    )
    .file("tenants/ai/web/cm.yaml", WEB)
    .file("fleet/tenants/data.yaml", "name: data\nnamespaces: [data]\nsource: { dir: ../../tenants/data }\nclusters: [{ name: dev }]\nprune: maybe\n")
    .file("tenants/data/tenant.yaml", "apps: []\n");
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        [
            "fleet: tenants/data.yaml:5:8: prune: expected a boolean (true or false), found a string",
            "tenant ai: tenant.yaml:10:7: clusters[0].apps.wbe: no app named \"wbe\" in apps",
            "flotilla.yaml: 2 problems",
        ],
        "{run:?}"
    );
    // With the catalog fixed, the prod-only problem appears, named by its cluster.
    p.file(
        "tenants/ai/tenant.yaml",
        "apps:\n  - name: web\n    source: { path: web }\n    enabled: false\n    dependsOn: [ghost]\nclusters:\n  - match: { name: prod }\n    apps:\n      web: { enabled: true }\n",
    )
    .file("fleet/tenants/data.yaml", "name: data\nnamespaces: [data]\nsource: { dir: ../../tenants/data }\nclusters: [{ name: dev }]\n")
    .file("tenants/data/tenant.yaml", "apps: []\n");
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.lines().next().unwrap(),
        "cluster prod: tenant ai, app web: tenant.yaml: dependsOn names \"ghost\", which is not an app of tenant ai"
    );
}

#[test]
fn a_kustomize_call_that_hangs_is_stopped_at_the_timeout() {
    let p = Platform::new();
    p.tenant("ai", "[ai]", "apps:\n  - { name: web, source: { path: web } }\n  - { name: plain, source: { path: plain } }\n")
        .file("tenants/ai/web/kustomization.yaml", "resources: []\n")
        .file("tenants/ai/plain/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: fine }\n")
        .file("bin/kustomize", "#!/bin/sh\nexec sleep 30\n")
        .file("flotilla.yaml", "cluster: dev\nfleet: { dir: fleet }\nrender: { kustomize: ./bin/kustomize, timeout: 1s }\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        p.dir.path().join("bin/kustomize"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let run = p.run(&["render"]);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "the timeout stopped it: {run:?}"
    );
    assert_eq!(run.code, 1, "{run:?}");
    let bin = p.dir.path().join("bin/kustomize");
    assert_eq!(
        run.stderr.trim(),
        format!(
            "tenant ai, app web: web: kustomize build failed: {} did not finish within 1s",
            bin.display()
        )
    );
    assert_eq!(
        documents(&run.stdout)[0]["metadata"]["name"],
        "fine",
        "the other app still renders"
    );
}

#[test]
fn a_tenant_catalog_cannot_use_local_directories_or_ungranted_credentials() {
    let p = Platform::new();
    p.file("key", "k").file("known_hosts", "");
    p.file(
        "flotilla.yaml",
        "cluster: dev\nfleet: { dir: fleet }\ncredentials:\n  platform: { ssh_key_file: key, known_hosts_file: known_hosts, hosts: [host] }\n  shared: { ssh_key_file: key, known_hosts_file: known_hosts, hosts: [host] }\n",
    );
    p.tenant(
        "ai",
        "[ai]",
        "apps:\n  - { name: steal, source: { dir: ../../fleet } }\n  - { name: borrow, source: { url: \"ssh://git@host/fleet.git\", credentials: platform } }\n  - { name: probe, source: { url: \"ssh://git@host/fleet.git\", credentials: nosuch } }\n  - { name: local, source: { url: \"file:///srv/git/fleet.git\" } }\n  - { name: abs, source: { url: /srv/git/fleet.git } }\n  - { name: plain, source: { url: \"git://host/fleet.git\" } }\n",
    );
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines[..6],
        [
            "tenant ai: tenant.yaml:2:35: apps[0].source.dir: a tenant's apps cannot use local directories; use a path in the tenant repo or a Git url",
            "tenant ai: tenant.yaml:3:77: apps[1].source.credentials: credentials \"platform\" are not granted to tenant ai for this repository (the fleet grants them in tenants/ai.yaml limits.credentials)",
            // A name the agent does not hold gets the same answer: no probing for names.
            "tenant ai: tenant.yaml:4:76: apps[2].source.credentials: credentials \"nosuch\" are not granted to tenant ai for this repository (the fleet grants them in tenants/ai.yaml limits.credentials)",
            // Local paths and git:// only where the fleet allows them (limits.schemes).
            "tenant ai: tenant.yaml:5:35: apps[3].source.url: file URLs are not allowed for tenant ai's apps (the fleet allows them in tenants/ai.yaml limits.schemes)",
            "tenant ai: tenant.yaml:6:33: apps[4].source.url: file URLs are not allowed for tenant ai's apps (the fleet allows them in tenants/ai.yaml limits.schemes)",
            "tenant ai: tenant.yaml:7:35: apps[5].source.url: git URLs are not allowed for tenant ai's apps (the fleet allows them in tenants/ai.yaml limits.schemes)",
        ],
        "{run:?}"
    );
}

#[test]
fn two_files_for_one_tenant_are_reported() {
    let p = Platform::new();
    p.tenant("ai", "[ai]", "apps: []\n").file(
        "fleet/tenants/ai.yml",
        "name: ai\nnamespaces: [other]\nsource: { dir: ../../tenants/ai }\nclusters: [{ name: dev }]\n",
    );
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("fleet: tenants/ai.yml: tenant ai is also defined by tenants/ai.yaml; keep one file per tenant"),
        "{run:?}"
    );
}

#[test]
fn an_oversized_manifest_file_is_refused() {
    let p = Platform::new();
    p.tenant(
        "ai",
        "[ai]",
        "apps:\n  - { name: web, source: { path: web } }\n",
    );
    let mut big =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: { name: big }\ndata:\n  x: \"");
    big.push_str(&"a".repeat(9 << 20));
    big.push_str("\"\n");
    p.file("tenants/ai/web/big.yaml", &big);
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "tenant ai, app web: web/big.yaml: 9 MiB is over the 8 MiB a manifest file may have"
    );
}

/// Infra in layers: folders under `clusters/<name>/infra/` are units of their own (a folder of
/// manifests stays one unit `infra`); an `infra:` list in `cluster.yaml` names shared folders
/// and their order; a broken list or tenant setting is reported with file, line and field.
#[test]
fn infra_layers_come_from_folders_or_the_cluster_file() {
    let cm = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: {name}, namespace: kube-system }}\n"
        )
    };
    let p = Platform::new();
    p.file("fleet/clusters/dev/infra/controllers/a.yaml", &cm("a"))
        .file("fleet/clusters/dev/infra/configs/b.yaml", &cm("b"))
        .file("fleet/clusters/prod/infra/c.yaml", &cm("c"))
        .file("fleet/clusters/prod/infra/nested/d.yaml", &cm("d"));
    let dev = p.run(&["render"]);
    assert_eq!(dev.code, 0, "{dev:?}");
    assert!(
        dev.stdout
            .contains("# Source: infra/configs clusters/dev/infra/configs/b.yaml"),
        "{dev:?}"
    );
    assert!(
        dev.stdout
            .contains("# Source: infra/controllers clusters/dev/infra/controllers/a.yaml"),
        "{dev:?}"
    );
    let objects = documents(&dev.stdout);
    assert_eq!(
        objects[0]["metadata"]["labels"]["flotilla.dev/app"],
        "infra.configs"
    );
    let prod = p.run(&["render", "--cluster", "prod"]);
    assert_eq!(prod.code, 0, "{prod:?}");
    assert!(
        prod.stdout
            .contains("# Source: infra clusters/prod/infra/c.yaml"),
        "{prod:?}"
    );
    assert!(
        prod.stdout
            .contains("# Source: infra clusters/prod/infra/nested/d.yaml"),
        "{prod:?}"
    );

    // A list in cluster.yaml: a shared folder first, then the cluster's own after it.
    p.file("fleet/infra/base/shared.yaml", &cm("shared")).file(
        "fleet/clusters/dev/cluster.yaml",
        "name: dev\nlabels: { env: dev }\ninfra:\n  - { name: base, path: infra/base }\n  - { name: own, path: clusters/dev/infra/configs, dependsOn: [base], wait: true }\n",
    );
    let dev = p.run(&["render"]);
    assert_eq!(dev.code, 0, "{dev:?}");
    let base = dev
        .stdout
        .find("# Source: infra/base infra/base/shared.yaml")
        .expect("base");
    let own = dev
        .stdout
        .find("# Source: infra/own clusters/dev/infra/configs/b.yaml")
        .expect("own");
    assert!(base < own, "{dev:?}");
    assert!(
        !dev.stdout.contains("controllers/a.yaml"),
        "only what the list names: {dev:?}"
    );

    // Mistakes, each named.
    p.file(
        "fleet/clusters/dev/cluster.yaml",
        "name: dev\ninfra:\n  - { name: base, path: ../outside }\n  - { name: own, path: x, dependsOn: [nothing] }\ntenantDefaults: { namespaceLabels: [a] }\n",
    )
    .tenant("ai", "[ai, { name: ai-jobs, labels: { zone: b } }]", "apps: []\n")
    .file(
        "fleet/tenants/ai.yaml",
        "name: ai\nnamespaces: [ai]\nsource: { dir: ../../tenants/ai }\nclusters: [{ labels: {} }]\ndependsOn: [configs]\nresourceQuota: 5\n",
    );
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    for problem in [
        "clusters/dev/cluster.yaml:3:",
        "infra[0].path",
        "tenantDefaults.namespaceLabels",
        "tenants/ai.yaml:5:",
        "dependsOn: \"configs\" is not an infra unit's name",
        "tenants/ai.yaml:6:",
        "resourceQuota: expected a mapping",
    ] {
        assert!(run.stderr.contains(problem), "{problem}: {run:?}");
    }
}

/// What would silently change the infra units or fail every onboarding is refused by name: a
/// layer folder that is not a valid name, a layer name too long for a label, a tenant named
/// `infra`, a label that is not one.
#[test]
fn layer_and_namespace_mistakes_are_named() {
    let p = Platform::new();
    p.file(
        "fleet/clusters/dev/infra/CRDs/a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: a, namespace: kube-system }\n",
    )
    .file(
        "fleet/clusters/prod/cluster.yaml",
        &format!("name: prod\ninfra:\n  - {{ name: {}, path: x }}\n", "l".repeat(48)),
    )
    .file(
        "fleet/tenants/infra.yaml",
        "name: infra\nnamespaces: [infra-ns]\nsource: { dir: ../../tenants/x }\nclusters: [{ name: dev }]\n",
    )
    .file(
        "fleet/tenants/ai.yaml",
        "name: ai\nnamespaces: [ai]\nsource: { dir: ../../tenants/ai }\nclusters: [{ name: dev }]\nnamespaceLabels: { \"bad key!\": x, ok: \"-no\" }\n",
    )
    .file("tenants/ai/tenant.yaml", "apps: []\n");
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    for problem in [
        "clusters/dev/infra/CRDs/: each folder here is an infra layer",
        "clusters/prod/cluster.yaml:3:",
        "is longer than the 47 characters",
        "tenants/infra.yaml:1:",
        "\"infra\" is reserved",
        "\"bad key!\" is not a valid label or annotation key",
        "\"-no\" is not a valid label value",
    ] {
        assert!(run.stderr.contains(problem), "{problem}: {run:?}");
    }
}

/// `valuesFiles` and `releaseName`, rendered by Helm's engine (the stand-in): precedence, lowest
/// first, is the chart's values.yaml, the app's files in order, the matching cluster entries'
/// files, the app's `values`, the cluster entries' `values`; variables in the paths; a missing
/// file is an error naming it, unless `optional: true`.
#[test]
fn values_files_and_release_names_as_helm_users_expect() {
    let p = Platform::new();
    let Some(helm) = crate::support::helm_standin(p.dir.path()) else {
        eprintln!(
            "values_files: no Python with helm-python-sdk (set FLOTILLA_TEST_HELM_PYTHON); skipped"
        );
        return;
    };
    p.file(
        "flotilla.yaml",
        &format!("cluster: dev\nfleet: {{ dir: fleet }}\nrender: {{ helm: {} }}\n", helm.display()),
    )
    .tenant(
        "ai",
        "[ai]",
        "apps:\n  - name: chart\n    source: { path: chart }\n    releaseName: shop-eu\n    valuesFiles: [values/common.yaml, \"values/${cluster.name}.yaml\", { path: values/missing.yaml, optional: true }]\n    values: { d: app }\nclusters:\n  - match: { name: dev }\n    apps:\n      chart: { valuesFiles: [values/late.yaml], values: { e: cluster } }\n",
    )
    .file("tenants/ai/chart/Chart.yaml", "apiVersion: v2\nname: chart\nversion: 0.1.0\n")
    .file(
        "tenants/ai/chart/values.yaml",
        "a: chart\nb: chart\nc: chart\nd: chart\ne: chart\nf: chart\n",
    )
    .file("tenants/ai/values/common.yaml", "b: common\nc: common\nd: common\ne: common\n")
    .file("tenants/ai/values/dev.yaml", "c: dev\nd: dev\n")
    .file("tenants/ai/values/late.yaml", "d: late\ne: late\nf: late\n")
    .file(
        "tenants/ai/chart/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  a: {{ .Values.a }}\n  b: {{ .Values.b }}\n  c: {{ .Values.c }}\n  d: {{ .Values.d }}\n  e: {{ .Values.e }}\n  f: {{ .Values.f }}\n",
    );
    // Test hooks are Helm's to run on demand, never a sync's; install hooks stay.
    p.file(
        "tenants/ai/chart/templates/test.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}-test-{{ randAlphaNum 5 | lower }}\n  annotations: { helm.sh/hook: test }\nspec: { containers: [ { name: t, image: busybox } ] }\n",
    )
    .file(
        "tenants/ai/chart/templates/setup.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: setup\n  annotations: { helm.sh/hook: pre-install }\n",
    );
    let run = p.run(&["render"]);
    assert_eq!(run.code, 0, "{run:?}");
    let docs = documents(&run.stdout);
    assert!(!docs.iter().any(|d| d["kind"] == "Pod"), "{run:?}");
    assert!(
        docs.iter().any(|d| d["metadata"]["name"] == "setup"),
        "{run:?}"
    );
    // Two renders of the same input are the same (the test hook's random name is gone).
    assert_eq!(p.run(&["render"]).stdout, run.stdout);
    assert_eq!(docs[0]["metadata"]["name"], "shop-eu", "the release name");
    let data = &docs[0]["data"];
    for (key, from) in [
        ("a", "chart"),
        ("b", "common"),
        ("c", "dev"),
        ("d", "app"),
        ("e", "cluster"),
        ("f", "late"),
    ] {
        assert_eq!(data[key], from, "{key}: {data}");
    }

    // A file that must be there and is not: the app fails, naming it; the rest renders.
    p.file(
        "tenants/ai/tenant.yaml",
        "apps:\n  - { name: chart, source: { path: chart }, valuesFiles: [values/prod-only.yaml] }\n  - { name: plain, source: { path: plain } }\n",
    )
    .file(
        "tenants/ai/plain/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: plain }\n",
    );
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "tenant ai, app chart: valuesFiles: values/prod-only.yaml: no such file in tenant ai's repository"
        ),
        "{run:?}"
    );
    assert!(run.stdout.contains("name: plain"), "{run:?}");

    // A values file that leads out of the tenant's folder (to another tenant's, or the agent's
    // files), or is no regular file, is refused; an empty one holds no values.
    std::os::unix::fs::symlink(
        "../../../flotilla.yaml",
        p.dir.path().join("tenants/ai/values/out.yaml"),
    )
    .unwrap();
    let fifo = p.dir.path().join("tenants/ai/values/fifo.yaml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    p.file("tenants/ai/values/empty.yaml", "# nothing here\n");
    for (file, why) in [
        (
            "values/out.yaml",
            "leaves the repository through a symlink; refused",
        ),
        ("values/fifo.yaml", "not a regular file"),
    ] {
        p.file(
            "tenants/ai/tenant.yaml",
            &format!("apps:\n  - {{ name: chart, source: {{ path: chart }}, valuesFiles: [values/empty.yaml, {file}] }}\n"),
        );
        let run = p.run(&["render"]);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr
                .contains(&format!("tenant ai, app chart: valuesFiles: {file}: {why}")),
            "{file}: {run:?}"
        );
        assert!(!run.stdout.contains("cluster: dev"), "{run:?}");
    }
}

/// A chart that renders differently each time (a random password) is refused on its unit,
/// naming the objects that differ, instead of being applied again on every sync.
#[test]
fn a_chart_that_renders_differently_each_time_is_named() {
    let p = Platform::new();
    let Some(helm) = crate::support::helm_standin(p.dir.path()) else {
        eprintln!(
            "determinism: no Python with helm-python-sdk (set FLOTILLA_TEST_HELM_PYTHON); skipped"
        );
        return;
    };
    p.file(
        "flotilla.yaml",
        &format!("cluster: dev\nfleet: {{ dir: fleet }}\nrender: {{ helm: {} }}\n", helm.display()),
    )
    .tenant("ai", "[ai]", "apps:\n  - { name: db, source: { path: db } }\n")
    .file("tenants/ai/db/Chart.yaml", "apiVersion: v2\nname: db\nversion: 0.1.0\n")
    .file(
        "tenants/ai/db/templates/secret.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: credentials }\ndata: { password: {{ randAlphaNum 16 | quote }} }\n",
    )
    .file(
        "tenants/ai/db/templates/stable.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: settings }\ndata: { size: \"1\" }\n",
    );
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the chart renders differently each time")
            && run
                .stderr
                .contains("Objects that differ: ConfigMap credentials")
            && !run.stderr.contains("settings"),
        "{run:?}"
    );
}
