//! Helm hooks as a sync runs them, shared by `tests/` and `integration/`. Hooks are annotations,
//! so plain YAML carries them as a chart's output would (no Helm engine needed here): pre hooks
//! before the other objects, by weight; post hooks after; test hooks never; a delete policy
//! honoured; hooks run again only when the render changes; deleted with their app.

use std::sync::Arc;

use serde_json::{Value, json};

use super::apply_scenarios::Env;

fn hook(name: &str, event: &str, weight: i32, policy: Option<&str>) -> Value {
    let mut annotations = json!({"helm.sh/hook": event, "helm.sh/hook-weight": weight.to_string()});
    if let Some(p) = policy {
        annotations["helm.sh/hook-delete-policy"] = json!(p);
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "annotations": annotations}, "data": {"ran": "yes"}})
}

fn write(env: &Env, t: &str, main_value: &str) {
    let docs = [
        hook("pre-b", "pre-install,pre-upgrade", 5, None),
        hook("pre-a", "pre-install", -5, Some("hook-succeeded")),
        hook(
            "post",
            "post-install,post-upgrade",
            0,
            Some("before-hook-creation"),
        ),
        hook("smoke", "test", 0, None),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "main"},
            "data": {"v": main_value}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept",
            "annotations": {"helm.sh/resource-policy": "keep"}}}),
    ];
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    env.write(&format!("tenants/{t}/web/all.yaml"), &text.join("\n---\n"));
}

async fn uid(env: &Env, ns: &str, name: &str) -> Option<String> {
    env.configmap(ns, name)
        .await
        .map(|c| c["metadata"]["uid"].as_str().unwrap().to_string())
}

/// Pre hooks by weight, then the app's objects, then post hooks; a `hook-succeeded` hook gone
/// afterwards; a test hook never applied; hooks not inventory members and not run again on an
/// unchanged render, run again when it changes; `resource-policy: keep` never pruned; the
/// hooks deleted with their app.
pub async fn helm_hooks_run_in_their_phases_once_per_render(env: Arc<Env>) {
    let t = env.name("hooks");
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: web, source: { path: web } }\n",
    );
    write(&env, &t, "1");
    env.clear_log();
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("ConfigMap {t}/pre-b (hook ran)")),
        "{run:?}"
    );
    assert!(
        env.configmap(&t, "pre-a").await.is_none(),
        "hook-succeeded: deleted"
    );
    assert!(
        env.configmap(&t, "smoke").await.is_none(),
        "a test hook is never applied"
    );
    for name in ["pre-b", "main", "post", "kept"] {
        assert!(env.configmap(&t, name).await.is_some(), "{name}");
    }
    // The order of the writes: pre-a (created, then deleted), pre-b, the app's objects, post.
    if let Some(writes) = env.writes() {
        let order: Vec<String> = writes
            .iter()
            .filter(|w| w.path.contains(&format!("/namespaces/{t}/configmaps/")))
            .map(|w| {
                format!(
                    "{} {}",
                    w.method,
                    w.path
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .split('?')
                        .next()
                        .unwrap()
                )
            })
            .collect();
        let at = |what: &str| {
            order
                .iter()
                .position(|o| o == what)
                .unwrap_or_else(|| panic!("{what}: {order:?}"))
        };
        assert!(at("PATCH pre-a") < at("DELETE pre-a"), "{order:?}");
        assert!(at("DELETE pre-a") < at("PATCH pre-b"), "{order:?}");
        assert!(at("PATCH pre-b") < at("PATCH main"), "{order:?}");
        assert!(at("PATCH main") < at("PATCH post"), "{order:?}");
    }
    let parent = env.configmap(&t, "flotilla-web").await.unwrap();
    let members = parent["data"]["members"].as_str().unwrap();
    assert!(
        members.contains(" main ") && !members.contains("pre-b"),
        "{members}"
    );
    let hooks = parent["data"]["hooks"].as_str().unwrap();
    assert!(
        hooks.contains(" pre-b") && hooks.contains(" post"),
        "{hooks}"
    );

    // Unchanged: the hooks do not run again.
    let (pre_b, post) = (uid(&env, &t, "pre-b").await, uid(&env, &t, "post").await);
    let run = env.sync().await;
    assert!(!run.stdout.contains("hook ran"), "{run:?}");
    assert_eq!(uid(&env, &t, "pre-b").await, pre_b);

    // A changed render: every hook runs again, each recreated (before-hook-creation).
    write(&env, &t, "2");
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("ConfigMap {t}/post (hook ran)")),
        "{run:?}"
    );
    assert_ne!(uid(&env, &t, "pre-b").await, pre_b);
    assert_ne!(uid(&env, &t, "post").await, post);

    // An object of the app that becomes a hook is run as one, and not pruned as a member.
    let docs =
        std::fs::read_to_string(env.dir.path().join(format!("tenants/{t}/web/all.yaml"))).unwrap();
    env.write(
        &format!("tenants/{t}/web/all.yaml"),
        &docs.replace(
            r#""metadata":{"name":"main"}"#,
            r#""metadata":{"name":"main","annotations":{"helm.sh/hook":"pre-upgrade"}}"#,
        ),
    );
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("ConfigMap {t}/main (hook ran)")),
        "{run:?}"
    );
    assert!(env.configmap(&t, "main").await.is_some(), "{run:?}");

    // The app removed: its objects pruned, its hooks deleted, `keep` left in place.
    env.write(&format!("tenants/{t}/tenant.yaml"), "apps: []\n");
    let run = env.sync().await;
    for name in ["main", "pre-b", "post"] {
        assert!(env.configmap(&t, name).await.is_none(), "{name}: {run:?}");
    }
    assert!(env.configmap(&t, "kept").await.is_some(), "{run:?}");
    assert!(env.configmap(&t, "flotilla-web").await.is_none(), "{run:?}");
}
