//! A hostile tenant cannot hurt the agent or another tenant (issue 14): one test per attack,
//! through the real binary against the test API server. Each attack fails, is reported on the
//! attacking tenant's unit with its reason, and a well-behaved tenant beside it still converges.

use std::sync::Arc;
use std::time::Duration;

use crate::support::apply_scenarios::Env;
use crate::support::daemon::Daemon;
use crate::support::git::{Repo, free_port, git};
use crate::support::kube_api::ApiServer;

/// A platform with a well-behaved tenant `good-*` (one ConfigMap) and an attacker `evil-*` whose
/// catalog and files the test writes; returns `(good, evil)`.
fn platform(env: &Env, evil_extra: &str, evil_catalog: &str) -> (String, String) {
    let good = env.name("good");
    let evil = env.name("evil");
    env.tenant(
        &good,
        &[&good],
        "",
        "apps:\n  - { name: web, source: { path: web } }\n",
    );
    env.write(
        &format!("tenants/{good}/web/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\ndata: { a: \"1\" }\n",
    );
    env.tenant(&evil, &[&evil], evil_extra, evil_catalog);
    (good, evil)
}

/// The well-behaved tenant's object was applied.
async fn good_converged(env: &Env, good: &str) {
    let cm = env.configmap(good, "web").await;
    assert_eq!(
        cm.expect("the good tenant's ConfigMap")["data"]["a"],
        "1",
        "the good tenant converged"
    );
}

/// The block `run --once` printed for the set named `name` (`tenant t, app a`): its heading line
/// and the indented lines under it.
fn report(stdout: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in stdout.lines() {
        if line.starts_with(name) {
            inside = true;
        } else if !line.starts_with("  ") {
            inside = false;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

async fn with_env<F, Fut>(scenario: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(scenario).await;
}

/// Attack 9: an `apiVersion` crafted to steer the agent's discovery request
/// (`apps/v1/deployments?watch=1&x=`) is refused at render, naming the object; no request of the
/// tenant's making reaches the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_steered_by_a_crafted_api_version() {
    with_env(|env| async move {
        let (good, evil) = platform(&env, "", "apps:\n  - { name: steer, source: { path: steer } }\n");
        env.write(
            &format!("tenants/{evil}/steer/x.yaml"),
            "apiVersion: apps/v1/deployments?watch=1&x=\nkind: Deployment\nmetadata: { name: x }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: \"../../secrets/x\" }\n",
        );
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        let steer = report(&run.stdout, &format!("tenant {evil}, app steer"));
        assert!(steer.contains("FAILED"), "{run:?}");
        assert!(
            steer.contains("steer/x.yaml:1: Deployment \"x\": apiVersion \"apps/v1/deployments?watch=1&x=\" is not a version (v1) or group/version (apps/v1)"),
            "{run:?}"
        );
        assert!(steer.contains("metadata.name \"../../secrets/x\" is not a valid name"), "{run:?}");
        good_converged(&env, &good).await;
        let log = env.log.as_ref().unwrap();
        // (The agent's own reads and its one create of the key of Secrets' hashes aside.)
        let own_key = |p: &str| {
            p.starts_with("/api/v1/namespaces/kube-system/secrets")
                && (p.ends_with("/flotilla-secret-hash-key") || p.ends_with("/secrets") || p.contains("/secrets?"))
        };
        for r in log.requests() {
            assert!(!r.path.contains("watch=1"), "{r:?}");
            assert!(!r.path.contains("secrets") || (r.impersonated.is_none() && own_key(&r.path)), "{r:?}");
        }
    })
    .await;
}

const TOKEN: &str = "hostile-test-token";

/// Adds the agent's settings to the env's `flotilla.yaml`: an HTTP listener with the API token
/// [`TOKEN`] (and `listen` fields from `listen`, such as `metrics: ...`), then `extra`; returns
/// the HTTP port.
fn agent_config(env: &Env, listen: &str, extra: &str) -> u16 {
    let port = free_port();
    let base = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
    env.write("api-token", TOKEN);
    env.write(
        "flotilla.yaml",
        &format!(
            "{base}interval: 1h\nshutdown_grace: 5s\nlisten: {{ http: \"127.0.0.1:{port}\", socket: agent.sock, token_file: api-token{listen} }}\n{extra}"
        ),
    );
    port
}

/// Starts `flotilla run` with [`agent_config`]'s settings; returns it once ready.
async fn start_agent(env: &Env, extra: &str) -> Daemon {
    let port = agent_config(env, "", extra);
    let d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
    d.wait_ready(Duration::from_secs(60)).await;
    d
}

/// Points tenant `name`'s fleet file at a Git repository (`source` is the `source:` mapping's
/// inside, such as `url: "file://..."`), with `extra` fleet fields.
fn repo_tenant(env: &Env, name: &str, source: &str, extra: &str) {
    env.write(
        &format!("fleet/tenants/{name}.yaml"),
        &format!(
            "name: {name}\nnamespaces: [{name}]\nsource: {{ {source} }}\nclusters: [{{ name: dev }}]\n{extra}"
        ),
    );
}

/// Attack 1: an interval that overflows the clock (`300000000000y`, which humantime accepts)
/// crashed the agent's scheduler at every start. It is refused when the catalog is read, naming
/// the bound; the agent keeps running and the other tenant converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_by_interval() {
    with_env(|env| async move {
        let (good, evil) = platform(
            &env,
            "interval: 8d\n",
            "apps:\n  - { name: forever, source: { path: forever }, options: { interval: 300000000000y, timeout: 8760h } }\n",
        );
        env.write(
            &format!("tenants/{evil}/forever/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: forever }\n",
        );
        let run = env.flotilla(&["validate"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        let said = format!("fleet: tenants/{evil}.yaml:5:11: interval: \"8d\" is too long; the most is 7days");
        assert!(run.stderr.contains(&said), "{said}\n{run:?}");

        // The fleet's file fixed, the tenant's catalog still hostile.
        let catalog = std::fs::read_to_string(env.dir.path().join(format!("tenants/{evil}/tenant.yaml"))).unwrap();
        env.tenant(&evil, &[&evil], "", &catalog);
        let run = env.flotilla(&["validate"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        for said in [
            format!("tenant {evil}: tenant.yaml:2:70: apps[0].options.interval: \"300000000000y\" is too long; the most is 7days"),
            format!("tenant {evil}: tenant.yaml:2:94: apps[0].options.timeout: \"8760h\" is too long; the most is 1h"),
        ] {
            assert!(run.stderr.contains(&said), "{said}\n{run:?}");
        }

        // The agent runs on, and serves the other tenant.
        let mut d = start_agent(&env, "").await;
        good_converged(&env, &good).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(d.get("/healthz").await.map(|a| a.status), Some(200), "{}", d.logs());
        assert!(d.logs().contains("is too long; the most is 7days"), "{}", d.logs());
        assert!(!d.logs().contains("panicked"), "{}", d.logs());
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(30)).await, Some(0), "{}", d.logs());
    })
    .await;
}

/// The unit named `name` (`tenant/app`) in the agent's status.
fn unit<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["units"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["unit"] == name))
        .unwrap_or_else(|| panic!("no unit {name} in {status:#}"))
}

/// Attack 3: values of almost 1 MiB substituted half a million times, a file of unclosed `${`,
/// and values over the cap. Each app fails with its reason, the agent's peak memory stays far from
/// what the expansion would take (printed; at most 256 MiB), and the other tenant converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_through_substitution() {
    with_env(|env| async move {
        let big = "x".repeat(1000 << 10);
        let (good, evil) = platform(
            &env,
            "",
            &format!(
                "apps:\n  - {{ name: bomb, source: {{ path: bomb }}, values: {{ b: {big} }} }}\n  - {{ name: braces, source: {{ path: braces }} }}\n  - {{ name: heavy, source: {{ path: braces }}, values: {{ b: {big}, c: {big} }} }}\n"
            ),
        );
        env.write(
            &format!("tenants/{evil}/bomb/cm.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: bomb }}\ndata:\n{}",
                "  k: ${values.b}\n".repeat(450_000)
            ),
        );
        env.write(
            &format!("tenants/{evil}/braces/cm.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: braces }}\ndata: {{ k: \"{}\" }}\n", "${".repeat(3_000_000)),
        );
        let d = start_agent(&env, "").await;
        good_converged(&env, &good).await;
        let status = d.status(TOKEN).await;
        let bomb = unit(&status, &format!("{evil}/bomb"));
        assert_eq!(bomb["result"], "failed", "{status:#}");
        assert!(
            bomb["last_error"].as_str().unwrap().contains(
                "bomb/cm.yaml:line 13: substituting variables makes the text larger than 8 MiB; refused"
            ),
            "{status:#}"
        );
        // Substituted in linear time; the 6 MB object it makes is then too large for the API
        // server, which says so.
        let braces = unit(&status, &format!("{evil}/braces"));
        assert_eq!(braces["result"], "failed", "{status:#}");
        assert!(
            braces["last_error"].as_str().unwrap().contains(&format!("ConfigMap {evil}/braces: ")),
            "{status:#}"
        );
        assert!(
            d.logs().contains("the app's values are 2000 KiB, over the 1024 KiB an app's values may have; refused"),
            "{}",
            d.logs()
        );
        let peak = d.peak_rss_mib();
        println!("hostile: peak RSS of the agent during the substitution bombs: {peak:.1} MiB");
        assert!(peak < 256.0, "peak RSS {peak:.1} MiB");
    })
    .await;
}

/// Attack 10: a symlink to `/etc/passwd` in one app's folder used to make the tenant's whole
/// checkout refused, taking its good apps down too. Now only the app that holds the link fails,
/// naming it; the link is never followed; the tenant's other app and the other tenant converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_symlink_takes_only_its_app_down() {
    with_env(|env| async move {
        let (good, evil) = platform(&env, "", "apps: []\n");
        let repo = Repo::init(&env.dir.path().join("evil-repo"));
        repo.write(
            "tenant.yaml",
            "apps:\n  - { name: fine, source: { path: apps/fine } }\n  - { name: escape, source: { path: apps/escape } }\n",
        )
        .write(
            "apps/fine/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: fine }\n",
        )
        .write(
            "apps/escape/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: escape }\n",
        );
        std::os::unix::fs::symlink(
            "../../../../../../../../etc/passwd",
            repo.path.join("apps/escape/passwd.yaml"),
        )
        .unwrap();
        repo.commit("an app with a link out");
        repo_tenant(&env, &evil, &format!("url: \"{}\"", repo.url()), "");
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        let escape = report(&run.stdout, &format!("tenant {evil}, app escape"));
        assert!(
            escape.contains("the symlink apps/escape/passwd.yaml points outside the repository; refused"),
            "{run:?}"
        );
        assert!(env.configmap(&evil, "escape").await.is_none());
        assert!(env.configmap(&evil, "fine").await.is_some(), "{run:?}");
        good_converged(&env, &good).await;
        assert!(!run.stdout.contains("root:"), "nothing of /etc/passwd: {run:?}");
    })
    .await;
}

/// A repository whose commit has `paths` paths `f/<i>` all pointing at one blob of `blob_bytes`
/// (made with `git update-index`, so the bomb costs the test nothing), plus `tenant.yaml`.
fn bomb_repo(path: &std::path::Path, paths: usize, blob_bytes: usize) -> Repo {
    let repo = Repo::init(path);
    repo.write("tenant.yaml", "apps: []\n");
    repo.write("blob", &"x".repeat(blob_bytes));
    let sha = git(&repo.path, &["hash-object", "-w", "blob"]);
    std::fs::remove_file(repo.path.join("blob")).unwrap();
    git(&repo.path, &["add", "tenant.yaml"]);
    let info: String = (0..paths)
        .map(|i| format!("100644 {sha}\tf/{i}\n"))
        .collect();
    let mut child = std::process::Command::new("git")
        .args(["update-index", "--index-info"])
        .current_dir(&repo.path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(info.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    git(&repo.path, &["commit", "-q", "-m", "bomb"]);
    repo
}

/// Attack 7: a checkout that would fill the disk (one 1 MiB blob behind 600 paths: 600 MiB) and
/// one with more files than any configuration repository (100,001 paths) are refused while they
/// are written, naming the bound, and nothing is left on disk; the agent's peak memory is printed
/// (at most 256 MiB) and the other tenant converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_exhaustion_by_checkout() {
    with_env(|env| async move {
        let (good, wide) = platform(&env, "", "apps: []\n");
        let deep = env.name("deep");
        env.tenant(&deep, &[&deep], "", "apps: []\n");
        let big = bomb_repo(&env.dir.path().join("big"), 600, 1 << 20);
        let many = bomb_repo(&env.dir.path().join("many"), 100_001, 1);
        for (t, repo) in [(&wide, &big), (&deep, &many)] {
            repo_tenant(&env, t, &format!("url: \"{}\"", repo.url()), "");
        }
        let d = start_agent(&env, "").await;
        good_converged(&env, &good).await;
        let logs = d.logs();
        assert!(
            logs.contains(&format!("tenant {wide}: source: "))
                && logs.contains("the tree's files add up to more than 512 MiB; refused"),
            "{logs}"
        );
        assert!(
            logs.contains(&format!("tenant {deep}: source: "))
                && logs.contains("the tree has more than 100000 files and folders; refused"),
            "{logs}"
        );
        let peak = d.peak_rss_mib();
        println!("hostile: peak RSS of the agent during the checkout bombs: {peak:.1} MiB");
        assert!(peak < 256.0, "peak RSS {peak:.1} MiB");
        // Nothing half-written is left in the state directory.
        let state = env.dir.path().join(".state");
        let mut stack = vec![state];
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    files += 1;
                }
            }
        }
        assert!(files < 5_000, "{files} files left in the state directory");
    })
    .await;
}

/// Attack 7: a tenant fills its namespace with large ConfigMaps labelled like flotilla's
/// inventories (as its admin role lets it do with kubectl). The agent's search for inventories
/// reads their metadata only, in pages, so they cost it next to nothing (peak memory printed, at
/// most 128 MiB where whole lists would need several times their 54 MB); the fakes are not taken
/// for inventories, and the other tenant converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_exhaustion_by_labelled_configmaps() {
    with_env(|env| async move {
        let (good, evil) = platform(&env, "", "apps: []\n");
        env.sync().await;
        let filler = "x".repeat(900 << 10);
        for i in 0..60 {
            env.admin_apply(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("fake-{i}"), "namespace": evil, "labels": {
                    "flotilla.dev/tenant": evil, "flotilla.dev/app": format!("fake-{i}"),
                    "applyset.kubernetes.io/id": "applyset-fake"}},
                "data": {"filler": filler},
            }))
            .await;
        }
        env.write(
            &format!("tenants/{good}/web/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\ndata: { a: \"2\" }\n",
        );
        let d = start_agent(&env, "").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while env.configmap(&good, "web").await.unwrap()["data"]["a"] != "2" {
            assert!(std::time::Instant::now() < deadline, "{}", d.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let peak = d.peak_rss_mib();
        println!(
            "hostile: peak RSS of the agent beside 54 MB of labelled ConfigMaps: {peak:.1} MiB"
        );
        assert!(peak < 128.0, "peak RSS {peak:.1} MiB");
        assert!(
            env.configmap(&evil, "fake-0").await.is_some(),
            "not pruned: not flotilla's"
        );
    })
    .await;
}

/// Attack 2: a tenant reads another team's private repository with a credential it holds for
/// its own, or points an app at a host it controls to be handed the token. Its own source's
/// credential serves its own repository only; a credential the fleet grants by name still goes
/// only to the hosts and path prefix the agent config binds it to; the catalog's errors do not
/// tell which credential names exist; and no request to the other repository or the other host
/// ever carries a credential. The other tenant converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_other_teams_repos_through_a_shared_credential() {
    with_env(|env| async move {
        use crate::support::git::GitHttp;
        let good = env.name("good");
        let (good_ns, evil) = (good.clone(), env.name("evil"));
        let served = env.dir.path().join("served");
        let server = GitHttp::start(&served, "flotilla", "team-token");
        let attacker = GitHttp::start(&env.dir.path().join("attacker"), "x", "y");
        let private = Repo::init(&served.join("bigdata/private"));
        private.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: secret-of-bigdata }\n");
        private.commit("private");
        let evil_repo = Repo::init(&served.join(format!("{evil}/tenant")));
        evil_repo.write(
            "tenant.yaml",
            &format!(
                "apps:\n  - {{ name: mine, source: {{ path: mine }} }}\n  - {{ name: steal, source: {{ url: \"{}\", credentials: team }} }}\n  - {{ name: phish, source: {{ url: \"{}\", credentials: shared }} }}\n  - {{ name: probe, source: {{ url: \"{}\", credentials: platform-admin }} }}\n",
                server.url("bigdata/private"),
                attacker.url("loot"),
                server.url("bigdata/private"),
            ),
        );
        evil_repo.write("mine/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: mine }\n");
        evil_repo.commit("catalog");
        env.write("token", "team-token\n");
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!(
                "{config}credentials:\n  team: {{ token_file: token, username: flotilla, hosts: [\"127.0.0.1:{port}/{evil}\"] }}\n  shared: {{ token_file: token, username: flotilla, hosts: [\"127.0.0.1:{port}\"] }}\n",
                port = server.port
            ),
        );
        env.tenant(&good, &[&good_ns], "", "apps:\n  - { name: web, source: { path: web } }\n");
        env.write(
            &format!("tenants/{good}/web/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\ndata: { a: \"1\" }\n",
        );
        env.tenant(&evil, &[&evil], "", "apps: []\n");
        repo_tenant(
            &env,
            &evil,
            &format!("url: \"{}\", credentials: team", server.url(&format!("{evil}/tenant"))),
            "limits: { credentials: [shared], schemes: [http] }\n",
        );
        let before = server.authorized_requests();
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        for refused in [
            // Its own source's credential, for another repository.
            format!("apps[1].source.credentials: credentials \"team\" are not granted to tenant {evil} for this repository"),
            // Granted by name, but bound to hosts the attacker's server is not among.
            format!("apps[2].source.credentials: \"shared\" may not be sent to {} (its hosts: 127.0.0.1:{})", attacker.url("loot"), server.port),
            // A name the agent does not hold: the same answer as one it does.
            format!("apps[3].source.credentials: credentials \"platform-admin\" are not granted to tenant {evil} for this repository"),
        ] {
            assert!(run.stderr.contains(&refused), "{refused}\n{run:?}");
        }
        // A catalog with errors is refused whole (as any broken catalog): nothing of it applied.
        assert!(env.configmap(&evil, "mine").await.is_none());
        assert!(env.configmap(&evil, "secret-of-bigdata").await.is_none());
        assert_eq!(attacker.authorized_requests(), 0, "nothing was sent to the attacker's host");
        // Its own repository was fetched with the token; bigdata's was never asked for.
        assert!(server.authorized_requests() > before);
        good_converged(&env, &good).await;
    })
    .await;
}

/// Attack 5: a tenant's kustomization reaching out of its repository: another tenant's files
/// through `../`, a symlink and a generator's `key=/etc/passwd`, a remote resource (a request from
/// the agent's network position) and a remote base. Each app fails before kustomize runs, naming
/// the kustomization, the field and the reference; no connection reaches the would-be remote; the
/// tenant's plain kustomization and the other tenant converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_through_kustomize() {
    with_env(|env| async move {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let apps = ["fine", "sibling", "linked", "generator", "remote", "base", "textual", "short"];
        let catalog: String = std::iter::once("apps:\n".to_string())
            .chain(apps.iter().map(|a| format!("  - {{ name: {a}, source: {{ path: {a} }} }}\n")))
            .collect();
        let (good, evil) = platform(&env, "", &catalog);
        let t = format!("tenants/{evil}");
        let kustomization = |app: &str, body: &str| {
            env.write(&format!("{t}/{app}/kustomization.yaml"), body);
        };
        env.write(
            &format!("{t}/fine/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: fine }\n",
        );
        kustomization("fine", "resources: [cm.yaml]\n");
        kustomization("sibling", &format!("resources: [../../{good}/web/cm.yaml]\n"));
        std::os::unix::fs::symlink(
            env.dir.path().join(format!("tenants/{good}/web")),
            env.dir.path().join(format!("{t}/linked-web")),
        )
        .unwrap();
        kustomization("linked", "resources: [../linked-web]\n");
        kustomization(
            "generator",
            "configMapGenerator:\n  - name: stolen\n    files: [passwd=/etc/passwd]\n",
        );
        kustomization(
            "remote",
            &format!("resources: [\"http://127.0.0.1:{port}/x.yaml\"]\n"),
        );
        kustomization("base", "resources: [\"github.com/example/repo//deploy?ref=v1\"]\n");
        // Kustomize cleans `missing/..` as text, where the system would stop at `missing`.
        kustomization("textual", &format!("resources: [nope/../../../{good}/web]\n"));
        kustomization("short", "resources: [\"gh:example/repo\"]\n");

        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        for (app, said) in [
            ("sibling", format!("sibling/kustomization.yaml: resources: \"../../{good}/web/cm.yaml\" is outside the repository; refused")),
            ("linked", "linked/kustomization.yaml: resources: \"../linked-web\" is outside the repository; refused".to_string()),
            ("generator", "generator/kustomization.yaml: configMapGenerator.files: \"/etc/passwd\" is outside the repository; refused".to_string()),
            ("remote", format!("remote/kustomization.yaml: resources: \"http://127.0.0.1:{port}/x.yaml\" is a remote reference")),
            ("base", "base/kustomization.yaml: resources: \"github.com/example/repo//deploy?ref=v1\" is a remote reference".to_string()),
            ("textual", format!("textual/kustomization.yaml: resources: \"nope/../../../{good}/web\" is outside the repository; refused")),
            ("short", "short/kustomization.yaml: resources: \"gh:example/repo\" is a remote reference".to_string()),
        ] {
            let block = report(&run.stdout, &format!("tenant {evil}, app {app}"));
            assert!(block.contains("FAILED") && block.contains(&said), "{app}: {said}\n{run:?}");
        }
        assert!(listener.accept().is_err(), "no connection reached the remote");
        assert!(env.configmap(&evil, "fine").await.is_some(), "{run:?}");
        assert!(env.configmap(&evil, "stolen").await.is_none());
        assert!(env.configmap(&evil, "web").await.is_none());
        good_converged(&env, &good).await;
    })
    .await;
}

/// Attack 8: the agent's open surface. `/metrics` (which names every tenant and repository) needs
/// the API token on the main listener and is served without it only on `listen.metrics`, which
/// serves nothing else; an unsigned webhook is refused before its body is read (it never comes);
/// a tenant holding the receiver's secret cannot sign a push of the fleet, which has its own; and
/// a flood of idle connections is held to a bounded number the agent serves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unauthenticated_surface() {
    with_env(|env| async move {
        let (good, _evil) = platform(&env, "", "apps: []\n");
        env.write("tenant-secret", "the-secret-a-tenant-holds\n");
        env.write("fleet-secret", "the-fleet-s-own-secret\n");
        let fleet_url = "https://git.example.com/platform/fleet.git";
        let metrics_port = free_port();
        let port = agent_config(
            &env,
            &format!(", metrics: \"127.0.0.1:{metrics_port}\""),
            &format!(
                "webhooks:\n  github: {{ secret_file: tenant-secret, repos: {{ \"{fleet_url}\": fleet-secret }} }}\n  gitlab: {{ token_file: tenant-secret }}\n"
            ),
        );
        let d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
        d.wait_ready(Duration::from_secs(60)).await;
        good_converged(&env, &good).await;

        // Metrics: the token on the main listener; without it only on the metrics listener.
        use crate::support::daemon::http;
        assert_eq!(d.get("/metrics").await.unwrap().status, 401);
        let bearer = [("Authorization", format!("Bearer {TOKEN}"))];
        let page = http(d.port, "GET", "/metrics", &bearer, Vec::new()).await.unwrap();
        assert!(page.body.contains(&format!("unit=\"{good}/web\"")), "{page:?}");
        let page = http(metrics_port, "GET", "/metrics", &[], Vec::new()).await.unwrap();
        assert_eq!(page.status, 200);
        assert!(page.body.contains("flotilla_ready"), "{page:?}");
        let status = http(metrics_port, "GET", "/api/v1/status", &bearer, Vec::new()).await.unwrap();
        assert_eq!(status.status, 404, "the metrics listener serves nothing else");

        // An unsigned webhook is refused without waiting for its (never sent) body.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        use std::io::{Read as _, Write as _};
        s.write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: 100000000\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = [0u8; 64];
        let n = s.read(&mut answer).expect("an answer before any body byte");
        assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 401"), "{}", String::from_utf8_lossy(&answer[..n]));

        // A push claiming the fleet, signed with the secret a tenant holds: refused; with the
        // fleet's own: accepted (and ignored here, where the fleet is a folder).
        for (provider, secret, status) in [
            ("github", "the-secret-a-tenant-holds", 401),
            // Nor through another receiver whose shared secret the tenant holds.
            ("gitlab", "the-secret-a-tenant-holds", 401),
            ("github", "the-fleet-s-own-secret", 200),
        ] {
            let (headers, body) = crate::support::daemon::push(provider, fleet_url, "main", secret);
            let a = d.http("POST", &format!("/hooks/{provider}"), &headers, body).await.unwrap();
            assert_eq!(a.status, status, "{provider} {secret}: {a:?}");
        }

        // A flood of idle connections: the agent holds a bounded number open at once.
        let flood: Vec<std::net::TcpStream> = (0..300)
            .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", d.port)).ok())
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid())).unwrap().count();
        assert!(fds < 128 + 64, "{fds} descriptors open with {} connections waiting", flood.len());
        drop(flood);
        assert_eq!(d.get("/healthz").await.map(|a| a.status), Some(200));
    })
    .await;
}

/// Attack 6: a tenant allowed PriorityClasses renders infra's `PriorityClass` from its app repo
/// and pushes a webhook, so that a round rendering only its app would take the object over (and a
/// later removal prune it). The narrow round knows every unit's claims: the app fails naming the
/// owner, infra's object keeps infra's ownership, and the other tenant converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_an_infra_object_through_a_narrow_round() {
    with_env(|env| async move {
        let pc = env.name("tenant-batch");
        let priority_class = |value: i64| {
            format!("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{ name: {pc} }}\nvalue: {value}\n")
        };
        env.write("fleet/clusters/dev/infra/pc.yaml", &priority_class(1000));
        let repo = Repo::init(&env.dir.path().join("evil-app"));
        repo.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: innocent }\n");
        repo.commit("innocent");
        let (good, evil) = platform(
            &env,
            "limits: { clusterScopedKinds: [PriorityClass], schemes: [file] }\n",
            &format!("apps:\n  - {{ name: grab, source: {{ url: \"{}\", ref: {{ branch: main }} }} }}\n", repo.url()),
        );
        env.write("hook-secret", "s3cret\n");
        let d = start_agent(&env, "webhooks: { github: { secret_file: hook-secret } }\n").await;
        good_converged(&env, &good).await;
        let owner = |pc: serde_json::Value| pc["metadata"]["labels"]["applyset.kubernetes.io/part-of"].clone();
        let before = env
            .get("scheduling.k8s.io/v1", "PriorityClass", None, &pc)
            .await
            .expect("infra's PriorityClass");

        // The tenant's app now renders infra's object; only its repository is pushed.
        repo.write("pc.yaml", &priority_class(1));
        repo.commit("grab");
        let (headers, body) = crate::support::daemon::push("github", &repo.url(), "main", "s3cret");
        let a = d.http("POST", "/hooks/github", &headers, body).await.unwrap();
        assert_eq!(a.status, 202, "{a:?}");
        d.wait_log(
            &format!("PriorityClass.scheduling.k8s.io {pc} belongs to the cluster's infra unit; a tenant cannot render it"),
            Duration::from_secs(30),
        )
        .await;
        let after = env
            .get("scheduling.k8s.io/v1", "PriorityClass", None, &pc)
            .await
            .unwrap();
        assert_eq!(after["value"], 1000, "not applied by the tenant");
        assert_eq!(owner(after.clone()), owner(before.clone()), "still infra's");
        assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
        // The round logs the refusal before it ends and publishes its status: wait for that.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = d.status(TOKEN).await;
            if unit(&status, &format!("{evil}/grab"))["result"] == "failed" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{status:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        good_converged(&env, &good).await;
    })
    .await;
}

/// Attack 4: a tenant's apps that never become ready (`wait: true` on Jobs that never complete,
/// with the longest `timeout` a tenant may ask) used to hold the agent's sync slots, and the full
/// round, for as long as they waited. With one slot: the other tenant's app is applied at once
/// in the first round, a push of its repository is applied while the full round still waits on
/// the never-ready apps (both delays printed; each must stay within one unit budget), and the
/// waits end at the agent's `unit_timeout`, whatever the tenant asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalling_everyone_with_never_ready_apps() {
    with_env(|env| async move {
        let apps = ["j1", "j2", "j3"];
        let catalog: String = std::iter::once("apps:\n".to_string())
            .chain(apps.iter().map(|a| {
                format!("  - {{ name: {a}, source: {{ path: {a} }}, options: {{ wait: true, timeout: 1h }} }}\n")
            }))
            .collect();
        // `a-` sorts before the good tenant: its units queue first.
        let evil = env.name("a-evil");
        let good = env.name("good");
        env.tenant(&evil, &[&evil], "", &catalog);
        for a in apps {
            env.write(
                &format!("tenants/{evil}/{a}/job.yaml"),
                &format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{ name: {a} }}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: main, image: registry.k8s.io/pause:3.10 }}]\n"),
            );
        }
        let repo = Repo::init(&env.dir.path().join("good-app"));
        let cm = |v: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: web }}\ndata: {{ a: \"{v}\" }}\n");
        repo.write("cm.yaml", &cm("1"));
        repo.commit("one");
        env.tenant(
            &good,
            &[&good],
            "limits: { schemes: [file] }\n",
            &format!("apps:\n  - {{ name: web, source: {{ url: \"{}\", ref: {{ branch: main }} }} }}\n", repo.url()),
        );
        env.write("hook-secret", "s3cret\n");
        let port = agent_config(
            &env,
            "",
            "concurrency: 1\nunit_timeout: 20s\nwebhooks: { github: { secret_file: hook-secret } }\n",
        );
        let value = |v: &'static str| {
            let env = env.clone();
            let good = good.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    if env.configmap(&good, "web").await.is_some_and(|c| c["data"]["a"] == v) {
                        return;
                    }
                    assert!(std::time::Instant::now() < deadline, "web never became {v}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let started = std::time::Instant::now();
        let mut d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
        value("1").await;
        let first = started.elapsed();

        // The first round ends when the waits time out; the agent then knows the repositories
        // it follows. A full round is asked for, which waits on the never-ready apps again, and
        // the good tenant's repository is pushed meanwhile.
        d.wait_log("not ready: the Job has not completed (waited 20s)", Duration::from_secs(60))
            .await;
        d.wait_ready(Duration::from_secs(30)).await;
        let bearer = [("Authorization", format!("Bearer {TOKEN}"))];
        let asked = d.http("POST", "/api/v1/sync", &bearer, b"{}".to_vec()).await.unwrap();
        assert!(asked.status < 300, "{asked:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let waits_before = d.logs().matches("(waited 20s)").count();
        repo.write("cm.yaml", &cm("2"));
        repo.commit("two");
        let (headers, body) = crate::support::daemon::push("github", &repo.url(), "main", "s3cret");
        let pushed = std::time::Instant::now();
        let a = d.http("POST", "/hooks/github", &headers, body).await.unwrap();
        assert_eq!(a.status, 202, "{a:?}");
        value("2").await;
        let webhook = pushed.elapsed();
        assert_eq!(
            d.logs().matches("(waited 20s)").count(),
            waits_before,
            "the push was applied while the full round still waited:\n{}",
            d.logs()
        );
        println!(
            "hostile: beside 3 never-ready apps on 1 slot (unit budget 20s): first apply {first:?} after start, webhook to applied {webhook:?}"
        );
        assert!(first < Duration::from_secs(20), "{first:?}\n{}", d.logs());
        assert!(webhook < Duration::from_secs(20), "{webhook:?}\n{}", d.logs());
        d.signal("TERM");
        let _ = d.wait_exit(Duration::from_secs(30)).await;
    })
    .await;
}

/// Attack 7: a renderer that never stops printing (here `yes` standing in for kustomize, as a
/// hostile kustomization or chart could make the real one) is stopped past 64 MiB of output and
/// the app fails with that reason, without the agent holding the output; the other tenant
/// converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_exhaustion_by_renderer_output() {
    with_env(|env| async move {
        let (good, evil) = platform(
            &env,
            "",
            "apps:\n  - { name: flood, source: { path: flood } }\n",
        );
        env.write(
            &format!("tenants/{evil}/flood/kustomization.yaml"),
            "resources: []\n",
        );
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!("{config}render: {{ kustomize: /usr/bin/yes, timeout: 60s }}\n"),
        );
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        let flood = report(&run.stdout, &format!("tenant {evil}, app flood"));
        assert!(
            flood
                .contains("kustomize build failed: /usr/bin/yes printed more than 64 MiB; refused"),
            "{run:?}"
        );
        good_converged(&env, &good).await;
    })
    .await;
}
