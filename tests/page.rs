//! The status page in a real browser: Debian's headless Chromium through chromedriver opens the
//! page, logs in with the API token, filters to the failing unit, opens it, presses "Sync now"
//! (after the fix is in Git) and sees the result arrive and the page update itself. Screenshots
//! (laptop, the unit, a phone) are written to `target/test-artifacts/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::support::apply_scenarios::Env;
use crate::support::browser::{self, Browser};
use crate::support::daemon_scenarios::{TOKEN, cm, start};
use crate::support::kube_api::ApiServer;
use crate::support::page_scenarios::fleet_with_a_failure;

fn artifacts() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(&tmp).join("test-artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_page_filters_opens_a_unit_and_syncs_it() {
    let Some((chromium, driver)) = browser::installed() else {
        assert!(
            std::env::var_os("FLOTILLA_TEST_BROWSER").is_none(),
            "FLOTILLA_TEST_BROWSER is set, but chromium or chromedriver is missing"
        );
        eprintln!(
            "in_chromium_the_page_filters_opens_a_unit_and_syncs_it: skipped: Debian's chromium \
             and chromium-driver are not installed"
        );
        return;
    };
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(move |env| async move {
        let t = fleet_with_a_failure(&env);
        let d = start(&env, "", &[]);
        d.wait_ready(Duration::from_secs(60)).await;
        let b = Browser::start(&chromium, &driver, "Asia/Tokyo").await;
        let base = format!("http://127.0.0.1:{}", d.port);

        // The token first: the login form.
        b.open(&format!("{base}/")).await;
        b.type_into("#token", TOKEN).await;
        b.click("form.login button[type=submit]").await;
        b.wait_for("return document.body.dataset.page === 'fleet'", "the fleet page")
            .await;
        b.wait_for(
            &format!("return !!document.querySelector('tbody[data-unit=\"{t}/bad\"]')"),
            "the failing unit",
        )
        .await;
        // Times in the browser's time zone, the UTC time in their title.
        assert_eq!(
            b.eval("return Intl.DateTimeFormat().resolvedOptions().timeZone", json!([]))
                .await,
            "Asia/Tokyo"
        );
        let shown = b
            .eval(
                "const t = document.querySelector('time[datetime]'); \
                 return [t.textContent, t.title, t.getAttribute('datetime')]",
                json!([]),
            )
            .await;
        assert_ne!(shown[0], shown[2], "a local time: {shown}");
        assert_eq!(shown[1], shown[2], "{shown}");
        b.screenshot(&artifacts().join("status-page.png")).await;

        // Filter to the failures: only the failing unit is left.
        b.click("#f-result option[value=\"failed\"]").await;
        let visible = "return JSON.stringify(Array.from(document.querySelectorAll('tbody.unit'))\
                       .filter(e => !e.hidden && !e.closest('section').hidden)\
                       .map(e => e.dataset.unit))";
        let want = json!([format!("{t}/bad")]).to_string();
        b.wait_for(
            &format!("{visible} === {want:?}"),
            "only the failing unit",
        )
        .await;
        assert!(
            b.eval("return location.search", json!([]))
                .await
                .as_str()
                .unwrap()
                .contains("result=failed")
        );
        // The text search narrows further, and finds errors' text.
        b.type_into("#f-q", "kube-system").await;
        b.wait_for(&format!("{visible} === {want:?}"), "the search")
            .await;

        // Its page: the error, its syncs, and the comparison with the cluster.
        b.click(&format!("tbody[data-unit=\"{t}/bad\"] a")).await;
        b.wait_for("return document.body.dataset.page === 'unit'", "the unit page")
            .await;
        b.wait_for(
            "return document.querySelector('#inspect').dataset.state === 'loaded'",
            "the comparison",
        )
        .await;
        assert!(b.text("#live").await.contains("kube-system"));
        assert!(b.text("#inspection").await.contains("ConfigMap"));

        // The fix lands in Git; "Sync now" applies it, and its result arrives.
        env.write(&format!("tenants/{t}/bad/cm.yaml"), &cm("bad", "2"));
        b.click("button[data-sync]").await;
        b.wait_for(
            "return (document.querySelector('#sync-panel').dataset.state || '').startsWith('done-')",
            "the sync's result",
        )
        .await;
        let log = b.text("#sync-log").await;
        assert!(log.contains("Queued:"), "{log}");
        assert!(log.contains("converged"), "{log}");
        assert!(log.contains("Done: every set converged"), "{log}");
        assert_eq!(
            b.eval("return document.querySelector('#sync-panel').dataset.state", json!([]))
                .await,
            "done-ok"
        );
        // The page shows the new result by itself.
        b.wait_for(
            "return document.querySelector('#live .badge').textContent === 'converged'",
            "the unit's new result",
        )
        .await;
        assert_eq!(env.configmap(&t, "bad").await.unwrap()["data"]["v"], "2");
        b.screenshot(&artifacts().join("status-page-unit.png")).await;

        // A phone: the fleet in one column, nothing wider than the screen.
        b.resize(390, 844).await;
        b.open(&format!("{base}/")).await;
        b.wait_for("return document.body.dataset.page === 'fleet'", "the fleet page")
            .await;
        assert_eq!(
            b.eval(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                json!([])
            )
            .await,
            true,
            "the page is wider than a phone"
        );
        b.screenshot(&artifacts().join("status-page-phone.png")).await;
        eprintln!("screenshots in {}", artifacts().display());
    })
    .await;
}
