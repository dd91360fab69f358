//! A hostile tenant cannot hurt the agent or another tenant (issue 14): one test per attack,
//! through the real binary against the test API server. Each attack fails, is reported on the
//! attacking tenant's unit with its reason, and a well-behaved tenant beside it still converges.

use std::sync::Arc;
use std::time::Duration;

use crate::support::apply_scenarios::Env;
use crate::support::daemon::Daemon;
use crate::support::git::{Repo, free_port};
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
        for r in log.requests() {
            assert!(!r.path.contains("watch=1") && !r.path.contains("secrets"), "{r:?}");
        }
    })
    .await;
}

const TOKEN: &str = "hostile-test-token";

/// Starts `flotilla run` on the env's platform with an HTTP listener (API token [`TOKEN`]);
/// returns it once ready.
async fn start_agent(env: &Env, extra: &str) -> Daemon {
    let port = free_port();
    let base = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
    env.write("api-token", TOKEN);
    env.write(
        "flotilla.yaml",
        &format!(
            "{base}interval: 1h\nshutdown_grace: 5s\nlisten: {{ http: \"127.0.0.1:{port}\", socket: agent.sock, token_file: api-token }}\n{extra}"
        ),
    );
    let d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
    d.wait_ready(Duration::from_secs(60)).await;
    d
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

/// The peak resident memory of a process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib / 1024.0
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
        let peak = peak_rss_mib(d.pid());
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
        env.write(
            &format!("fleet/tenants/{evil}.yaml"),
            &format!(
                "name: {evil}\nnamespaces: [{evil}]\nsource: {{ url: \"{}\" }}\nclusters: [{{ name: dev }}]\n",
                repo.url()
            ),
        );
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
