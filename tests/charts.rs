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
