//! Verified provenance: commits and tags signed with SSH keys (`gpg.format ssh`, `ssh-keygen`)
//! and OpenPGP keys (`gpg`) by the real `git` CLI, checked by the agent against the keys its
//! config trusts; unsigned, untrusted and tampered revisions refused, the last verified one
//! kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla::config::{Config, GitRef, SourceLocation, SourceSpec, Verify, VerifyMode};
use flotilla::failure::Kind;
use flotilla::source::Sources;

use crate::support::git::{Repo, git};
use crate::support::{Dir, Platform};

/// An SSH signing key: its private key file, and its allowed-signers line for `principal`.
struct SshSigner {
    key: PathBuf,
    allowed: String,
}

fn ssh_signer(dir: &Path, principal: &str) -> SshSigner {
    let key = dir.join(format!("{principal}-key"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", principal, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{out:?}");
    let public =
        std::fs::read_to_string(key.with_file_name(format!("{principal}-key.pub"))).unwrap();
    let mut parts = public.split_whitespace();
    let allowed = format!(
        "{principal} namespaces=\"git\" {} {}\n",
        parts.next().unwrap(),
        parts.next().unwrap()
    );
    SshSigner { key, allowed }
}

/// An OpenPGP signing key in its own GnuPG home: the home, its fingerprint, its armored
/// public key.
struct PgpSigner {
    home: PathBuf,
    fingerprint: String,
    public: String,
}

fn pgp_signer(dir: &Path, uid: &str) -> PgpSigner {
    let home = dir.join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(out.status.success(), "gpg {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    gpg(&["--quick-gen-key", uid, "ed25519", "sign", "never"]);
    let listing = gpg(&["--with-colons", "--list-keys", uid]);
    let fingerprint = listing
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_string())
        })
        .unwrap();
    let public = gpg(&["--armor", "--export", &fingerprint]);
    PgpSigner {
        home,
        fingerprint,
        public,
    }
}

/// `git` in the repo with extra arguments and environment (signing).
fn git_with(repo: &Repo, config: &[String], env: &[(&str, &Path)], args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    for c in config {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .args(args)
        .current_dir(&repo.path)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", &repo.path)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ssh_config(signer: &SshSigner) -> Vec<String> {
    vec![
        "gpg.format=ssh".into(),
        format!("user.signingkey={}", signer.key.display()),
    ]
}

fn commit_ssh(repo: &Repo, signer: &SshSigner, message: &str) -> String {
    git(&repo.path, &["add", "-A"]);
    git_with(
        repo,
        &ssh_config(signer),
        &[],
        &["commit", "-q", "-S", "--allow-empty", "-m", message],
    );
    repo.head()
}

fn commit_pgp(repo: &Repo, signer: &PgpSigner, message: &str) -> String {
    git(&repo.path, &["add", "-A"]);
    git_with(
        repo,
        &[format!("user.signingkey={}", signer.fingerprint)],
        &[("GNUPGHOME", &signer.home)],
        &["commit", "-q", "-S", "--allow-empty", "-m", message],
    );
    repo.head()
}

fn spec(repo: &Repo, reference: GitRef, mode: VerifyMode, keys: &[&str]) -> SourceSpec {
    SourceSpec {
        location: SourceLocation::Url(repo.url()),
        reference,
        path: None,
        credentials: None,
        verify: Some(Verify {
            mode,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }),
    }
}

fn main_branch() -> GitRef {
    GitRef::Branch("main".into())
}

#[tokio::test]
async fn signed_commits_and_tags_are_verified_and_the_rest_refused() {
    let dir = Dir::new();
    let alice = ssh_signer(dir.path(), "alice@example.com");
    let mallory = ssh_signer(dir.path(), "mallory@example.com");
    let bob = pgp_signer(dir.path(), "Bob <bob@example.com>");
    dir.write("allowed_signers", &alice.allowed);
    dir.write("bob.asc", &bob.public);
    dir.write("fleet/.keep", "");
    let file = dir.write(
        "flotilla.yaml",
        "cluster: dev\nfleet: { dir: fleet }\nstate_dir: state\nverification_keys:\n  team-ssh: { ssh_allowed_signers_file: allowed_signers }\n  team-pgp: { pgp_public_key_file: bob.asc }\n",
    );
    let sources = Sources::new(&Config::load(&file).unwrap_or_else(|e| panic!("{e}")));
    let repo = Repo::init(&dir.path().join("remote"));
    let trusted = spec(
        &repo,
        main_branch(),
        VerifyMode::Head,
        &["team-ssh", "team-pgp"],
    );

    // Signed with SSH by a trusted key: verified, and who signed is known.
    repo.write("app.yaml", "v: 1\n");
    let first = commit_ssh(&repo, &alice, "one");
    let checkout = sources.fetch(&trusted).await.expect("verified");
    assert_eq!(checkout.revision, first);
    let signer = checkout.signer.clone().unwrap();
    assert!(
        signer.starts_with("alice@example.com (SSH SHA256:"),
        "{signer}"
    );

    // Signed with OpenPGP by a trusted key.
    repo.write("app.yaml", "v: 2\n");
    let second = commit_pgp(&repo, &bob, "two");
    let checkout = sources.fetch(&trusted).await.expect("verified");
    assert_eq!(checkout.revision, second);
    let signer = checkout.signer.clone().unwrap();
    assert!(
        signer.starts_with("Bob <bob@example.com> (OpenPGP ") && signer.contains(&bob.fingerprint),
        "{signer}"
    );

    // Unsigned, signed by a key no one trusts, or carrying another commit's signature: refused,
    // permanently, and the last verified revision stays the last good one.
    let refused = |why: &str| {
        let why = why.to_string();
        move |e: flotilla::source::Error| {
            assert!(e.unverified, "{e}");
            assert_eq!(e.kind, Kind::Permanent, "{e}");
            assert!(
                e.message.starts_with("signature not verified: ") && e.message.contains(&why),
                "{e}"
            );
        }
    };
    repo.write("app.yaml", "v: 3\n");
    let unsigned = repo.commit("three");
    refused(&format!("commit {} is not signed", &unsigned[..12]))(
        sources.fetch(&trusted).await.unwrap_err(),
    );
    let last = sources
        .last_good(&trusted)
        .expect("the last verified commit");
    assert_eq!(last.revision, second);
    assert_eq!(last.signer, checkout.signer);
    // The same URL and ref fetched without `verify` does not stand in for the verified one.
    let plain = SourceSpec {
        verify: None,
        ..trusted.clone()
    };
    assert_eq!(sources.fetch(&plain).await.unwrap().revision, unsigned);
    assert_eq!(sources.last_good(&trusted).unwrap().revision, second);

    repo.write("app.yaml", "v: 4\n");
    commit_ssh(&repo, &mallory, "four");
    refused("which no trusted key names")(sources.fetch(&trusted).await.unwrap_err());

    // A commit made by hand with the first commit's signature over other content.
    let signed = git(&repo.path, &["cat-file", "commit", &first]);
    let forged = signed.replacen("\n\none", "\n\nforged", 1);
    assert_ne!(forged, signed);
    let path = dir.write("forged-commit", format!("{forged}\n"));
    let oid = git(
        &repo.path,
        &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()],
    );
    git(&repo.path, &["update-ref", "refs/heads/main", &oid]);
    refused("does not match")(sources.fetch(&trusted).await.unwrap_err());
    assert_eq!(sources.last_good(&trusted).unwrap().revision, second);

    // Only the keys the source names count: Bob's commit is not trusted by the SSH key alone.
    git(&repo.path, &["update-ref", "refs/heads/main", &second]);
    let ssh_only = spec(&repo, main_branch(), VerifyMode::Head, &["team-ssh"]);
    refused("which no trusted key verifies")(sources.fetch(&ssh_only).await.unwrap_err());

    // Tags: a signed annotated tag for `tag` mode; an unsigned one refused.
    git(&repo.path, &["update-ref", "refs/heads/main", &first]);
    git_with(
        &repo,
        &ssh_config(&alice),
        &[],
        &["tag", "-s", "v1.0.0", "-m", "v1.0.0"],
    );
    repo.tag_annotated("v1.1.0");
    let tag = |name: &str, mode| spec(&repo, GitRef::Tag(name.into()), mode, &["team-ssh"]);
    let checkout = sources
        .fetch(&tag("v1.0.0", VerifyMode::Tag))
        .await
        .expect("a signed tag");
    assert!(checkout.signer.unwrap().starts_with("alice@example.com"));
    // Both the tag and its commit (Alice signed both).
    sources
        .fetch(&tag("v1.0.0", VerifyMode::TagAndHead))
        .await
        .expect("a signed tag of a signed commit");
    refused("is not signed")(
        sources
            .fetch(&tag("v1.1.0", VerifyMode::Tag))
            .await
            .unwrap_err(),
    );
    // A signed tag replayed under another name (to pass an old release for a new one).
    let object = git(&repo.path, &["rev-parse", "refs/tags/v1.0.0"]);
    git(&repo.path, &["update-ref", "refs/tags/v9.9.9", &object]);
    refused("is named \"v1.0.0\", not \"v9.9.9\"")(
        sources
            .fetch(&tag("v9.9.9", VerifyMode::Tag))
            .await
            .unwrap_err(),
    );
    // A branch has no tag to verify.
    refused("not an annotated tag")(
        sources
            .fetch(&spec(&repo, main_branch(), VerifyMode::Tag, &["team-ssh"]))
            .await
            .unwrap_err(),
    );
}

/// The fleet decides: a tenant whose fleet entry asks for signatures cannot ask for less for its
/// app repos, nor name keys the fleet did not give it; an app repo without a `verify` of its own
/// is held to the fleet's, and its unsigned commit is refused, naming the app and the commit.
#[test]
fn a_tenant_cannot_weaken_what_the_fleet_asks() {
    let p = Platform::new();
    let alice = ssh_signer(p.dir.path(), "alice@example.com");
    p.file("allowed_signers", &alice.allowed);
    let tenant_repo = Repo::init(&p.dir.path().join("tenant-repo"));
    let app_repo = Repo::init(&p.dir.path().join("app-repo"));
    app_repo.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\n",
    );
    let unsigned = app_repo.commit("unsigned");
    let app_url = app_repo.url();
    let web = format!("apps:\n  - {{ name: web, source: {{ url: \"{app_url}\" }} }}\n");
    tenant_repo.write("tenant.yaml", &web);
    commit_ssh(&tenant_repo, &alice, "catalog");
    p.file(
        "flotilla.yaml",
        "cluster: dev\nfleet: { dir: fleet }\nstate_dir: state\nverification_keys:\n  team: { ssh_allowed_signers_file: allowed_signers }\n  other: { ssh_allowed_signers_file: allowed_signers }\n",
    )
    .file(
        "fleet/tenants/ai.yaml",
        &format!(
            "name: ai\nnamespaces: [ai]\nsource: {{ url: \"{}\", verify: {{ keys: [team] }} }}\nclusters: [{{ name: dev }}]\nlimits: {{ schemes: [file] }}\n",
            tenant_repo.url()
        ),
    );
    // Another tenant, asked for no signatures, uses the same repository and ref: its fetch
    // does not serve ai's app.
    p.tenant(
        "aaa",
        "[aaa]",
        &format!("apps:\n  - {{ name: web, source: {{ url: \"{app_url}\" }} }}\n"),
    )
    .file(
        "fleet/tenants/aaa.yaml",
        "name: aaa\nnamespaces: [aaa]\nsource: { dir: ../../tenants/aaa }\nclusters: [{ name: dev }]\nlimits: { schemes: [file] }\n",
    );
    // The app repo is held to the fleet's requirement on the tenant.
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("tenant ai, app web")
            && run.stderr.contains(&format!(
                "signature not verified: commit {} is not signed",
                &unsigned[..12]
            )),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("# Source: aaa/web") && !run.stdout.contains("# Source: ai/web"),
        "{run:?}"
    );
    // Asking for other keys is refused, naming the field.
    tenant_repo.write(
        "tenant.yaml",
        &format!("{web}  - {{ name: weak, source: {{ url: \"{app_url}\", verify: {{ keys: [other] }} }} }}\n"),
    );
    commit_ssh(&tenant_repo, &alice, "weaker");
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "apps[1].source.verify: must check at least what the fleet asks of tenant ai"
        ),
        "{run:?}"
    );
    // And the tenant's own repo, unsigned, is not read at all.
    tenant_repo.write("tenant.yaml", &web);
    let catalog = tenant_repo.commit("unsigned catalog");
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "tenant ai: source: {}: signature not verified: commit {} is not signed",
            tenant_repo.url(),
            &catalog[..12]
        )),
        "{run:?}"
    );
}

/// Through `run --once` against the test API server: a verified revision is applied; an
/// unsigned one is not, the unit fails naming the commit, and what the verified revision applied
/// stays (nothing is pruned because of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_revision_is_not_applied_and_the_verified_one_stays() {
    use crate::support::apply_scenarios::Env;
    use crate::support::kube_api::ApiServer;
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let t = env.name("signed");
        let alice = ssh_signer(env.dir.path(), "alice@example.com");
        env.write("allowed_signers", &alice.allowed);
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!("{config}verification_keys:\n  team: {{ ssh_allowed_signers_file: allowed_signers }}\n"),
        );
        let app = Repo::init(&env.dir.path().join("app"));
        let cm = |v: &str| {
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: web }}\ndata: {{ v: \"{v}\" }}\n")
        };
        app.write("cm.yaml", &cm("1"));
        app.write("other.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: other }\n");
        commit_ssh(&app, &alice, "one");
        // The fleet asks for signed app repos; the tenant's catalog says nothing of it.
        env.tenant(
            &t,
            &[&t],
            "limits: { schemes: [file], verify: { keys: [team] } }\n",
            &format!("apps:\n  - {{ name: web, source: {{ url: \"{}\" }} }}\n", app.url()),
        );
        let run = env.sync().await;
        assert!(run.stdout.contains(&format!("tenant {t}, app web")), "{run:?}");
        assert_eq!(env.configmap(&t, "web").await.unwrap()["data"]["v"], "1");

        // Unsigned: refused; the objects of the verified revision stay, none is pruned.
        app.write("cm.yaml", &cm("2"));
        std::fs::remove_file(app.path.join("other.yaml")).unwrap();
        let unsigned = app.commit("unsigned");
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        let line = run
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with(&format!("tenant {t}, app web")))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(line.contains("FAILED (permanent)"), "{run:?}");
        assert!(
            run.stdout.contains(&format!(
                "signature not verified: commit {} is not signed",
                &unsigned[..12]
            )),
            "{run:?}"
        );
        assert_eq!(env.configmap(&t, "web").await.unwrap()["data"]["v"], "1");
        assert!(env.configmap(&t, "other").await.is_some(), "not pruned");

        // Signed again: applied.
        commit_ssh(&app, &alice, "signed again");
        env.sync().await;
        assert_eq!(env.configmap(&t, "web").await.unwrap()["data"]["v"], "2");
        assert!(env.configmap(&t, "other").await.is_none(), "pruned now");
    })
    .await;
}

/// The agent says so: a revision refused for its signature counts on
/// `flotilla_signature_failures_total{repo}`, and the unit's status and Event name the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_counts_refused_revisions_and_reports_them() {
    use crate::support::apply_scenarios::Env;
    use crate::support::daemon::Daemon;
    use crate::support::git::free_port;
    use crate::support::kube_api::ApiServer;
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let t = env.name("refused");
        let alice = ssh_signer(env.dir.path(), "alice@example.com");
        env.write("allowed_signers", &alice.allowed);
        env.write("api-token", "token-for-tests");
        let app = Repo::init(&env.dir.path().join("app"));
        app.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\n");
        let unsigned = app.commit("unsigned");
        env.tenant(
            &t,
            &[&t],
            "limits: { schemes: [file], verify: { keys: [team] } }\n",
            &format!("apps:\n  - {{ name: web, source: {{ url: \"{}\" }} }}\n", app.url()),
        );
        let port = free_port();
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!(
                "{config}verification_keys:\n  team: {{ ssh_allowed_signers_file: allowed_signers }}\n\
                 interval: 1h\nlisten: {{ http: \"127.0.0.1:{port}\", token_file: api-token }}\n"
            ),
        );
        let mut d = Daemon::start(env.dir.path(), "flotilla.yaml", port, &[]);
        d.token = Some("token-for-tests".into());
        d.wait_ready(std::time::Duration::from_secs(60)).await;
        let metrics = d.metrics().await;
        let series = metrics
            .lines()
            .find(|l| l.starts_with("flotilla_signature_failures_total{repo="))
            .unwrap_or_else(|| panic!("no signature failure counted:\n{metrics}"));
        assert!(series.ends_with(" 1"), "{series}");
        let status = d.status("token-for-tests").await;
        let unit = status["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == format!("{t}/web"))
            .cloned()
            .unwrap();
        assert_eq!(unit["result"], "failed", "{unit}");
        let error = unit["last_error"].as_str().unwrap();
        assert!(
            error.contains(&format!("signature not verified: commit {} is not signed", &unsigned[..12])),
            "{unit}"
        );
    })
    .await;
}

/// Settings that could not hold are refused when the files are read: a tag checked on a branch,
/// remote kustomize bases (fetched past every check) beside a signature requirement, an unknown
/// key for the fleet.
#[test]
fn impossible_verify_settings_are_named() {
    let p = Platform::new();
    p.file("allowed_signers", "")
        .file(
            "flotilla.yaml",
            "cluster: dev\nfleet: { dir: fleet }\nverification_keys:\n  team: { ssh_allowed_signers_file: allowed_signers }\n",
        )
        .tenant("ai", "[ai]", "apps: []\n")
        .file(
            "fleet/tenants/ai.yaml",
            "name: ai\nnamespaces: [ai]\nsource: { url: \"file:///srv/ai\", verify: { mode: tag, keys: [team] } }\nclusters: [{ name: dev }]\n",
        )
        .tenant("web", "[web]", "apps: []\n")
        .file(
            "fleet/tenants/web.yaml",
            "name: web\nnamespaces: [web]\nsource: { dir: ../../tenants/web }\nclusters: [{ name: dev }]\nlimits: { remoteBases: true, verify: { keys: [team] } }\n",
        );
    // A tenant naming a key the agent does not have.
    p.tenant("ops", "[ops]", "apps: []\n").file(
        "fleet/tenants/ops.yaml",
        "name: ops\nnamespaces: [ops]\nsource: { dir: ../../tenants/ops }\nclusters: [{ name: dev }]\nlimits: { verify: { keys: [team, ghost] } }\n",
    );
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    for problem in [
        "tenants/ai.yaml:3:",
        "source.verify.mode: a tag is verified only for a tag or semver ref",
        "tenants/web.yaml:1:1: limits: remoteBases and verify cannot go together",
        "tenant ops: tenants/ops.yaml: verify names \"ghost\", which is not in the agent config's verification_keys",
    ] {
        assert!(run.stderr.contains(problem), "{problem}: {run:?}");
    }
    p.file(
        "flotilla.yaml",
        "cluster: dev\nfleet: { url: \"file:///srv/fleet\", verify: { keys: [nobody] } }\n",
    );
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(
            "fleet.verify.keys: no verification key named \"nobody\" in verification_keys"
        ),
        "{run:?}"
    );
}
