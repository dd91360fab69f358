//! End-to-end scenarios of the long-running agent (`flotilla run`) through the real binary,
//! shared by `tests/daemon.rs` (the test API server) and `integration/daemon.rs` (a real
//! cluster): webhooks from each Git host, `sync` and `status`, reload, signals, systemd and
//! leader election.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};

use super::apply_scenarios::{Env, rv};
use super::cluster::resource;
use super::daemon::{Daemon, push};
use super::git::{Repo, free_port};

pub const TOKEN: &str = "api-token-for-tests";
pub const SECRET: &str = "webhook-secret-for-tests";
/// Long enough that no interval run happens during a scenario: every run is a trigger's.
const INTERVAL: &str = "1h";

/// Appends the daemon's settings to `flotilla.yaml` (or to `config`, a copy of it).
pub fn daemon_config(env: &Env, config: &str, port: u16, extra: &str) {
    env.write("api-token", TOKEN);
    env.write("hook-secret", &format!("{SECRET}\n"));
    let base = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
    let base: String = base
        .lines()
        .take_while(|l| !l.starts_with("# daemon"))
        .map(|l| format!("{l}\n"))
        .collect();
    env.write(
        config,
        &format!(
            "{base}# daemon\ninterval: {INTERVAL}\nshutdown_grace: 30s\n\
             listen: {{ http: \"127.0.0.1:{port}\", socket: {config}.sock, token_file: api-token }}\n\
             webhooks:\n  github: {{ secret_file: hook-secret }}\n  gitlab: {{ token_file: hook-secret }}\n\
             \x20 gitea: {{ secret_file: hook-secret }}\n  bitbucket: {{ secret_file: hook-secret }}\n\
             \x20 generic: {{ secret_file: hook-secret }}\n{extra}"
        ),
    );
}

pub fn start(env: &Env, extra: &str, vars: &[(&str, String)]) -> Daemon {
    let port = free_port();
    daemon_config(env, "flotilla.yaml", port, extra);
    let mut d = Daemon::start(env.dir.path(), "flotilla.yaml", port, vars);
    d.token = Some(TOKEN.into());
    d
}

pub fn cm(name: &str, value: &str) -> String {
    serde_json::to_string(&json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"v": value}}))
    .unwrap()
}

async fn wait_value(env: &Env, ns: &str, name: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(o) = env.configmap(ns, name).await
            && o["data"]["v"] == want
        {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{name} did not get v={want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unit<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["unit"] == name)
        .unwrap_or_else(|| panic!("no unit {name} in {status:#}"))
}

/// A tenant with app `a` from its own Git repo and app `b` from the tenant's folder.
fn two_apps(env: &Env) -> (String, Repo) {
    let t = env.name("hooks");
    let repo = Repo::init(&env.dir.path().join("repos/app-a"));
    repo.write("cm.yaml", &cm("a", "0"));
    repo.commit("v0");
    env.tenant(
        &t,
        &[&t],
        "limits: { schemes: [file] }\n",
        &format!(
            "apps:\n  - {{ name: a, enabled: true, source: {{ url: {}, ref: {{ branch: main }} }} }}\n  - {{ name: b, enabled: true, source: {{ path: apps/b }} }}\n",
            repo.url()
        ),
    );
    env.write(&format!("tenants/{t}/apps/b/cm.yaml"), &cm("b", "0"));
    (t, repo)
}

/// A verified push through each provider's receiver fetches the pushed repo and syncs exactly
/// the unit that uses it; unsigned, badly signed, replayed, oversized, unknown-repo and
/// non-push requests change nothing; a burst of pushes coalesces.
pub async fn webhooks_sync_exactly_the_units_of_the_pushed_repo(env: Arc<Env>) {
    let (t, repo) = two_apps(&env);
    let d = start(&env, "", &[]);
    d.wait_ready(Duration::from_secs(60)).await;
    wait_value(&env, &t, "a", "0", Duration::from_secs(5)).await;
    let b_before = env.configmap(&t, "b").await.unwrap();
    let b_run = unit(&d.status(TOKEN).await, &format!("{t}/b"))["last_run"].clone();
    let url = repo.url();

    for (i, provider) in ["github", "gitlab", "gitea", "bitbucket", "generic"]
        .into_iter()
        .enumerate()
    {
        let v = (i + 1).to_string();
        repo.write("cm.yaml", &cm("a", &v));
        repo.commit(&v);
        let (headers, body) = push(provider, &url, "main", SECRET);
        let a = d
            .http("POST", &format!("/hooks/{provider}"), &headers, body)
            .await
            .unwrap();
        assert_eq!(a.status, 202, "{provider}: {a:?}");
        assert!(a.body.contains(&format!("{t}/a")), "{provider}: {a:?}");
        wait_value(&env, &t, "a", &v, Duration::from_secs(30)).await;
    }
    // b was never synced again, and never written.
    let status = d.status(TOKEN).await;
    assert_eq!(
        unit(&status, &format!("{t}/b"))["last_run"],
        b_run,
        "{status:#}"
    );
    assert_eq!(rv(&env.configmap(&t, "b").await.unwrap()), rv(&b_before));
    assert_eq!(
        d.metric(&format!(
            "flotilla_reconcile_total{{unit=\"{t}/b\",result=\"success\"}}"
        ))
        .await,
        1.0,
        "{}",
        d.logs()
    );

    // Refused or ignored: nothing is fetched or applied.
    repo.write("cm.yaml", &cm("a", "refused"));
    repo.commit("refused");
    let (mut headers, body) = push("github", &url, "main", "not-the-secret");
    let bad = d
        .http("POST", "/hooks/github", &headers, body.clone())
        .await
        .unwrap();
    assert_eq!(bad.status, 401, "{bad:?}");
    headers.retain(|(k, _)| *k != "X-Hub-Signature-256");
    let unsigned = d
        .http("POST", "/hooks/github", &headers, body)
        .await
        .unwrap();
    assert_eq!(unsigned.status, 401, "{unsigned:?}");
    // A genuine signature of another body, replayed on this one.
    let (genuine, _) = push("github", "file:///elsewhere.git", "main", SECRET);
    let (_, body) = push("github", &url, "main", SECRET);
    let replayed = d
        .http("POST", "/hooks/github", &genuine, body)
        .await
        .unwrap();
    assert_eq!(replayed.status, 401, "{replayed:?}");
    let big = vec![b' '; 1024 * 1024 + 1];
    let (headers, _) = push("github", &url, "main", SECRET);
    let oversized = d
        .http("POST", "/hooks/github", &headers, big)
        .await
        .unwrap();
    assert_eq!(oversized.status, 413, "{oversized:?}");
    let (headers, body) = push(
        "github",
        "https://git.example.com/other/repo.git",
        "main",
        SECRET,
    );
    let unknown = d
        .http("POST", "/hooks/github", &headers, body)
        .await
        .unwrap();
    assert_eq!(unknown.status, 200, "{unknown:?}");
    assert!(unknown.body.contains("ignored"), "{unknown:?}");
    let (headers, body) = push("github", &url, "feature", SECRET);
    let other_branch = d
        .http("POST", "/hooks/github", &headers, body)
        .await
        .unwrap();
    assert!(other_branch.body.contains("ignored"), "{other_branch:?}");
    let (mut headers, body) = push("github", &url, "main", SECRET);
    headers[0].1 = "issues".into();
    let not_push = d
        .http("POST", "/hooks/github", &headers, body)
        .await
        .unwrap();
    assert_eq!(not_push.status, 200, "{not_push:?}");
    assert!(not_push.body.contains("ignored"), "{not_push:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.configmap(&t, "a").await.unwrap()["data"]["v"], "5");
    assert_eq!(
        d.metric("flotilla_webhook_requests_total{provider=\"github\",result=\"unauthorized\"}")
            .await,
        3.0
    );

    // A burst of twenty pushes: one or two runs, not twenty.
    let series = format!("flotilla_reconcile_total{{unit=\"{t}/a\",result=\"success\"}}");
    let before = d.metric(&series).await;
    repo.write("cm.yaml", &cm("a", "burst"));
    repo.commit("burst");
    let (headers, body) = push("github", &url, "main", SECRET);
    // Sent at once, as a burst from a Git host arrives: one at a time, a loaded machine could
    // space them wider than a run.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (headers, body, port) = (headers.clone(), body.clone(), d.port);
        burst.spawn(async move {
            super::daemon::http(port, "POST", "/hooks/github", &headers, body).await
        });
    }
    while let Some(a) = burst.join_next().await {
        assert_eq!(a.unwrap().unwrap().status, 202);
    }
    wait_value(&env, &t, "a", "burst", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = d.metric(&series).await;
    assert!(
        after - before >= 1.0 && after - before <= 2.0,
        "20 pushes ran the unit {} times",
        after - before
    );
}

/// `flotilla sync --wait` prints each set and exits 0 or 1; `status` prints a table or JSON;
/// the HTTP API needs the token; metrics, health and Events tell the same story.
pub async fn sync_status_and_the_api(env: Arc<Env>) {
    let t = env.name("ops");
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: ok, enabled: true, source: { path: ok } }\n  - { name: bad, enabled: true, source: { path: bad } }\n  - { name: off, enabled: true, source: { path: off }, options: { suspend: true } }\n",
    );
    env.write(&format!("tenants/{t}/ok/cm.yaml"), &cm("ok", "1"));
    env.write(&format!("tenants/{t}/off/cm.yaml"), &cm("off", "1"));
    // A namespace outside the tenant's: refused, so the unit fails.
    env.write(
        &format!("tenants/{t}/bad/cm.yaml"),
        &serde_json::to_string(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bad", "namespace": "kube-system"}, "data": {"v": "1"}}))
        .unwrap(),
    );
    let d = start(&env, "", &[]);
    d.wait_ready(Duration::from_secs(60)).await;

    let ok = env
        .flotilla(&["sync", "--tenant", &t, "--app", "ok", "--wait"])
        .await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains(&format!("sync queued: {t}/ok")),
        "{ok:?}"
    );
    assert!(ok.stdout.contains(&format!("tenant {t}, app ok")), "{ok:?}");
    assert!(ok.stdout.contains("converged"), "{ok:?}");
    assert!(ok.stdout.contains("sync done"), "{ok:?}");

    let bad = env
        .flotilla(&["sync", "--tenant", &t, "--app", "bad", "--wait"])
        .await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("FAILED"), "{bad:?}");
    assert!(bad.stdout.contains("kube-system"), "{bad:?}");

    let whole = env.flotilla(&["sync", "--tenant", &t, "--wait"]).await;
    assert_eq!(whole.code, 1, "{whole:?}");
    assert!(whole.stdout.contains("onboarding"), "{whole:?}");

    let nope = env
        .flotilla(&["sync", "--tenant", &t, "--app", "nope"])
        .await;
    assert_eq!(nope.code, 1, "{nope:?}");
    assert!(nope.stderr.contains("has no app \"nope\""), "{nope:?}");

    let queued = env.flotilla(&["sync", "--tenant", &t]).await;
    assert_eq!(queued.code, 0, "{queued:?}");

    let table = env.flotilla(&["status"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let row = |name: &str| {
        table
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{t}/{name} ")))
            .unwrap_or_else(|| panic!("no row {name}: {table:?}"))
            .to_string()
    };
    assert!(row("ok").contains("converged"), "{table:?}");
    assert!(row("bad").contains("failed"), "{table:?}");
    assert!(table.stdout.contains("UNIT"), "{table:?}");

    let json = env.flotilla(&["status", "--output", "json"]).await;
    assert_eq!(json.code, 0, "{json:?}");
    let doc: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["ready"], true);
    assert_eq!(unit(&doc, &format!("{t}/ok"))["result"], "converged");
    assert!(
        unit(&doc, &format!("{t}/bad"))["last_error"]
            .as_str()
            .unwrap()
            .contains("kube-system")
    );
    assert!(unit(&doc, &format!("{t}/ok"))["next_run"].is_string());
    // A suspended unit is skipped, even by a sync of its tenant.
    assert_eq!(unit(&doc, &format!("{t}/off"))["result"], "suspended");
    assert!(env.configmap(&t, "off").await.is_none());
    assert!(whole.stdout.contains("suspended"), "{whole:?}");

    // Over HTTP: the token is required.
    let none = d.get("/api/v1/status").await.unwrap();
    assert_eq!(none.status, 401, "{none:?}");
    let wrong = d
        .http(
            "POST",
            "/api/v1/sync",
            &[("Authorization", "Bearer guess".into())],
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let url = format!("http://127.0.0.1:{}", d.port);
    let remote = env
        .flotilla(&["status", "--server", &url, "--token-file", "api-token"])
        .await;
    assert_eq!(remote.code, 0, "{remote:?}");
    assert!(remote.stdout.contains(&format!("{t}/ok")), "{remote:?}");

    assert_eq!(d.get("/healthz").await.unwrap().status, 200);
    // Metrics name every tenant and repository: not without the token.
    assert_eq!(d.get("/metrics").await.unwrap().status, 401);
    let metrics = d.metrics().await;
    for series in [
        format!("flotilla_reconcile_total{{unit=\"{t}/ok\",result=\"success\"}}"),
        format!("flotilla_reconcile_total{{unit=\"{t}/bad\",result=\"failure\"}}"),
        format!("flotilla_last_successful_sync_timestamp_seconds{{unit=\"{t}/ok\"}}"),
        format!("flotilla_reconcile_duration_seconds_count{{unit=\"{t}/ok\"}}"),
        "flotilla_ready 1".to_string(),
    ] {
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }

    // Events on the tenant's namespace: the failure, and the first (changing) sync of ok.
    let events: Api<DynamicObject> = Api::namespaced_with(
        env.cluster.admin.clone(),
        &t,
        &resource("v1", "Event", "events"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&Default::default()).await.unwrap();
        let reasons: Vec<(String, String)> = list
            .items
            .iter()
            .map(|e| {
                let v = serde_json::to_value(e).unwrap();
                (
                    v["reason"].as_str().unwrap_or_default().to_string(),
                    v["involvedObject"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let has = |r: &str, o: &str| reasons.iter().any(|(a, b)| a == r && b == o);
        if has("SyncFailed", "flotilla-bad") && has("Synced", "flotilla-ok") {
            break;
        }
        assert!(Instant::now() < deadline, "events: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The error policy: a permanent failure (an object outside the tenant's namespaces) is
/// reported and waits for the interval, and so does an app that depends on it; a transient one
/// (a kind the cluster does not serve yet) is retried within seconds; the kind is on the metrics
/// and in `sync --wait`.
pub async fn failures_are_retried_by_their_kind(env: Arc<Env>) {
    let t = env.name("policy");
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: bad, enabled: true, source: { path: bad } }\n  - { name: after, enabled: true, source: { path: after }, dependsOn: [bad] }\n  - { name: unserved, enabled: true, source: { path: unserved } }\n",
    );
    env.write(
        &format!("tenants/{t}/bad/cm.yaml"),
        &serde_json::to_string(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bad", "namespace": "kube-system"}, "data": {"v": "1"}}))
        .unwrap(),
    );
    env.write(&format!("tenants/{t}/after/cm.yaml"), &cm("after", "1"));
    // No CRD serves this kind (yet): waiting could help.
    env.write(
        &format!("tenants/{t}/unserved/widget.yaml"),
        "apiVersion: not-installed.flotilla.dev/v1\nkind: Widget\nmetadata: { name: w }\n",
    );
    let d = start(&env, "", &[]);
    d.wait_ready(Duration::from_secs(60)).await;
    let errors = |app: &str, kind: &str| {
        format!("flotilla_reconcile_errors_total{{unit=\"{t}/{app}\",kind=\"{kind}\"}}")
    };
    // The first round failed all three; `unserved` is retried about 5 s later, the others not
    // before the interval (an hour).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let metrics = d.metrics().await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(value(&errors("bad", "permanent")), 1.0, "{metrics}");
    assert_eq!(value(&errors("after", "permanent")), 1.0, "{metrics}");
    let unserved = value(&errors("unserved", "transient"));
    assert!(unserved >= 2.0, "unserved ran {unserved} times\n{metrics}");
    // An operator's sync runs it at once, and says which kind of failure it is.
    let run = env
        .flotilla(&["sync", "--tenant", &t, "--app", "bad", "--wait"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("FAILED (permanent)"), "{run:?}");
    assert_eq!(d.metric(&errors("bad", "permanent")).await, 2.0);
}

/// A changed config is swapped in without a restart; an invalid one is refused with its
/// errors logged and the running config kept.
pub async fn config_reload_good_and_bad(env: Arc<Env>) {
    let t = env.name("reload");
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: a, enabled: true, source: { path: a } }\n",
    );
    env.write(&format!("tenants/{t}/a/cm.yaml"), &cm("a", "1"));
    let port = free_port();
    daemon_config(&env, "flotilla.yaml", port, "");
    let good = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
    // Start without the github receiver.
    let without = good.replace("  github: { secret_file: hook-secret }\n", "");
    env.write("flotilla.yaml", &without);
    let d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
    d.wait_ready(Duration::from_secs(60)).await;
    let (headers, body) = push("github", "file:///x.git", "main", SECRET);
    let off = d
        .http("POST", "/hooks/github", &headers, body.clone())
        .await
        .unwrap();
    assert_eq!(off.status, 404, "{off:?}");

    env.write("flotilla.yaml", &format!("{without}concurrency: many\n"));
    d.wait_log("config reload refused", Duration::from_secs(10))
        .await;
    assert!(d.logs().contains("concurrency"), "{}", d.logs());
    assert_eq!(d.get("/healthz").await.unwrap().status, 200);
    assert_eq!(d.status(TOKEN).await["ready"], true);

    env.write("flotilla.yaml", &good);
    d.wait_log("config reloaded", Duration::from_secs(10)).await;
    let on = d
        .http("POST", "/hooks/github", &headers, body)
        .await
        .unwrap();
    assert_eq!(on.status, 200, "the reloaded receiver answers: {on:?}");
    // The reload is followed by a full round.
    d.wait_log("config reloaded\"", Duration::from_secs(10))
        .await;
}

/// SIGTERM while a unit is being applied: the apply finishes (its inventory is written), the
/// agent tells systemd it is stopping and exits 0; a second signal exits at once.
pub async fn sigterm_during_an_apply(env: Arc<Env>) {
    let t = env.name("slow");
    // A Job that never completes (its image does not exist) keeps the unit waiting until its
    // timeout.
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: slow, enabled: true, source: { path: slow }, options: { wait: true, timeout: 5s } }\n",
    );
    env.write(
        &format!("tenants/{t}/slow/job.yaml"),
        &serde_json::to_string(&json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "never"},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "registry.invalid/none:1"}]}}}}))
        .unwrap(),
    );
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path: PathBuf = notify_dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // systemd reads at once; so does this reader (a full queue would drop messages).
    let heard = Arc::new(std::sync::Mutex::new(String::new()));
    let listening = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (heard, listening) = (heard.clone(), listening.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while listening.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(n) = notify.recv(&mut buf) {
                    let mut h = heard.lock().unwrap();
                    h.push_str(&String::from_utf8_lossy(&buf[..n]));
                    h.push('\n');
                }
            }
        })
    };
    let vars = [
        ("NOTIFY_SOCKET", notify_path.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_string()),
    ];
    let mut d = start(&env, "", &vars);
    d.wait_ready(Duration::from_secs(60)).await;

    let queued = env
        .flotilla(&["sync", "--tenant", &t, "--app", "slow"])
        .await;
    assert_eq!(queued.code, 0, "{queued:?}");
    let marker = "round starts";
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.logs().matches(marker).count() < 2 {
        assert!(Instant::now() < deadline, "{}", d.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    d.signal("TERM");
    let code = d.wait_exit(Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "{}", d.logs());
    let logs = d.logs();
    assert!(logs.contains("letting running syncs finish"), "{logs}");
    let after = &logs[logs.find("letting running syncs finish").unwrap()..];
    assert!(
        after.contains("synced"),
        "the apply finished after the signal: {logs}"
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "it did not wait"
    );
    // The set's inventory records the Job.
    let parent = env
        .configmap(&t, "flotilla-slow")
        .await
        .expect("the inventory");
    assert!(parent.to_string().contains("never"), "{parent}");

    listening.store(false, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap();
    let said = heard.lock().unwrap().clone();
    for want in ["READY=1", "WATCHDOG=1", "STOPPING=1"] {
        assert!(said.contains(want), "systemd heard: {said}");
    }

    // A second signal exits at once.
    let mut d = start(&env, "", &[]);
    d.wait_ready(Duration::from_secs(60)).await;
    let queued = env
        .flotilla(&["sync", "--tenant", &t, "--app", "slow"])
        .await;
    assert_eq!(queued.code, 0, "{queued:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.logs().matches(marker).count() < 2 {
        assert!(Instant::now() < deadline, "{}", d.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.signal("TERM");
    d.wait_log("no new syncs", Duration::from_secs(5)).await;
    let second = Instant::now();
    d.signal("INT");
    let code = d.wait_exit(Duration::from_secs(3)).await;
    assert_eq!(code, Some(130), "{}", d.logs());
    assert!(second.elapsed() < Duration::from_secs(2));
}

/// Two replicas: only the Lease holder applies and is ready; when it stops renewing, the other
/// takes over, and the old leader, on waking, stops.
pub async fn leader_election_hands_over(env: Arc<Env>) {
    let t = env.name("ha");
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: a, enabled: true, source: { path: a } }\n",
    );
    env.write(&format!("tenants/{t}/a/cm.yaml"), &cm("a", "1"));
    let lease = env.name("flotilla-lease");
    let election = format!(
        "leader_election: {{ namespace: kube-system, name: {lease}, lease_duration: 3s }}\n"
    );
    let (pa, pb) = (free_port(), free_port());
    daemon_config(&env, "flotilla.yaml", pa, &election);
    daemon_config(&env, "replica-b.yaml", pb, &election);
    let leases: Api<DynamicObject> = Api::namespaced_with(
        env.cluster.admin.clone(),
        "kube-system",
        &resource("coordination.k8s.io/v1", "Lease", "leases"),
    );
    let mut a = Daemon::start(
        env.dir.path(),
        "flotilla.yaml",
        pa,
        &[("POD_NAME", "replica-a".into())],
    );
    a.wait_ready(Duration::from_secs(60)).await;
    let mut b = Daemon::start(
        env.dir.path(),
        "replica-b.yaml",
        pb,
        &[("POD_NAME", "replica-b".into())],
    );
    b.wait_log("waiting for the Lease", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let follower = b.get("/readyz").await.unwrap();
    assert_eq!(follower.status, 503, "{follower:?}");
    assert!(follower.body.contains("leader"), "{follower:?}");
    assert_eq!(b.get("/healthz").await.unwrap().status, 200);
    let holder = |l: Option<DynamicObject>| {
        l.map(|l| serde_json::to_value(l).unwrap()["spec"]["holderIdentity"].clone())
            .unwrap_or(Value::Null)
    };
    let held = holder(leases.get_opt(&lease).await.unwrap());
    assert!(held.as_str().unwrap().starts_with("replica-a_"), "{held}");

    // The leader stops renewing (frozen); the follower takes over after a lease duration.
    a.signal("STOP");
    b.wait_ready(Duration::from_secs(30)).await;
    let held = holder(leases.get_opt(&lease).await.unwrap());
    assert!(held.as_str().unwrap().starts_with("replica-b_"), "{held}");
    // The old leader wakes up, finds the Lease taken, and stops.
    a.signal("CONT");
    let code = a.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{}", a.logs());
    assert!(a.logs().contains("lost leadership"), "{}", a.logs());
    // The new leader applies: a change reaches the cluster through it.
    env.write(&format!("tenants/{t}/a/cm.yaml"), &cm("a", "2"));
    let via_b = b
        .http(
            "POST",
            "/api/v1/sync",
            &[("Authorization", format!("Bearer {TOKEN}"))],
            serde_json::to_vec(&json!({"tenant": t, "wait": true})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(via_b.status, 200, "{via_b:?}");
    assert!(via_b.body.contains("\"ok\":true"), "{via_b:?}");
    wait_value(&env, &t, "a", "2", Duration::from_secs(5)).await;
    // A clean stop gives the Lease up.
    b.signal("TERM");
    assert_eq!(
        b.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        b.logs()
    );
    let held = holder(leases.get_opt(&lease).await.unwrap());
    assert!(held.is_null() || held == "", "{held}");
    let _ = leases.delete(&lease, &DeleteParams::default()).await;
}
