//! Charts from Helm repositories and OCI registries, through the real binary: an HTTP
//! repository served from a folder, an OCI registry (Debian's `docker-registry`), charts
//! packaged, indexed and pushed by Helm's own engine, rendered by the `helm` stand-in.

use crate::support::charts::{FileServer, Registry, publish, write_chart};
use crate::support::{Platform, documents};

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  chart: {{ .Chart.Version | quote }}\n";

/// A platform whose agent renders with the Helm stand-in, and a tenant `ai` allowed plain HTTP
/// (the test repositories are on 127.0.0.1) and the `charts` credentials.
fn platform(catalog: &str) -> Option<Platform> {
    let p = Platform::new();
    let helm = crate::support::helm_standin(p.dir.path())?;
    p.file(
        "flotilla.yaml",
        &format!(
            "cluster: dev\nfleet: {{ dir: fleet }}\nrender: {{ helm: {} }}\nstate_dir: state\ncredentials:\n  charts: {{ username: robot, password_file: {}, hosts: [\"127.0.0.1:9\"] }}\n",
            helm.display(),
            p.dir.path().join("chart-password").display()
        ),
    )
    .file("chart-password", "s3cret-registry\n")
    .file(
        "fleet/tenants/ai.yaml",
        "name: ai\nnamespaces: [ai]\nsource: { dir: ../../tenants/ai }\nclusters: [{ labels: {} }]\nlimits: { schemes: [http], credentials: [charts] }\n",
    )
    .file("tenants/ai/tenant.yaml", catalog);
    Some(p)
}

/// Binds the `charts` credentials to `port`.
fn bind_credentials(p: &Platform, port: u16) {
    let config = std::fs::read_to_string(p.dir.path().join("flotilla.yaml")).unwrap();
    p.file(
        "flotilla.yaml",
        &config.replace("127.0.0.1:9\"", &format!("127.0.0.1:{port}\"")),
    );
}

fn skip(test: &str) {
    eprintln!("{test}: no Python with helm-python-sdk (set FLOTILLA_TEST_HELM_PYTHON); skipped");
}

/// The rendered ConfigMap's chart version, and the render header's revision line.
fn rendered_version(p: &Platform) -> (String, String) {
    let run = p.run(&["render"]);
    assert_eq!(run.code, 0, "{run:?}");
    let docs = documents(&run.stdout);
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let header = run
        .stdout
        .lines()
        .find(|l| l.starts_with("# Source:"))
        .unwrap_or_default()
        .to_string();
    (cm["data"]["chart"].as_str().unwrap().to_string(), header)
}

/// A range picks the highest release it takes (no pre-release), a new version is picked up,
/// the index is asked for conditionally, and the revision (version and digest) is shown.
#[test]
fn a_chart_from_a_helm_repository_follows_its_range() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let server = FileServer::start(&repo);
    let catalog = format!(
        "apps:\n  - name: web\n    source: {{ chart: {{ repo: \"{}\", name: web, version: \">=1.0 <2\" }} }}\n",
        server.url()
    );
    let Some(p) = platform(&catalog) else {
        return skip("chart_from_helm_repository");
    };
    for v in ["1.0.0", "1.2.0", "1.5.0-rc.1", "2.0.0"] {
        publish(
            &write_chart(work.path(), "web", v, &[("cm.yaml", CM)]),
            &repo,
            &server.url(),
        );
    }
    let (version, header) = rendered_version(&p);
    assert_eq!(version, "1.2.0");
    assert!(header.contains("@ 1.2.0@sha256:"), "{header}");
    publish(
        &write_chart(work.path(), "web", "1.3.0", &[("cm.yaml", CM)]),
        &repo,
        &server.url(),
    );
    assert_eq!(rendered_version(&p).0, "1.3.0");
    // Archives are cached by digest: each version used was downloaded once, no other one.
    let seen = server.requests();
    let downloads = |name: &str| seen.iter().filter(|s| s.path.ends_with(name)).count();
    assert_eq!(downloads("web-1.2.0.tgz"), 1, "{seen:?}");
    assert_eq!(downloads("web-1.3.0.tgz"), 1, "{seen:?}");
    assert_eq!(downloads("web-2.0.0.tgz"), 0, "{seen:?}");
}

/// An archive whose sha256 is not the one the index gives is refused, naming both; nothing is
/// rendered from it.
#[test]
fn a_chart_whose_digest_does_not_match_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let server = FileServer::start(&repo);
    let catalog = format!(
        "apps:\n  - name: web\n    source: {{ chart: {{ repo: \"{}\", name: web, version: 1.0.0 }} }}\n",
        server.url()
    );
    let Some(p) = platform(&catalog) else {
        return skip("digest_mismatch");
    };
    let tgz = publish(
        &write_chart(work.path(), "web", "1.0.0", &[("cm.yaml", CM)]),
        &repo,
        &server.url(),
    )
    .unwrap();
    // Another chart's archive under this one's name: the index's digest no longer matches.
    let other = work.path().join("other");
    let evil = publish(
        &write_chart(
            work.path(),
            "web",
            "1.0.0",
            &[("cm.yaml", "kind: Secret\n")],
        ),
        &other,
        "http://x",
    )
    .unwrap();
    std::fs::copy(evil, &tgz).unwrap();
    let run = p.run(&["render"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("tenant ai, app web"), "{run:?}");
    assert!(run.stderr.contains("sha256"), "{run:?}");
    assert!(run.stderr.contains("refused"), "{run:?}");
    assert!(!run.stdout.contains("kind: Secret"), "{run:?}");
}

/// Credentials go to the host they are bound to (the repository) and not to another host the
/// index points the archive at.
#[test]
fn chart_credentials_are_sent_only_to_their_host() {
    let work = tempfile::tempdir().unwrap();
    let (index_dir, files_dir) = (work.path().join("index"), work.path().join("files"));
    std::fs::create_dir_all(&index_dir).unwrap();
    std::fs::create_dir_all(&files_dir).unwrap();
    let (index, files) = (FileServer::start(&index_dir), FileServer::start(&files_dir));
    let catalog = format!(
        "apps:\n  - name: web\n    source: {{ chart: {{ repo: \"{}\", name: web, credentials: charts }} }}\n",
        index.url()
    );
    let Some(p) = platform(&catalog) else {
        return skip("credentials_host");
    };
    bind_credentials(&p, index.port);
    publish(
        &write_chart(work.path(), "web", "1.0.0", &[("cm.yaml", CM)]),
        &files_dir,
        &files.url(),
    );
    std::fs::copy(files_dir.join("index.yaml"), index_dir.join("index.yaml")).unwrap();
    assert_eq!(rendered_version(&p).0, "1.0.0");
    let to_index = index.requests();
    let to_files = files.requests();
    assert!(
        to_index.iter().all(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))),
        "{to_index:?}"
    );
    assert_eq!(to_files.len(), 1, "{to_files:?}");
    assert!(
        to_files.iter().all(|s| s.authorization.is_none()),
        "{to_files:?}"
    );
}

/// A chart from an OCI registry with basic auth: tags listed, the range resolved, the manifest
/// and layer digests verified; with the registry down, a render fails saying so and the
/// chart cache still holds the last good chart.
#[test]
fn a_chart_from_an_oci_registry() {
    let work = tempfile::tempdir().unwrap();
    let Some(mut registry) = Registry::start() else {
        eprintln!("oci: docker-registry or htpasswd is not installed; skipped");
        return;
    };
    let catalog = format!(
        "apps:\n  - name: web\n    source: {{ chart: {{ repo: \"{}\", name: web, version: \"~1.2\", credentials: charts }} }}\n",
        registry.url()
    );
    let Some(p) = platform(&catalog) else {
        return skip("oci");
    };
    bind_credentials(&p, registry.port);
    let out = work.path().join("out");
    for v in ["1.1.0", "1.2.0", "1.2.3+build.7", "1.3.0"] {
        let tgz = publish(
            &write_chart(work.path(), "web", v, &[("cm.yaml", CM)]),
            &out,
            "http://x",
        )
        .unwrap();
        registry.push(&tgz);
    }
    let (version, header) = rendered_version(&p);
    assert_eq!(version, "1.2.3+build.7");
    assert!(header.contains("@ 1.2.3+build.7@sha256:"), "{header}");
    // Without credentials the registry refuses, and the error says so.
    let config = std::fs::read_to_string(p.dir.path().join("tenants/ai/tenant.yaml")).unwrap();
    p.file(
        "tenants/ai/tenant.yaml",
        &config.replace(", credentials: charts", ""),
    );
    let run = p.run(&["render"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("wants credentials"), "{run:?}");
    p.file("tenants/ai/tenant.yaml", &config);
    registry.stop();
    let run = p.run(&["render"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{}", registry.port)),
        "{run:?}"
    );
    let cached = std::fs::read_dir(p.dir.path().join("state/charts/refs"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);
}

/// A chart in the tenant's repository whose dependencies are not vendored: one from a Helm
/// repository, one from an OCI registry, fetched and rendered as subcharts; one whose
/// repository cannot be fetched is named.
#[test]
fn chart_dependencies_come_from_each_kind_of_repository() {
    let work = tempfile::tempdir().unwrap();
    let Some(registry) = Registry::start() else {
        eprintln!("dependencies: docker-registry or htpasswd is not installed; skipped");
        return;
    };
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let server = FileServer::start(&repo);
    let Some(p) = platform("apps:\n  - name: shop\n    source: { path: shop }\n") else {
        return skip("dependencies");
    };
    bind_credentials(&p, registry.port);
    const SUB: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Chart.Name }}\n";
    publish(
        &write_chart(work.path(), "from-http", "0.3.0", &[("cm.yaml", SUB)]),
        &repo,
        &server.url(),
    );
    let out = work.path().join("out");
    let tgz = publish(
        &write_chart(work.path(), "from-oci", "2.1.0", &[("cm.yaml", SUB)]),
        &out,
        "http://x",
    )
    .unwrap();
    registry.push(&tgz);
    // The registry wants credentials: the dependency gets those the fleet grants the tenant
    // that are bound to the registry's host.
    let chart = format!(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\ndependencies:\n  - {{ name: from-http, version: \"~0.3\", repository: \"{}\" }}\n  - {{ name: from-oci, version: \"^2\", repository: \"{}\" }}\n",
        server.url(),
        registry.url()
    );
    p.file("tenants/ai/shop/Chart.yaml", &chart)
        .file("tenants/ai/shop/templates/cm.yaml", SUB);
    let run = p.run(&["render"]);
    assert_eq!(run.code, 0, "{run:?}");
    let names: Vec<String> = documents(&run.stdout)
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for name in ["shop", "from-http", "from-oci"] {
        assert!(names.iter().any(|n| n == name), "{name}: {run:?}");
    }
    // The tenant's repository is left as it was; the copy with the dependencies is the agent's.
    assert!(!p.dir.path().join("tenants/ai/shop/charts").exists());

    // A dependency name is one folder below charts/, never a path.
    p.file(
        "tenants/ai/shop/Chart.yaml",
        &chart.replace("name: from-http", "name: ../../escape"),
    );
    let run = p.run(&["render"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("dependency \"../../escape\" is not a chart name"),
        "{run:?}"
    );

    // A dependency that cannot be fetched (a repository alias) is named.
    p.file(
        "tenants/ai/shop/Chart.yaml",
        &chart.replace(&server.url(), "@stable"),
    );
    let run = p.run(&["render"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("dependency from-http is not in charts/"),
        "{run:?}"
    );
}

/// The agent polls a Helm repository with one conditional request per interval, however many
/// units use it, and picks up a new version when the index changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_polls_a_chart_repository_once_per_interval() {
    use crate::support::apply_scenarios::Env;
    use crate::support::daemon::Daemon;
    use crate::support::git::free_port;
    use crate::support::kube_api::ApiServer;
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let Some(helm) = crate::support::helm_standin(env.dir.path()) else {
            return skip("poll");
        };
        let work = tempfile::tempdir().unwrap();
        let repo = work.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let files = FileServer::start(&repo);
        publish(&write_chart(work.path(), "web", "1.0.0", &[("cm.yaml", CM)]), &repo, &files.url());
        let t = env.name("poll");
        let apps: String = (0..5)
            .map(|i| format!("  - {{ name: web{i}, source: {{ chart: {{ repo: \"{}\", name: web }} }} }}\n", files.url()))
            .collect();
        env.tenant(&t, &[&t], "limits: { schemes: [http] }\n", &format!("apps:\n{apps}"));
        let port = free_port();
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!("{config}render: {{ helm: {} }}\ninterval: 3s\nlisten: {{ http: \"127.0.0.1:{port}\" }}\n", helm.display()),
        );
        let d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
        d.wait_ready(std::time::Duration::from_secs(60)).await;
        tokio::time::sleep(std::time::Duration::from_secs(8)).await;
        let index: Vec<_> = files.requests().into_iter().filter(|s| s.path == "/index.yaml").collect();
        // About one per interval (8 s at 3 s, jittered), never one per unit.
        assert!((2..=5).contains(&index.len()), "{index:?}");
        assert!(index[1..].iter().all(|s| s.conditional && s.status == 304), "{index:?}");
        let cm = env.configmap(&t, "web3").await.unwrap();
        assert_eq!(cm["data"]["chart"], "1.0.0");

        publish(&write_chart(work.path(), "web", "1.1.0", &[("cm.yaml", CM)]), &repo, &files.url());
        let mut picked = false;
        for _ in 0..100 {
            let cm = env.configmap(&t, "web3").await.unwrap();
            if cm["data"]["chart"] == "1.1.0" {
                picked = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(picked, "{}", d.logs());
    })
    .await;
}

/// The example platform's two chart apps (a Helm repository and an OCI registry, off by
/// default) render when turned on, here from a podinfo-like chart served on 127.0.0.1: both
/// releases of one chart, the values files and values in their order, no test hook.
#[test]
fn the_examples_chart_apps_render_from_both_kinds_of_repository() {
    let work = tempfile::tempdir().unwrap();
    let Some(registry) = Registry::open() else {
        eprintln!("example charts: docker-registry is not installed; skipped");
        return;
    };
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let files = FileServer::start(&repo);
    let p = Platform::new();
    let Some(helm) = crate::support::helm_standin(p.dir.path()) else {
        return skip("example charts");
    };
    let examples = crate::support::repo_root().join("config/examples");
    for rel in ["fleet", "tenants", "keys"] {
        copy_tree(&examples.join(rel), &p.dir.path().join(rel));
    }
    let catalog = std::fs::read_to_string(examples.join("tenants/ai/tenant.yaml")).unwrap();
    let catalog = catalog
        .replace("https://stefanprodan.github.io/podinfo", &files.url())
        .replace("oci://ghcr.io/stefanprodan/charts", &registry.url())
        .replace(
            "  - match: { name: prod }\n    apps:\n",
            "  - match: { name: prod }\n    apps:\n      podinfo: { enabled: true }\n      podinfo-canary: { enabled: true }\n",
        );
    p.file("tenants/ai/tenant.yaml", &catalog);
    let fleet_ai = std::fs::read_to_string(examples.join("fleet/tenants/ai.yaml")).unwrap();
    p.file(
        "fleet/tenants/ai.yaml",
        &fleet_ai.replace(
            "limits: { clusterScopedKinds: [] }",
            "limits: { clusterScopedKinds: [], schemes: [http] }",
        ),
    )
    .file(
        "flotilla.yaml",
        &format!(
            "cluster: prod\nfleet: {{ dir: fleet }}\nstate_dir: state\nrender: {{ helm: {} }}\ndecryption:\n  ai-key: {{ age_key_file: keys/ai-test.agekey, test_key: true }}\n",
            helm.display()
        ),
    );
    const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n  labels: { helm.sh/chart: \"podinfo-{{ .Chart.Version }}\" }\nspec:\n  replicas: {{ .Values.replicaCount }}\n  selector: { matchLabels: { app: {{ .Release.Name }} } }\n  template:\n    metadata: { labels: { app: {{ .Release.Name }} } }\n    spec:\n      containers:\n        - name: podinfo\n          image: ghcr.io/stefanprodan/podinfo:6.7.0\n          env:\n            - { name: PODINFO_UI_COLOR, value: {{ .Values.ui.color | quote }} }\n            - { name: PODINFO_UI_MESSAGE, value: {{ .Values.ui.message | quote }} }\n";
    const TEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}-grpc-test-{{ randAlphaNum 5 | lower }}\n  annotations: { helm.sh/hook: test }\nspec: { containers: [ { name: t, image: busybox } ] }\n";
    let chart = write_chart(
        work.path(),
        "podinfo",
        "6.7.0",
        &[("deployment.yaml", DEPLOY), ("test.yaml", TEST)],
    );
    std::fs::write(
        chart.join("values.yaml"),
        "replicaCount: 2\nui: { color: \"#000000\", message: \"\" }\n",
    )
    .unwrap();
    publish(&chart, &repo, &files.url());
    let out = work.path().join("out");
    registry.push(&publish(&chart, &out, "http://x").unwrap());

    let run = p.run(&["render", "--tenant", "ai"]);
    assert_eq!(run.code, 0, "{run:?}");
    let docs = documents(&run.stdout);
    let deployment = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {run:?}"))
            .clone()
    };
    let (main, canary) = (deployment("podinfo"), deployment("canary"));
    assert_eq!(
        main["spec"]["replicas"], 1,
        "the app's values over the chart's"
    );
    let env = |d: &serde_json::Value, i: usize| {
        d["spec"]["template"]["spec"]["containers"][0]["env"][i]["value"].clone()
    };
    assert_eq!(
        env(&main, 0),
        "#34577c",
        "values/podinfo.yaml over the chart's"
    );
    assert_eq!(env(&canary, 1), "canary");
    assert!(
        !docs.iter().any(|d| d["kind"] == "Pod"),
        "no test hook: {run:?}"
    );
    assert!(run.stdout.contains("@ 6.7.0@sha256:"), "{run:?}");
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The fleet's infra may be a chart too (a layer with `chart`, `namespace` and `values`), and a
/// chart's values.schema.json errors name the app and the key.
#[test]
fn infra_layers_may_be_charts_and_schema_errors_name_the_key() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let files = FileServer::start(&repo);
    let Some(p) = platform(
        "apps:\n  - { name: strict, source: { path: strict }, values: { replicas: three } }\n",
    ) else {
        return skip("infra charts");
    };
    publish(
        &write_chart(work.path(), "web", "1.0.0", &[("cm.yaml", CM)]),
        &repo,
        &files.url(),
    );
    p.file(
        "fleet/clusters/dev/cluster.yaml",
        &format!(
            "name: dev\nlabels: {{ env: dev }}\ninfra:\n  - {{ name: ingress, chart: {{ repo: \"{}\", name: web, version: \"1.x\" }}, namespace: kube-system, values: {{ a: 1 }} }}\n",
            files.url()
        ),
    )
    .file("tenants/ai/strict/Chart.yaml", "apiVersion: v2\nname: strict\nversion: 0.1.0\n")
    .file(
        "tenants/ai/strict/values.schema.json",
        r#"{"type": "object", "properties": {"replicas": {"type": "integer"}}}"#,
    )
    .file("tenants/ai/strict/templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: strict }\n");
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    let infra = documents(&run.stdout)
        .into_iter()
        .find(|d| d["metadata"]["name"] == "infra-ingress")
        .unwrap_or_else(|| panic!("{run:?}"));
    assert_eq!(infra["metadata"]["namespace"], "kube-system", "{run:?}");
    assert!(run.stdout.contains("# Source: infra/ingress"), "{run:?}");
    assert!(run.stderr.contains("tenant ai, app strict:"), "{run:?}");
    assert!(run.stderr.contains("/replicas"), "{run:?}");
}

/// With the registry down, the agent keeps what the last good chart applied: the unit fails
/// (transient, retried), naming the registry, and nothing of it is pruned or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_down_keeps_the_last_good_chart_applied() {
    use crate::support::apply_scenarios::Env;
    use crate::support::daemon::Daemon;
    use crate::support::git::free_port;
    use crate::support::kube_api::ApiServer;
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let Some(mut registry) = Registry::open() else {
            eprintln!("registry down: docker-registry is not installed; skipped");
            return;
        };
        let Some(helm) = crate::support::helm_standin(env.dir.path()) else {
            return skip("registry down");
        };
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        registry.push(&publish(&write_chart(work.path(), "web", "1.0.0", &[("cm.yaml", CM)]), &out, "http://x").unwrap());
        let t = env.name("down");
        env.tenant(
            &t,
            &[&t],
            "limits: { schemes: [http] }\n",
            &format!("apps:\n  - {{ name: web, source: {{ chart: {{ repo: \"{}\", name: web }} }} }}\n", registry.url()),
        );
        env.write("api-token", "token-for-tests");
        let port = free_port();
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!("{config}render: {{ helm: {} }}\ninterval: 2s\nlisten: {{ http: \"127.0.0.1:{port}\", token_file: api-token }}\n", helm.display()),
        );
        let d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
        d.wait_ready(std::time::Duration::from_secs(60)).await;
        let applied = env.configmap(&t, "web").await.expect("applied from the registry");
        registry.stop();
        let mut failed = None;
        for _ in 0..100 {
            let status = d.status("token-for-tests").await;
            let unit = status["units"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["unit"] == format!("{t}/web"))
                .cloned()
                .unwrap();
            if unit["result"] == "failed" {
                failed = Some(unit);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let unit = failed.unwrap_or_else(|| panic!("never failed: {}", d.logs()));
        let error = unit["last_error"].as_str().unwrap();
        assert!(error.contains(&format!("127.0.0.1:{}", registry.port)), "{unit}");
        assert!(error.contains("chart web"), "{unit}");
        let still = env.configmap(&t, "web").await.expect("not pruned");
        assert_eq!(still["metadata"]["uid"], applied["metadata"]["uid"]);
        assert_eq!(still["data"], applied["data"]);
        assert!(env.configmap(&t, "flotilla-web").await.is_some(), "the inventory stays");
    })
    .await;
}
