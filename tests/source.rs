//! Git sources against real Git: `file://`, `git daemon` and OpenSSH `sshd` on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla::config::{Config, GitRef, SourceLocation, SourceSpec};
use flotilla::source::{Checkout, Sources};

use crate::support::git::{GitDaemon, Repo, Sshd, free_port, git, keygen, sshd_binary};
use crate::support::{Dir, Platform};

/// An agent config in `dir` whose state lives in `dir/state`, with `extra` appended.
fn sources(dir: &Dir, extra: &str) -> Sources {
    dir.write("fleet/.keep", "");
    let file = dir.write(
        "flotilla.yaml",
        format!("cluster: dev\nfleet: {{ dir: fleet }}\nstate_dir: state\n{extra}"),
    );
    Sources::new(&Config::load(&file).unwrap_or_else(|e| panic!("{e}")))
}

fn spec(url: &str, reference: GitRef) -> SourceSpec {
    SourceSpec {
        location: SourceLocation::Url(url.to_string()),
        reference,
        path: None,
        credentials: None,
        verify: None,
    }
}

fn branch(b: &str) -> GitRef {
    GitRef::Branch(b.to_string())
}

fn read(c: &Checkout, rel: &str) -> String {
    std::fs::read_to_string(c.root.join(rel)).unwrap()
}

fn checkouts(dir: &Dir) -> usize {
    let base = dir.path().join("state/git/checkouts");
    std::fs::read_dir(&base).map_or(0, |keys| {
        keys.flatten()
            .map(|k| {
                std::fs::read_dir(k.path())
                    .unwrap()
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .sum()
    })
}

#[tokio::test]
async fn a_branch_follows_new_commits_and_old_checkouts_are_collected() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    repo.write("app.yaml", "v: 1\n");
    let first = repo.commit("one");
    let s = sources(&dir, "");
    let spec = spec(&repo.url(), branch("main"));

    let c1 = s.fetch(&spec).await.unwrap();
    assert_eq!(c1.revision, first);
    assert_eq!(read(&c1, "app.yaml"), "v: 1\n");

    repo.write("app.yaml", "v: 2\n");
    let second = repo.commit("two");
    let c2 = s.fetch(&spec).await.unwrap();
    assert_eq!(c2.revision, second);
    assert_eq!(read(&c2, "app.yaml"), "v: 2\n");
    assert_eq!(
        read(&c1, "app.yaml"),
        "v: 1\n",
        "the previous checkout is immutable and kept"
    );
    // Regression (review M1): a fetch that finds no change must not forget the previous commit.
    assert_eq!(s.fetch(&spec).await.unwrap(), c2);
    assert!(
        c1.root.exists(),
        "still the previous one after a no-change fetch"
    );

    repo.write("app.yaml", "v: 3\n");
    repo.commit("three");
    let c3 = s.fetch(&spec).await.unwrap();
    assert_eq!(read(&c3, "app.yaml"), "v: 3\n");
    assert!(!c1.root.exists(), "older than the last good: collected");
    assert!(c2.root.exists(), "the last good is kept");
    assert_eq!(checkouts(&dir), 2);
}

#[tokio::test]
async fn a_poll_without_change_lists_refs_once_and_fetches_nothing() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("served/fleet"));
    repo.write("a.yaml", "a: 1\n");
    repo.commit("one");
    let daemon = GitDaemon::start(&dir.path().join("served"), &dir.path().join("daemon.log"));
    let s = sources(&dir, "");
    let spec = spec(&daemon.url("fleet"), branch("main"));

    let first = s.fetch(&spec).await.unwrap();
    let after_first = daemon.upload_packs();
    assert_eq!(after_first, 2, "a first fetch: one listing, one fetch");

    let again = s.fetch(&spec).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        daemon.upload_packs(),
        after_first + 1,
        "no change: one ref listing, no fetch"
    );

    repo.write("a.yaml", "a: 2\n");
    let moved = repo.commit("two");
    let c = s.fetch(&spec).await.unwrap();
    assert_eq!(c.revision, moved);
    assert_eq!(read(&c, "a.yaml"), "a: 2\n");
    assert_eq!(
        daemon.upload_packs(),
        after_first + 3,
        "a moved ref: one listing, one fetch"
    );
}

#[tokio::test]
async fn tags_and_semver_ranges_pick_the_right_commit() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    let mut shas = std::collections::BTreeMap::new();
    for (tag, annotated) in [
        ("v1.0.0", false),
        ("v1.2.0", true),
        ("v1.10.1", false),
        ("v1.11.0-rc.1", false),
        ("v2.0.0", true),
        ("not-semver", false),
    ] {
        repo.write("version", tag);
        shas.insert(tag, repo.commit(tag));
        if annotated {
            repo.tag_annotated(tag)
        } else {
            repo.tag(tag)
        }
    }
    let s = sources(&dir, "");
    let fetch = |r: GitRef| {
        let s = &s;
        let spec = spec(&repo.url(), r);
        async move { s.fetch(&spec).await }
    };
    let c = fetch(GitRef::Tag("v1.2.0".into())).await.unwrap();
    assert_eq!(
        c.revision, shas["v1.2.0"],
        "an annotated tag resolves to its commit"
    );
    let c = fetch(GitRef::Semver(">=1.0, <2".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        c.revision, shas["v1.10.1"],
        "highest match, numerically; no pre-release"
    );
    assert_eq!(read(&c, "version"), "v1.10.1");
    // Issue 13: the constraint syntax of Flux and Helm (spaces, `||`, hyphen ranges, `v`).
    for range in [
        ">=1.0.0 <2.0.0",
        ">= v1.0 < v2",
        "1.2 - 1.10 || ^3",
        "1.x",
        "~1.10",
    ] {
        let c = fetch(GitRef::Semver(range.parse().unwrap())).await.unwrap();
        assert_eq!(c.revision, shas["v1.10.1"], "{range}");
    }
    let c = fetch(GitRef::Semver("<1.2 || >=2".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(c.revision, shas["v2.0.0"]);
    let c = fetch(GitRef::Semver(">=1.11.0-rc.0, <2".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        c.revision, shas["v1.11.0-rc.1"],
        "a pre-release when the range asks for one"
    );
    let e = fetch(GitRef::Semver("^3".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(
        e.message
            .starts_with("no tag matches the semver range \"^3\" (tags: "),
        "{e}"
    );
    assert_eq!(e.kind, flotilla::failure::Kind::Permanent);
    let e = fetch(GitRef::Tag("v9".into())).await.unwrap_err();
    assert_eq!(e.message, "tag v9 does not exist on the remote");
}

#[tokio::test]
async fn a_commit_pin_is_used_as_it_is() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    repo.write("f", "old\n");
    let old = repo.commit("old");
    repo.write("f", "new\n");
    repo.commit("new");
    let s = sources(&dir, "");
    for pin in [
        GitRef::Commit {
            sha: old.clone(),
            branch: None,
        },
        GitRef::Commit {
            sha: old.clone(),
            branch: Some("main".into()),
        },
    ] {
        let c = s.fetch(&spec(&repo.url(), pin)).await.unwrap();
        assert_eq!(c.revision, old);
        assert_eq!(read(&c, "f"), "old\n");
    }
    let missing = "0123456789abcdef0123456789abcdef01234567".to_string();
    let e = s
        .fetch(&spec(
            &repo.url(),
            GitRef::Commit {
                sha: missing.clone(),
                branch: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.message, format!("commit {missing} is not on the remote"));
}

#[tokio::test]
async fn a_force_pushed_branch_and_a_deleted_branch() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    repo.write("f", "1\n");
    repo.commit("one");
    git(&repo.path, &["checkout", "-q", "-b", "feature"]);
    repo.write("f", "2\n");
    let before = repo.commit("two");
    let s = sources(&dir, "");
    let feature = spec(&repo.url(), branch("feature"));
    assert_eq!(s.fetch(&feature).await.unwrap().revision, before);

    // History rewritten: the branch now points at a commit that does not descend from the old one.
    git(&repo.path, &["reset", "-q", "--hard", "HEAD~1"]);
    repo.write("f", "rewritten\n");
    let rewritten = repo.commit("rewritten");
    let c = s.fetch(&feature).await.unwrap();
    assert_eq!(c.revision, rewritten);
    assert_eq!(read(&c, "f"), "rewritten\n");

    // Deleted: an error, and the last good checkout stays usable.
    git(&repo.path, &["checkout", "-q", "main"]);
    git(&repo.path, &["branch", "-q", "-D", "feature"]);
    let e = s.fetch(&feature).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: branch feature does not exist on the remote",
            repo.url()
        )
    );
    let last = s
        .last_good(&feature)
        .expect("the last good checkout is kept");
    assert_eq!(last.revision, rewritten);
    assert_eq!(read(&last, "f"), "rewritten\n");
}

#[tokio::test]
async fn two_units_on_one_commit_share_one_checkout() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    repo.write("apps/a/x.yaml", "a\n")
        .write("apps/b/y.yaml", "b\n");
    repo.commit("one");
    repo.tag("v1.0.0");
    let s = sources(&dir, "");
    let a = SourceSpec {
        path: Some("apps/a".into()),
        ..spec(&repo.url(), branch("main"))
    };
    let b = SourceSpec {
        path: Some("apps/b".into()),
        ..spec(&repo.url(), GitRef::Tag("v1.0.0".into()))
    };
    let (ca, cb) = tokio::join!(s.fetch(&a), s.fetch(&b));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(ca.revision, cb.revision);
    assert_eq!(
        ca.root.parent(),
        cb.root.parent(),
        "the same checkout folder"
    );
    assert_eq!(checkouts(&dir), 1);
    assert_eq!(read(&ca, "x.yaml"), "a\n");
    let missing = SourceSpec {
        path: Some("apps/c".into()),
        ..spec(&repo.url(), branch("main"))
    };
    let e = s.fetch(&missing).await.unwrap_err();
    assert!(e.message.ends_with("path apps/c does not exist"), "{e}");
}

/// A link out of the repository is written as a link to nowhere (never followed, refused by the
/// render of an app that holds it: `hostile::one_bad_symlink_takes_only_its_app_down`); the rest
/// of the checkout is usable.
#[tokio::test]
async fn a_symlink_out_of_the_repository_is_never_followed() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    repo.write("ok.yaml", "a: 1\n");
    std::os::unix::fs::symlink("../../../etc/passwd", repo.path.join("sneaky.yaml")).unwrap();
    std::os::unix::fs::symlink("ok.yaml", repo.path.join("fine.yaml")).unwrap();
    repo.commit("links");
    let s = sources(&dir, "");
    let c = s.fetch(&spec(&repo.url(), branch("main"))).await.unwrap();
    let sneaky = c.root.join("sneaky.yaml");
    assert_eq!(
        std::fs::read_link(&sneaky).unwrap(),
        std::path::Path::new(flotilla::source::REFUSED_LINK)
    );
    assert!(std::fs::read_to_string(&sneaky).is_err(), "never followed");
    assert_eq!(read(&c, "fine.yaml"), "a: 1\n");
}

#[tokio::test]
async fn a_corrupted_mirror_is_cloned_again() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    repo.write("f", "1\n");
    repo.commit("one");
    let s = sources(&dir, "");
    let spec = spec(&repo.url(), branch("main"));
    s.fetch(&spec).await.unwrap();
    // Damage every object file and the config of the mirror.
    let mirrors = dir.path().join("state/git/mirrors");
    let mirror = std::fs::read_dir(&mirrors)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for entry in walk(&mirror.join("objects")) {
        let _ = std::fs::write(entry, b"garbage");
    }
    std::fs::write(mirror.join("HEAD"), b"not a ref").unwrap();
    repo.write("f", "2\n");
    let second = repo.commit("two");
    let c = s.fetch(&spec).await.expect("recovered by cloning again");
    assert_eq!(c.revision, second);
    assert_eq!(read(&c, "f"), "2\n");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()))
        } else {
            out.push(e.path())
        }
    }
    out
}

#[tokio::test]
async fn an_unreachable_host_fails_within_the_timeout() {
    let dir = Dir::new();
    let s = sources(
        &dir,
        "git: { timeout: 2s, connect_timeout: 1s, retries: 0 }\n",
    );
    // Nothing listens: refused at once.
    let closed = format!("git://127.0.0.1:{}/fleet", free_port());
    let start = Instant::now();
    let e = s.fetch(&spec(&closed, branch("main"))).await.unwrap_err();
    assert_eq!(e.kind, flotilla::failure::Kind::Transient, "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // Accepts and never answers: stopped by the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("git://{}/fleet", silent.local_addr().unwrap());
    let start = Instant::now();
    let e = s.fetch(&spec(&url, branch("main"))).await.unwrap_err();
    assert_eq!(e.kind, flotilla::failure::Kind::Transient, "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "took {:?}: {e}",
        start.elapsed()
    );
    assert!(e.to_string().starts_with(&format!("{url}: ")), "{e}");
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let dir = Dir::new();
    let s = sources(
        &dir,
        "git: { timeout: 2s, connect_timeout: 1s, retries: 2 }\n",
    );
    let closed = format!("git://127.0.0.1:{}/fleet", free_port());
    let start = Instant::now();
    let e = s.fetch(&spec(&closed, branch("main"))).await.unwrap_err();
    assert_eq!(e.kind, flotilla::failure::Kind::Transient);
    // Two backoffs (about 0.5 s and 1 s, ±20%) before giving up.
    assert!(
        start.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        start.elapsed()
    );
}

/// SSH over OpenSSH's sshd: the right key and host key, a wrong key, an unknown and a changed host key.
#[tokio::test]
async fn ssh_with_host_key_verification() {
    if sshd_binary().is_none() {
        panic!("sshd is missing: .ci/run installs openssh-server");
    }
    let dir = Dir::new();
    let user_key = keygen(&dir.path().join("id_ed25519"));
    let other_key = keygen(&dir.path().join("other_ed25519"));
    let sshd = Sshd::start(&dir.path().join("sshd"), &user_key);
    let repo = Repo::init(&dir.path().join("srv/fleet"));
    repo.write("cluster.yaml", "name: dev\n");
    let head = repo.commit("one");

    dir.write("known_hosts", sshd.known_hosts_line());
    dir.write("unknown_hosts", "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n");
    let changed = keygen(&dir.path().join("impostor"));
    let mut parts = changed.public.split_whitespace();
    dir.write(
        "changed_hosts",
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    );
    let s = sources(
        &dir,
        &format!(
            "credentials:\n  good: {{ ssh_key_file: {}, known_hosts_file: known_hosts, hosts: [127.0.0.1] }}\n  wrongkey: {{ ssh_key_file: {}, known_hosts_file: known_hosts, hosts: [127.0.0.1] }}\n  unknown: {{ ssh_key_file: {}, known_hosts_file: unknown_hosts, hosts: [127.0.0.1] }}\n  changed: {{ ssh_key_file: {}, known_hosts_file: changed_hosts, hosts: [127.0.0.1] }}\n  login: {{ ssh_key_file: {}, known_hosts_file: known_hosts, username: {}, hosts: [127.0.0.1] }}\n",
            user_key.private.display(),
            other_key.private.display(),
            user_key.private.display(),
            user_key.private.display(),
            user_key.private.display(),
            sshd.user
        ),
    );
    let url = sshd.url(&repo.path);
    let with = |cred: &str| SourceSpec {
        credentials: Some(cred.to_string()),
        verify: None,
        ..spec(&url, branch("main"))
    };

    let c = s
        .fetch(&with("good"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.revision, head);
    assert_eq!(read(&c, "cluster.yaml"), "name: dev\n");

    // No user in the URL: the login comes from the credential (regression, review M3).
    let userless = SourceSpec {
        credentials: Some("login".into()),
        verify: None,
        ..spec(
            &format!("ssh://127.0.0.1:{}{}", sshd.port, repo.path.display()),
            branch("main"),
        )
    };
    let c = s.fetch(&userless).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.revision, head);

    let e = s.fetch(&with("wrongkey")).await.unwrap_err();
    assert_eq!(
        e.message,
        format!(
            "authentication failed: the server refused the SSH key {}",
            other_key.private.display()
        )
    );
    assert_eq!(e.kind, flotilla::failure::Kind::Permanent);

    let known = dir.path().join("unknown_hosts");
    let e = s.fetch(&with("unknown")).await.unwrap_err();
    assert_eq!(
        e.message,
        format!(
            "host key refused: [127.0.0.1]:{} is not in the known_hosts file {}",
            sshd.port,
            known.display()
        )
    );
    let e = s.fetch(&with("changed")).await.unwrap_err();
    assert!(
        e.message.contains("differs from the known_hosts file"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("BEGIN OPENSSH"),
        "no key material in errors"
    );
}

#[tokio::test]
async fn a_local_directory_has_a_content_revision_and_is_watched() {
    let dir = Dir::new();
    dir.write("tree/a.yaml", "a: 1\n");
    let s = sources(&dir, "");
    let spec = SourceSpec {
        location: SourceLocation::Dir(dir.path().join("tree")),
        reference: GitRef::DefaultBranch,
        path: None,
        credentials: None,
        verify: None,
    };
    let r1 = s.fetch(&spec).await.unwrap().revision;
    assert!(r1.starts_with("sha256:") && r1.len() == 71, "{r1}");
    assert_eq!(
        s.fetch(&spec).await.unwrap().revision,
        r1,
        "same tree, same revision"
    );

    let (_watcher, mut events) =
        flotilla::source::local::watch(&[dir.path().join("tree")]).unwrap();
    dir.write("tree/sub/b.yaml", "b: 1\n");
    let changed = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("a change event")
        .unwrap();
    assert_eq!(changed, dir.path().join("tree").canonicalize().unwrap());
    let r2 = s.fetch(&spec).await.unwrap().revision;
    assert_ne!(r1, r2, "a changed tree has a new revision");
}

/// Through the binary: the fleet and a tenant as Git repos (`file://` and `git daemon`).
#[test]
fn render_fetches_the_fleet_and_tenants_from_git() {
    let p = Platform::new();
    let served = p.dir.path().join("served");
    let tenant = Repo::init(&served.join("ai"));
    tenant.write(
        "tenant.yaml",
        "apps:\n  - { name: web, source: { path: web } }\n",
    );
    tenant.write("web/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\ndata: { host: \"web.${vars.domain}\" }\n");
    let tenant_head = tenant.commit("tenant");
    let daemon = GitDaemon::start(&served, &p.dir.path().join("daemon.log"));
    let fleet = Repo::init(&p.dir.path().join("fleet-repo"));
    fleet.write(
        "clusters/dev/cluster.yaml",
        "name: dev\nvars: { domain: dev.example.com }\n",
    );
    fleet.write(
        "tenants/ai.yaml",
        &format!("name: ai\nnamespaces: [ai]\nsource: {{ url: \"{}\", ref: {{ branch: main }} }}\nclusters: [{{ name: dev }}]\n", daemon.url("ai")),
    );
    let fleet_head = fleet.commit("fleet");
    p.file(
        "flotilla.yaml",
        &format!(
            "cluster: dev\nfleet: {{ url: \"{}\" }}\nstate_dir: state\n",
            fleet.url()
        ),
    );

    let run = p.run(&["render"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "# Source: ai/web web/cm.yaml:1 @ {}",
            &tenant_head[..12]
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains("host: web.dev.example.com"), "{run:?}");
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&format!("at {fleet_head}")), "{run:?}");

    // The tenant's branch disappears: its problem names the tenant, the URL and the cause.
    git(&tenant.path, &["branch", "-q", "-m", "main", "trunk"]);
    let run = p.run(&["render"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        format!(
            "tenant ai: source: {}: branch main does not exist on the remote",
            daemon.url("ai")
        )
    );
}

/// Token and password credentials (the HTTPS code path) against `git http-backend` behind Basic auth.
#[tokio::test]
async fn http_credentials_from_files() {
    use crate::support::git::GitHttp;
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("served/fleet"));
    repo.write("f", "1\n");
    let head = repo.commit("one");
    let server = GitHttp::start(&dir.path().join("served"), "flotilla", "s3cret-t0ken");
    dir.write("token", "s3cret-t0ken\n");
    dir.write("wrong", "not-it\n");
    let s = sources(
        &dir,
        "credentials:\n  good: { token_file: token, username: flotilla, hosts: [127.0.0.1] }\n  bad: { token_file: wrong, username: flotilla, hosts: [127.0.0.1] }\n  pw: { username: flotilla, password_file: token, hosts: [127.0.0.1] }\n  elsewhere: { token_file: token, username: flotilla, hosts: [git.example.com] }\n  otherpath: { token_file: token, username: flotilla, hosts: [127.0.0.1/team] }\n",
    );
    let with = |cred: Option<&str>| SourceSpec {
        credentials: cred.map(str::to_string),
        verify: None,
        ..spec(&server.url("fleet"), branch("main"))
    };
    for cred in ["good", "pw"] {
        let c = s
            .fetch(&with(Some(cred)))
            .await
            .unwrap_or_else(|e| panic!("{cred}: {e}"));
        assert_eq!(c.revision, head);
    }
    let e = s.fetch(&with(Some("bad"))).await.unwrap_err();
    assert_eq!(
        e.message,
        "authentication failed: the server refused the HTTPS credentials"
    );
    let e = s.fetch(&with(None)).await.unwrap_err();
    assert_eq!(
        e.message,
        "the server asks for credentials and the source names none"
    );
    assert!(!e.to_string().contains("s3cret") && !format!("{e:?}").contains("s3cret"));
    // Issue 14: a credential goes only to its hosts (and path prefix), whatever the source says.
    let before = server.authorized_requests();
    for cred in ["elsewhere", "otherpath"] {
        let e = s.fetch(&with(Some(cred))).await.unwrap_err();
        assert!(
            e.message.ends_with(
                "asks for credentials that are not for it (not in their hosts); not sent"
            ),
            "{cred}: {e}"
        );
    }
    assert_eq!(
        server.authorized_requests(),
        before,
        "no credentials were sent to a host they are not for"
    );
}

/// Regression (review H2): links that each look harmless but chain out of the tree.
#[tokio::test]
async fn chained_symlinks_out_of_the_repository_are_never_followed() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    std::fs::create_dir_all(repo.path.join("d")).unwrap();
    std::os::unix::fs::symlink("..", repo.path.join("d/up")).unwrap();
    // The checkout is written at <dir>/state/git/checkouts/<key>/<tmp>: five levels below <dir>.
    // Lexically this never climbs above the tree; on disk `d/up/d/up/d/up` is the tree itself.
    dir.write("secret", "outside\n");
    std::os::unix::fs::symlink("d/up/d/up/d/up/../../../../../secret", repo.path.join("x"))
        .unwrap();
    repo.write("ok.yaml", "a: 1\n");
    repo.commit("links");
    let s = sources(&dir, "");
    let c = s.fetch(&spec(&repo.url(), branch("main"))).await.unwrap();
    assert_eq!(
        std::fs::read_link(c.root.join("x")).unwrap(),
        std::path::Path::new(flotilla::source::REFUSED_LINK)
    );
    assert!(std::fs::read_to_string(c.root.join("x")).is_err());
    assert_eq!(
        std::fs::read_link(c.root.join("d/up")).unwrap(),
        std::path::Path::new("..")
    );
    assert_eq!(read(&c, "ok.yaml"), "a: 1\n");
}

/// Regression (review H3): a tree whose walk stops early is never used as a checkout.
#[tokio::test]
async fn a_tree_that_cannot_be_read_whole_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    let odd = repo.path.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::write(odd.join("a.yaml"), "a: 1\n").unwrap();
    repo.write("z/later.yaml", "z: 1\n");
    repo.commit("odd name");
    let s = sources(&dir, "");
    let e = s
        .fetch(&spec(&repo.url(), branch("main")))
        .await
        .unwrap_err();
    assert!(
        e.message.starts_with("cannot read the whole tree of "),
        "{e}"
    );
    assert_eq!(checkouts(&dir), 0, "no partial tree is kept");
}

/// Regression (review M6): one huge (here: highly compressible) file cannot exhaust the agent.
#[tokio::test]
async fn an_oversized_file_is_refused_at_checkout() {
    let dir = Dir::new();
    let repo = Repo::init(&dir.path().join("remote"));
    std::fs::write(repo.path.join("zeros.bin"), vec![0u8; 65 << 20]).unwrap();
    repo.write("ok.yaml", "a: 1\n");
    repo.commit("big");
    let s = sources(&dir, "");
    let e = s
        .fetch(&spec(&repo.url(), branch("main")))
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        "zeros.bin is over the 64 MiB a checked-out file may have; refused"
    );
    assert_eq!(checkouts(&dir), 0);
}

/// `render` fetches only the tenants that land on the cluster; `validate` fetches an app repo
/// used on several clusters once.
#[test]
fn each_repo_is_fetched_only_where_and_as_often_as_needed() {
    let p = Platform::new();
    let served = p.dir.path().join("served");
    let app = Repo::init(&served.join("web"));
    app.write(
        "deploy/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\n",
    );
    app.commit("app");
    let daemon = GitDaemon::start(&served, &p.dir.path().join("daemon.log"));
    p.tenant(
        "ai",
        "[ai]",
        &format!("apps:\n  - {{ name: web, source: {{ url: \"{}\", ref: {{ branch: main }}, path: deploy }} }}\n", daemon.url("web")),
    );
    // git:// app repos only where the fleet allows them.
    let fleet_file = p.dir.path().join("fleet/tenants/ai.yaml");
    let with_schemes =
        std::fs::read_to_string(&fleet_file).unwrap() + "limits: { schemes: [git] }\n";
    std::fs::write(&fleet_file, with_schemes).unwrap();
    // A tenant only on prod whose repo cannot be reached.
    let nowhere = format!("git://127.0.0.1:{}/gone", free_port());
    p.file(
        "fleet/tenants/elsewhere.yaml",
        &format!("name: elsewhere\nnamespaces: [elsewhere]\nsource: {{ url: \"{nowhere}\" }}\nclusters: [{{ name: prod }}]\n"),
    );
    p.file(
        "flotilla.yaml",
        "cluster: dev\nfleet: { dir: fleet }\nstate_dir: state\n",
    );

    let run = p.run(&["render"]);
    assert_eq!(run.code, 0, "a tenant elsewhere is not fetched: {run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");

    let before = daemon.upload_packs();
    let run = p.run(&["validate"]);
    assert_eq!(run.code, 1, "validate does fetch every tenant: {run:?}");
    assert!(
        run.stderr
            .contains(&format!("tenant elsewhere: source: {nowhere}: ")),
        "{run:?}"
    );
    assert_eq!(
        daemon.upload_packs() - before,
        1,
        "dev and prod share one listing of the app repo (already in the mirror)"
    );
}

/// A FIFO named like a manifest in a local directory source is skipped, not read forever.
#[test]
fn a_fifo_in_a_local_source_does_not_hang_render() {
    let p = Platform::new();
    p.tenant(
        "ai",
        "[ai]",
        "apps:\n  - { name: web, source: { path: web } }\n",
    )
    .file(
        "tenants/ai/web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\n",
    );
    let made = std::process::Command::new("mkfifo")
        .arg(p.dir.path().join("tenants/ai/web/pipe.yaml"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["render", "--config", "flotilla.yaml"])
        .current_dir(p.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("render hung on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}
