//! The status page through the real binary, shared by `tests/daemon.rs` (the test API server)
//! and `integration/daemon.rs` (a real cluster): what the fleet page and a unit's page show,
//! the comparison with the cluster (Secret values masked), the login, and "Sync now" refused
//! without the token, without the page's CSRF token and from another site, and run with them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::apply_scenarios::Env;
use super::daemon::{Answer, Daemon};
use super::daemon_scenarios::{TOKEN, cm, start};

fn bearer() -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {TOKEN}"))]
}

/// The `<tbody>` of a unit on the fleet page (its row and its error).
fn unit_block<'a>(page: &'a str, unit: &str) -> &'a str {
    let start = page
        .find(&format!("data-unit=\"{unit}\""))
        .unwrap_or_else(|| panic!("no unit {unit} on the page:\n{page}"));
    let end = page[start..].find("</tbody>").unwrap() + start;
    &page[start..end]
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"flotilla-csrf\" content=\"")
        .expect("a CSRF token")
        + 30;
    page[at..].split('"').next().unwrap().to_string()
}

/// `GET path` over the agent's unix socket with `Host: host`: the status and the body.
fn over_socket(env: &Env, path: &str, host: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::os::unix::net::UnixStream::connect(env.dir.path().join("flotilla.yaml.sock")).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    (raw[9..12].parse().unwrap(), raw)
}

async fn get(d: &Daemon, path: &str, headers: &[(&str, String)]) -> Answer {
    d.http("GET", path, headers, Vec::new())
        .await
        .expect("the agent answers")
}

/// A tenant with one failing app (`bad`: an object outside its namespace), one held back by it
/// (`after`), one suspended (`off`) and one converged with a Secret (`ok`); its name.
pub fn fleet_with_a_failure(env: &Env) -> String {
    let t = env.name("page");
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: ok, enabled: true, source: { path: ok } }\n  - { name: bad, enabled: true, source: { path: bad } }\n  - { name: after, enabled: true, source: { path: after }, dependsOn: [bad] }\n  - { name: off, enabled: true, source: { path: off }, options: { suspend: true } }\n",
    );
    env.write(&format!("tenants/{t}/ok/cm.yaml"), &cm("ok", "1"));
    env.write(
        &format!("tenants/{t}/ok/secret.yaml"),
        &serde_json::to_string(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds"}, "data": {"password": "aHVudGVyMg=="}}))
        .unwrap(),
    );
    env.write(&format!("tenants/{t}/after/cm.yaml"), &cm("after", "1"));
    env.write(&format!("tenants/{t}/off/cm.yaml"), &cm("off", "1"));
    // A namespace outside the tenant's: refused, so the unit fails.
    env.write(
        &format!("tenants/{t}/bad/cm.yaml"),
        &serde_json::to_string(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bad", "namespace": "kube-system"}, "data": {"v": "1"}}))
        .unwrap(),
    );
    t
}

/// The fleet of [`fleet_with_a_failure`]: the page shows each unit with its result and error,
/// filters, and a unit's page with its syncs and diff.
pub async fn the_status_page_shows_the_fleet_and_syncs_with_the_token(env: Arc<Env>) {
    let t = fleet_with_a_failure(&env);
    let d = start(&env, "", &[]);
    d.wait_ready(Duration::from_secs(60)).await;

    // Without the token: the login form, and nothing of the fleet.
    let none = get(&d, "/", &[]).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.body.contains("action=\"/ui/login\""), "{none:?}");
    assert!(!none.body.contains(&t), "{none:?}");
    for path in [
        format!("/unit?tenant={t}&app=ok"),
        format!("/unit/inspect?tenant={t}&app=ok"),
        "/ui/events".to_string(),
    ] {
        let a = get(&d, &path, &[]).await;
        assert_eq!(a.status, 401, "{path}: {a:?}");
        assert!(
            !a.body.contains("hunter2") && !a.body.contains("data-unit"),
            "{a:?}"
        );
    }
    let wrong = get(&d, "/", &[("Authorization", "Bearer guess".into())]).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");

    // With it: every unit by tenant, its result, and the failure in full.
    let page = get(&d, "/", &bearer()).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.header("content-security-policy").is_some(), "{page:?}");
    let body = &page.body;
    for (app, result) in [
        ("ok", "converged"),
        ("bad", "failed"),
        ("after", "held-back"),
        ("off", "suspended"),
    ] {
        let block = unit_block(body, &format!("{t}/{app}"));
        assert!(
            block.contains(&format!("data-result=\"{result}\"")),
            "{app}: {block}"
        );
        assert!(block.contains(&format!("tenant repo: {app}")), "{block}");
    }
    let bad = unit_block(body, &format!("{t}/bad"));
    assert!(bad.contains("kube-system"), "the error in full: {bad}");
    assert!(
        unit_block(body, &format!("{t}/after")).contains("depends on bad"),
        "{body}"
    );
    assert!(!unit_block(body, &format!("{t}/ok")).contains("class=\"error\""));
    assert!(body.contains(&format!("data-tenant=\"{t}\"")), "{body}");
    assert!(
        body.contains("<i>onboarding</i>"),
        "the onboarding row: {body}"
    );
    // The counts, and the filters applied by the server too (the page works without script).
    assert!(
        body.contains("data-result=\"failed\" class=\"count r-failed\"><b>1</b>"),
        "{body}"
    );
    let failed = get(&d, "/?result=failed", &bearer()).await.body;
    assert!(!unit_block(&failed, &format!("{t}/bad")).contains(" hidden>"));
    assert!(unit_block(&failed, &format!("{t}/ok")).contains(" hidden>"));
    let searched = get(&d, "/?q=KUBE-SYSTEM", &bearer()).await.body;
    assert!(!unit_block(&searched, &format!("{t}/bad")).contains(" hidden>"));
    assert!(unit_block(&searched, &format!("{t}/off")).contains(" hidden>"));
    // Over the socket, its mode guards the page; a name other than localhost (a rebinding web
    // page on a forwarded port) is refused.
    let (status, raw) = over_socket(&env, "/", "localhost:8080");
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains(&format!("data-unit=\"{t}/bad\"")), "{raw}");
    let (status, raw) = over_socket(&env, "/", "rebound.example:8080");
    assert_eq!(status, 421, "{raw}");
    // The live part alone, for the page's updates.
    let live = get(
        &d,
        "/",
        &[bearer()[0].clone(), ("X-Flotilla-Fragment", "live".into())],
    )
    .await;
    assert!(live.body.contains("class=\"counts\"") && !live.body.contains("<html"));

    // A unit's page: its status, its error and its syncs.
    let unit = get(&d, &format!("/unit?tenant={t}&app=bad"), &bearer()).await;
    assert_eq!(unit.status, 200, "{unit:?}");
    assert!(unit.body.contains("kube-system"), "{unit:?}");
    assert!(
        unit.body.contains("Recent syncs") && unit.body.contains("r-failed"),
        "{unit:?}"
    );
    assert!(
        unit.body.contains(&format!("tenant={t}&amp;app=bad")),
        "{unit:?}"
    );
    let missing = get(&d, &format!("/unit?tenant={t}&app=nope"), &bearer()).await;
    assert_eq!(missing.status, 404, "{missing:?}");

    // Drift on the Secret: the comparison shows it, values masked.
    env.edit("v1", "Secret", &t, "creds", |s| {
        s["data"] = json!({"password": "dGFtcGVyZWQtdmFsdWU="}); // "tampered-value"
    })
    .await;
    let inspect = get(&d, &format!("/unit/inspect?tenant={t}&app=ok"), &bearer()).await;
    assert_eq!(inspect.status, 200, "{inspect:?}");
    let i = &inspect.body;
    assert!(
        i.contains("data-state=\"differs\"><td data-label=\"Kind\">Secret</td>"),
        "{i}"
    );
    assert!(
        i.contains("data-state=\"in-sync\"><td data-label=\"Kind\">ConfigMap</td>"),
        "{i}"
    );
    assert!(i.contains("class=\"diff\"") && i.contains("***"), "{i}");
    for plain in [
        "hunter2",
        "aHVudGVyMg==",
        "tampered-value",
        "dGFtcGVyZWQtdmFsdWU=",
    ] {
        assert!(!i.contains(plain), "{plain} shown: {i}");
    }

    // Sync from the page: not without the token, not without the CSRF token, not cross-site.
    let sync_body = || serde_json::to_vec(&json!({"tenant": t, "app": "ok"})).unwrap();
    let anon = d.http("POST", "/ui/sync", &[], sync_body()).await.unwrap();
    assert_eq!(anon.status, 401, "{anon:?}");
    let bad_login = d
        .http(
            "POST",
            "/ui/login",
            &[("Content-Type", "application/x-www-form-urlencoded".into())],
            b"token=guess&next=%2F".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(bad_login.status, 401, "{bad_login:?}");
    assert!(bad_login.header("set-cookie").is_none(), "{bad_login:?}");
    let login = d
        .http(
            "POST",
            "/ui/login",
            &[("Content-Type", "application/x-www-form-urlencoded".into())],
            format!("token={TOKEN}&next=%2Funit%3Fapp%3Dx").into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(login.status, 303, "{login:?}");
    assert_eq!(login.header("location"), Some("/unit?app=x"), "{login:?}");
    let cookie = login
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let session = ("Cookie", cookie.split(';').next().unwrap().to_string());
    let page = get(&d, "/", std::slice::from_ref(&session)).await;
    assert_eq!(page.status, 200, "the session opens the page: {page:?}");
    let csrf = csrf_of(&page.body);
    let no_csrf = d
        .http(
            "POST",
            "/ui/sync",
            std::slice::from_ref(&session),
            sync_body(),
        )
        .await
        .unwrap();
    assert_eq!(no_csrf.status, 403, "{no_csrf:?}");
    let cross = d
        .http(
            "POST",
            "/ui/sync",
            &[
                session.clone(),
                ("X-Flotilla-Csrf", csrf.clone()),
                ("Sec-Fetch-Site", "cross-site".into()),
            ],
            sync_body(),
        )
        .await
        .unwrap();
    assert_eq!(cross.status, 403, "{cross:?}");
    let api_cross = d
        .http(
            "POST",
            "/api/v1/sync",
            &[
                bearer()[0].clone(),
                ("Origin", "https://elsewhere.example".into()),
            ],
            sync_body(),
        )
        .await
        .unwrap();
    assert_eq!(api_cross.status, 403, "{api_cross:?}");
    let started = Instant::now();
    let run = d
        .http(
            "POST",
            "/ui/sync",
            &[session.clone(), ("X-Flotilla-Csrf", csrf)],
            sync_body(),
        )
        .await
        .unwrap();
    assert_eq!(run.status, 200, "{run:?}");
    let events: Vec<serde_json::Value> = run
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "queued", "{events:?}");
    assert_eq!(
        events.last().unwrap(),
        &json!({"event": "done", "ok": true}),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "set" && e["applied"].to_string().contains("Secret")),
        "the drift reverted: {events:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // The unit's page lists that sync, with what it changed.
    let unit = get(&d, &format!("/unit?tenant={t}&app=ok"), &bearer())
        .await
        .body;
    assert!(unit.contains("applied Secret"), "{unit}");
    // A bearer token needs no CSRF token (it is no browser's ambient credential).
    let api = d
        .http("POST", "/ui/sync", &bearer(), sync_body())
        .await
        .unwrap();
    assert_eq!(api.status, 200, "{api:?}");
    // After logging out the cookie is cleared.
    let out = d
        .http(
            "POST",
            "/ui/logout",
            std::slice::from_ref(&session),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.status, 303, "{out:?}");
    assert!(
        out.header("set-cookie").unwrap().contains("Max-Age=0"),
        "{out:?}"
    );
}
