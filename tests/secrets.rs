//! SOPS-encrypted files through the real binary: plain YAML, kustomize (a Secret and a
//! `secretGenerator` over an encrypted `.env`), Helm values; each tenant with its own keys; no
//! plaintext in output, logs, status or the state folder.

use serde_json::json;

use crate::support::apply_scenarios::Env;
use crate::support::kube_api::ApiServer;
use crate::support::sops::{age_key, age_variant_of_fixture, encrypt, encrypt_dotenv, fixtures};
use crate::support::{Platform, documents};

/// The secret value every test hides.
const PLAINTEXT: &str = "hunter2-very-secret-value";

fn secret(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "type": "Opaque", "stringData": {"password": PLAINTEXT}})
}

fn no_age(test: &str) {
    eprintln!("{test}: the age tools are not installed (Debian's age); skipped");
}

/// Every file below `dir` (the state folder), searched for `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                pending.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// A plain-YAML app's encrypted Secret is applied and readable in the cluster; `render` masks
/// it (unless `--show-secrets`); no output, log, status or file of the state folder holds the
/// plaintext; the hash annotation is keyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_secret_is_applied_and_shown_nowhere() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let Some((key, recipient)) = age_key(env.dir.path(), "team") else {
            return no_age("plain secret");
        };
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!(
                "{config}decryption:\n  team: {{ age_key_file: {} }}\n",
                key.display()
            ),
        );
        let t = env.name("sops");
        env.tenant(
            &t,
            &[&t],
            "decryption: [team]\n",
            "apps:\n  - { name: web, source: { path: web } }\n",
        );
        env.write(
            &format!("tenants/{t}/web/secret.yaml"),
            &encrypt(&secret("db"), &recipient, Some("^(data|stringData)$")),
        );
        env.write(
            &format!("tenants/{t}/web/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: plain }\n",
        );
        let run = env.sync().await;
        let live = env
            .get("v1", "Secret", Some(&t), "db")
            .await
            .expect("applied");
        let stored = live["data"]["password"].as_str().map(|b| {
            use base64::Engine as _;
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
        });
        let value = stored.or_else(|| live["stringData"]["password"].as_str().map(str::to_string));
        assert_eq!(value.as_deref(), Some(PLAINTEXT), "{live}");
        let annotation = live["metadata"]["annotations"]["flotilla.dev/hash"]
            .as_str()
            .unwrap();
        let plain_hash = flotilla::render::hash(&{
            let mut b = secret("db");
            b["metadata"]["namespace"] = json!(t);
            b
        });
        assert_ne!(annotation, plain_hash);
        assert!(!format!("{run:?}").contains(PLAINTEXT), "{run:?}");

        let render = env.flotilla(&["render"]).await;
        assert_eq!(render.code, 0, "{render:?}");
        assert!(!format!("{render:?}").contains(PLAINTEXT), "{render:?}");
        let masked = documents(&render.stdout);
        let s = masked.iter().find(|d| d["kind"] == "Secret").unwrap();
        assert_eq!(s["stringData"]["password"], "***");
        let shown = env.flotilla(&["render", "--show-secrets"]).await;
        assert!(shown.stdout.contains(PLAINTEXT), "{shown:?}");

        let diff = env.flotilla(&["diff"]).await;
        assert!(!format!("{diff:?}").contains(PLAINTEXT), "{diff:?}");
        let found = files_containing(&env.dir.path().join(".state"), PLAINTEXT);
        assert!(found.is_empty(), "plaintext at rest: {found:?}");
        let inventory = env.configmap(&t, "flotilla-web").await.unwrap();
        assert!(!inventory.to_string().contains(PLAINTEXT));
    })
    .await;
}

/// A tenant's kustomization with an encrypted Secret and a `secretGenerator` over an encrypted
/// `.env` file; a Helm values file that sops itself wrote (its age variant); nothing decrypted
/// is left on disk.
#[test]
fn kustomize_and_helm_values_files_are_decrypted() {
    let p = Platform::new();
    let Some((key, recipient)) = age_key(p.dir.path(), "team") else {
        return no_age("kustomize secret");
    };
    p.file(
        "flotilla.yaml",
        &format!("cluster: dev\nfleet: {{ dir: fleet }}\ndecryption:\n  team: {{ age_key_file: {} }}\n", key.display()),
    )
    .tenant("ai", "[ai]", "apps:\n  - { name: kz, source: { path: kz } }\n")
    .file(
        "fleet/tenants/ai.yaml",
        "name: ai\nnamespaces: [ai]\nsource: { dir: ../../tenants/ai }\nclusters: [{ labels: {} }]\ndecryption: [team]\n",
    )
    .file(
        "tenants/ai/kz/kustomization.yaml",
        "resources: [secret.enc.yaml]\nsecretGenerator:\n  - { name: app-env, envs: [app.enc.env] }\ngeneratorOptions: { disableNameSuffixHash: true }\n",
    )
    // The MAC over the encrypted values only (mac_only_encrypted), as sops seeds it.
    .file(
        "tenants/ai/kz/secret.enc.yaml",
        &crate::support::sops::encrypt_with(&secret("db"), &recipient, Some("^(data|stringData)$"), true),
    )
    .file(
        "tenants/ai/kz/app.enc.env",
        &encrypt_dotenv(&[("API_TOKEN", PLAINTEXT), ("MODE", "prod"), ("PEM", "line one\nline two")], &recipient),
    );
    let run = p.run(&["render", "--show-secrets"]);
    assert_eq!(run.code, 0, "{run:?}");
    let docs = documents(&run.stdout);
    let db = docs.iter().find(|d| d["metadata"]["name"] == "db").unwrap();
    assert_eq!(db["stringData"]["password"], PLAINTEXT);
    let generated = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "app-env")
        .unwrap();
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD
        .decode(generated["data"]["API_TOKEN"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(token).unwrap(), PLAINTEXT);
    assert!(generated["data"].get("sops_mac").is_none(), "{generated}");
    // A multi-line value stays one value (the dotenv form escapes its newlines).
    let pem = base64::engine::general_purpose::STANDARD
        .decode(generated["data"]["PEM"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(pem).unwrap().starts_with("line one"),
        "{generated}"
    );
    // The private copy kustomize built is gone.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("flotilla-sops-")
        })
        .filter(|e| !files_containing(&e.path(), PLAINTEXT).is_empty())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // An encrypted values file, written by sops (foo: bar), its data key also for our age key.
    let Some(helm) = crate::support::helm_standin(p.dir.path()) else {
        eprintln!("values files: no Python with helm-python-sdk; skipped");
        return;
    };
    let Some(values) = age_variant_of_fixture(p.dir.path(), &recipient) else {
        eprintln!("values files: gpg cannot open the fixture; skipped");
        return;
    };
    p.file(
        "flotilla.yaml",
        &format!(
            "cluster: dev\nfleet: {{ dir: fleet }}\nrender: {{ helm: {} }}\ndecryption:\n  team: {{ age_key_file: {} }}\n",
            helm.display(),
            key.display()
        ),
    )
    .file("tenants/ai/tenant.yaml", "apps:\n  - { name: chart, source: { path: chart }, valuesFiles: [values/secret.enc.yaml] }\n")
    .file("tenants/ai/values/secret.enc.yaml", &values)
    .file("tenants/ai/chart/Chart.yaml", "apiVersion: v2\nname: chart\nversion: 0.1.0\n")
    .file("tenants/ai/chart/templates/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: chart }\ndata: { foo: {{ .Values.foo | quote }} }\n");
    let run = p.run(&["render"]);
    assert_eq!(run.code, 0, "{run:?}");
    let cm = documents(&run.stdout)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .unwrap();
    assert_eq!(cm["data"]["foo"], "bar");
}

/// Refused, naming the file and the cause, never decrypted: a file without a MAC (sops wrote
/// it), a tampered value, and a file of another tenant's key copied into this tenant's repo.
#[test]
fn missing_macs_tampering_and_other_tenants_files_are_refused() {
    let p = Platform::new();
    let Some((a_key, a_recipient)) = age_key(p.dir.path(), "a") else {
        return no_age("refusals");
    };
    let (b_key, _) = age_key(p.dir.path(), "b").unwrap();
    let pgp = p.dir.path().join("tests.asc");
    std::fs::copy(fixtures().join("sops_functional_tests_key.asc"), &pgp).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pgp, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.file(
        "flotilla.yaml",
        &format!(
            "cluster: dev\nfleet: {{ dir: fleet }}\ndecryption:\n  a: {{ age_key_file: {} }}\n  b: {{ age_key_file: {} }}\n  pgp: {{ pgp_key_file: {} }}\n",
            a_key.display(),
            b_key.display(),
            pgp.display()
        ),
    );
    for (name, keys) in [("alpha", "[a, pgp]"), ("beta", "[b]")] {
        p.tenant(name, &format!("[{name}]"), "apps:\n  - { name: web, source: { path: web } }\n")
            .file(
                &format!("fleet/tenants/{name}.yaml"),
                &format!("name: {name}\nnamespaces: [{name}]\nsource: {{ dir: ../../tenants/{name} }}\nclusters: [{{ labels: {{}} }}]\ndecryption: {keys}\n"),
            );
    }
    let good = encrypt(&secret("db"), &a_recipient, Some("^(data|stringData)$"));
    // Alpha: its own file works; a file sops wrote without a MAC does not.
    p.file("tenants/alpha/web/secret.yaml", &good).file(
        "tenants/alpha/web/nomac.yaml",
        &std::fs::read_to_string(fixtures().join("no_mac.yaml")).unwrap(),
    );
    // Beta copied alpha's encrypted Secret into its own repository.
    p.file("tenants/beta/web/stolen.yaml", &good);
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("tenant alpha, app web: web/nomac.yaml: cannot decrypt: it has no MAC"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("tenant beta, app web: web/stolen.yaml: cannot decrypt: none of the keys this unit may use (b) opens it"),
        "{run:?}"
    );
    assert!(!format!("{run:?}").contains(PLAINTEXT));

    // A value changed in place (its ciphertext): refused.
    let doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    let enc = doc["stringData"]["password"].as_str().unwrap().to_string();
    let at = enc.find("data:").unwrap() + 5;
    let flipped = if &enc[at..at + 1] == "A" { "B" } else { "A" };
    let tampered = good.replace(&enc, &format!("{}{flipped}{}", &enc[..at], &enc[at + 1..]));
    p.file(
        "tenants/alpha/web/nomac.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\n",
    )
    .file("tenants/alpha/web/secret.yaml", &tampered);
    let run = p.run(&["render", "--tenant", "alpha"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "web/secret.yaml: cannot decrypt: stringData.password: a value does not decrypt"
        ),
        "{run:?}"
    );
    // validate checks every encrypted file the same way.
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("web/secret.yaml: cannot decrypt"),
        "{run:?}"
    );
}

/// Keys the fleet lets a tenant keep in a Secret of its own namespace, read with the tenant's
/// identity when the agent syncs; `render` (offline) says where that key is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_key_from_a_secret_in_its_namespace() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let Some((key, recipient)) = age_key(env.dir.path(), "tenant") else {
            return no_age("secret key");
        };
        let t = env.name("keys");
        env.tenant(
            &t,
            &[&t],
            "decryption: [{ secret: sops-keys }]\n",
            "apps:\n  - { name: web, source: { path: web } }\n",
        );
        env.write(
            &format!("tenants/{t}/web/secret.yaml"),
            &encrypt(&secret("db"), &recipient, Some("^(data|stringData)$")),
        );
        // The tenant's platform team put the key there (a namespace the tenant owns).
        env.admin_apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": t}}))
            .await;
        let identity = std::fs::read_to_string(&key).unwrap();
        env.admin_apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "sops-keys", "namespace": t},
            "stringData": {"identity.agekey": identity}}))
            .await;
        // The first pass onboards the tenant (its RoleBinding): until then it cannot read the
        // Secret, a transient failure; the next pass decrypts.
        let first = env.flotilla(&["run", "--once"]).await;
        assert!(first.stdout.contains("FAILED (transient)"), "{first:?}");
        assert!(
            first.stdout.contains("could not be read as the tenant"),
            "{first:?}"
        );
        env.sync().await;
        assert!(env.get("v1", "Secret", Some(&t), "db").await.is_some());
        // Read as the tenant: the request log shows the impersonated read.
        if let Some(log) = &env.log {
            let reads: Vec<_> = log
                .requests()
                .into_iter()
                .filter(|r| r.method == "GET" && r.path.contains("/secrets/sops-keys"))
                .collect();
            assert!(!reads.is_empty());
            let sa = format!("system:serviceaccount:{t}:flotilla-tenant");
            assert!(
                reads
                    .iter()
                    .all(|r| r.impersonated.as_deref() == Some(sa.as_str())),
                "{reads:#?}"
            );
        }
        let render = env.flotilla(&["render"]).await;
        assert_eq!(render.code, 1, "{render:?}");
        assert!(
            render
                .stderr
                .contains("is read from the tenant's namespace when the agent syncs"),
            "{render:?}"
        );
    })
    .await;
}
