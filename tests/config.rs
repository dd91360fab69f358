//! `flotilla validate --config FILE` on the agent config: the shipped example passes, and a bad
//! file gets every error at once, each with file:line:column and the field path, and exit 2.

use crate::support::{Dir, flotilla, repo_root};

#[test]
fn the_shipped_example_validates() {
    let run = flotilla(
        &repo_root(),
        &["validate", "--config", "config/examples/flotilla.yaml"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            // Two infra layers per cluster (controllers, configs) and 18 tenant apps.
            .contains(": 2 clusters, 3 tenants; 22 units rendered)"),
        "{run:?}"
    );
    assert!(run.stderr.is_empty(), "{run:?}");
}

#[test]
fn every_error_is_reported_in_one_run_with_line_and_column() {
    let dir = Dir::new();
    dir.write("known_hosts", "127.0.0.1 ssh-ed25519 AAAA\n");
    dir.write(
        "flotilla.yaml",
        "\
cluster: dev
fleet:
  url: ssh://git@git.example.com/platform/fleet.git
  ref: { branch: main, tag: v1.0.0 }
  credentials: platform
credentials:
  platform:
    ssh_key_file: keys/platform
    known_hosts_file: known_hosts
    hosts: [git.example.com]
interval: every five minutes
concurrency: lots
webhook: {}
",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    let key = dir.path().join("keys/platform");
    let expected = [
        "flotilla.yaml:4:8: fleet.ref: give exactly one of branch, tag, semver or commit (commit may add the branch to fetch it from); found branch and tag".to_string(),
        format!("flotilla.yaml:8:19: credentials.platform.ssh_key_file: no such file: {}", key.display()),
        "flotilla.yaml:11:11: interval: \"every five minutes\" is not a duration (expected number at 0); write it like 30s, 5m or 1h".to_string(),
        "flotilla.yaml:12:14: concurrency: expected a whole number, found a string".to_string(),
        "flotilla.yaml:13:1: webhook: unknown field; did you mean \"webhooks\"? allowed here: cluster, fleet, credentials, verification_keys, decryption, interval, state_dir, kubeconfig, listen, webhooks, concurrency, apply_concurrency, log, render, git, shutdown_grace, unit_timeout, leader_election, sharding".to_string(),
        "flotilla.yaml: 5 errors".to_string(),
    ];
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines, expected, "{run:?}");
}

#[test]
fn sharding_is_checked_and_excludes_leader_election() {
    let dir = Dir::new();
    dir.write("fleet/clusters/dev/cluster.yaml", "name: dev\n");
    let check = |sharding: &str, extra: &str| {
        dir.write(
            "flotilla.yaml",
            format!("cluster: dev\nfleet: {{ dir: fleet }}\n{extra}sharding: {sharding}\n"),
        );
        flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"])
    };
    let ok = check(
        "{ shards: 4, namespace: flotilla-system, lease_duration: 10s, advertise: \"http://10.0.0.7:8080\" }",
        "",
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    for (sharding, extra, error) in [
        (
            "{ shards: 0 }",
            "",
            "flotilla.yaml:3:21: sharding.shards: must be between 1 and 256",
        ),
        (
            "{ shards: 300 }",
            "",
            "flotilla.yaml:3:21: sharding.shards: must be between 1 and 256",
        ),
        (
            "{ namespace: x }",
            "",
            "flotilla.yaml:3:11: sharding.shards: missing: how many shards the tenants are divided into",
        ),
        (
            "{ shards: 2, lease_duration: 100ms }",
            "",
            "flotilla.yaml:3:40: sharding.lease_duration: must be at least 1s",
        ),
        (
            "{ shards: 2, advertise: \"https://a:1/x\" }",
            "",
            "flotilla.yaml:3:35: sharding.advertise: \"https://a:1/x\": give an http:// URL (http://host:port)",
        ),
        (
            "{ shards: 2, advertise: \"http://a:1/x\" }",
            "",
            "flotilla.yaml:3:35: sharding.advertise: \"http://a:1/x\": give http://host:port, without a path",
        ),
        (
            "{ shards: 2 }",
            "leader_election: {}\n",
            "flotilla.yaml:4:11: sharding: cannot be used with leader_election: with sharding every replica applies, each its own shards",
        ),
    ] {
        let run = check(sharding, extra);
        assert_eq!(run.code, 2, "{sharding}: {run:?}");
        assert!(
            run.stderr.lines().any(|l| l == error),
            "{sharding}: {run:?}"
        );
    }
}

#[test]
fn a_wrong_type_names_the_expected_and_found_types() {
    let dir = Dir::new();
    dir.write("fleet/.keep", "");
    dir.write(
        "flotilla.yaml",
        "cluster: [dev]\nfleet: { dir: fleet }\ninterval: 5\nlisten: { http: 8080 }\nlog: { format: xml }\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    for line in [
        "flotilla.yaml:1:10: cluster: expected a string, found a list",
        "flotilla.yaml:3:11: interval: expected a string, found an integer",
        "flotilla.yaml:4:17: listen.http: expected a string, found an integer",
        "flotilla.yaml:5:16: log.format: \"xml\" is not a log format; use text or json",
    ] {
        assert!(
            run.stderr.lines().any(|l| l == line),
            "missing {line:?}: {run:?}"
        );
    }
}

#[test]
fn an_empty_file_is_one_clear_error() {
    let dir = Dir::new();
    dir.write("flotilla.yaml", "");
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        "flotilla.yaml:1:1: the file is empty; expected a mapping\nflotilla.yaml: 1 error\n"
    );
}

#[test]
fn a_file_that_is_not_yaml_is_one_clear_error() {
    let dir = Dir::new();
    dir.write("ini.yaml", "[fleet]\nurl = ssh://git@host/fleet.git\n");
    dir.write(
        "binary.yaml",
        [0x7f, b'E', b'L', b'F', 0xff, 0xfe, 0x00, 0x01],
    );
    dir.write("script.yaml", "#!/bin/sh\necho hello\n");
    for (file, message) in [
        ("ini.yaml", "ini.yaml:2:1: not valid YAML: "),
        (
            "binary.yaml",
            "binary.yaml:1:1: not a text file (not valid UTF-8)",
        ),
        (
            "script.yaml",
            "script.yaml:2:1: expected a mapping, found a string",
        ),
    ] {
        let run = flotilla(dir.path(), &["validate", "--config", file]);
        assert_eq!(run.code, 2, "{run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "one error and the count: {run:?}");
        assert!(lines[0].starts_with(message), "{run:?}");
    }
}

#[test]
fn a_missing_config_file_is_exit_2_naming_the_file() {
    let dir = Dir::new();
    let run = flotilla(dir.path(), &["validate", "--config", "missing.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("cannot read config file missing.yaml: No such file"),
        "{run:?}"
    );
}

#[test]
fn required_fields_are_named_when_missing() {
    let dir = Dir::new();
    dir.write("flotilla.yaml", "interval: 1m\n");
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("flotilla.yaml:1:1: cluster: required field is missing"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("flotilla.yaml:1:1: fleet: required field is missing"),
        "{run:?}"
    );
}

#[test]
fn a_password_in_a_url_is_refused_without_echoing_it() {
    let dir = Dir::new();
    dir.write(
        "flotilla.yaml",
        "cluster: dev\nfleet: { url: \"https://bob:hunter2@git.example.com/fleet.git\" }\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("credentials in the URL are not allowed"),
        "{run:?}"
    );
    assert!(
        !run.stderr.contains("hunter2"),
        "the secret leaked: {run:?}"
    );
}

#[test]
fn credentials_must_be_complete_and_of_the_right_kind() {
    let dir = Dir::new();
    dir.write("key", "not really a key");
    dir.write("token", "t0ken");
    dir.write(
        "flotilla.yaml",
        "\
cluster: dev
fleet: { url: ssh://git@host/fleet.git, credentials: https }
credentials:
  nohosts: { ssh_key_file: key, hosts: [host] }
  mixed: { ssh_key_file: key, token_file: token, hosts: [host] }
  https: { token_file: token, hosts: [host] }
  userless: { password_file: token, hosts: [host] }
  anywhere: { token_file: token }
  elsewhere: { token_file: token, hosts: [other.example.com, \"host:8443/team\", \"bad host\"] }
",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    for line in [
        "flotilla.yaml:2:54: fleet.credentials: \"https\" holds HTTPS credentials, but an SSH URL needs SSH",
        "flotilla.yaml:4:12: credentials.nohosts: known_hosts_file is missing: SSH host keys are always verified",
        "flotilla.yaml:5:10: credentials.mixed: mixes SSH fields (ssh_key_file) with HTTPS fields (token_file); make two credentials",
        "flotilla.yaml:7:13: credentials.userless: password_file needs a username",
        "flotilla.yaml:8:13: credentials.anywhere: hosts is missing: name the hosts it may be sent to (host, host:port, optionally followed by a path prefix such as /team)",
        "flotilla.yaml:9:42: credentials.elsewhere.hosts[2]: \"bad host\" is not host, host:port or host/path (for example git.example.com:2222/team)",
    ] {
        assert!(
            run.stderr.lines().any(|l| l == line),
            "missing {line:?}: {run:?}"
        );
    }
}

#[test]
fn an_unknown_credentials_name_and_an_ssh_url_without_credentials_are_errors() {
    let dir = Dir::new();
    dir.write(
        "flotilla.yaml",
        "cluster: dev\nfleet: { url: \"git@host:fleet.git\" }\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("fleet.credentials: an SSH URL needs credentials"),
        "{run:?}"
    );

    dir.write(
        "flotilla.yaml",
        "cluster: dev\nfleet: { url: \"https://host/fleet.git\", credentials: gitlab }\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert!(
        run.stderr
            .contains("no credentials named \"gitlab\" in the agent config"),
        "{run:?}"
    );
}

#[test]
fn refs_are_checked_by_kind() {
    let dir = Dir::new();
    dir.write(
        "flotilla.yaml",
        "\
cluster: dev
fleet:
  url: https://host/fleet.git
  ref: { semver: \">=1.x.y\" }
",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("flotilla.yaml:4:18: fleet.ref.semver: \">=1.x.y\" is not a semver range"),
        "{run:?}"
    );

    dir.write(
        "flotilla.yaml",
        "cluster: dev\nfleet: { url: https://host/f.git, ref: { commit: abc123 } }\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert!(
        run.stderr
            .contains("\"abc123\" is not a full 40-character commit SHA"),
        "{run:?}"
    );

    let sha = "0123456789abcdef0123456789abcdef01234567";
    dir.write(
        "flotilla.yaml",
        format!(
            "cluster: dev\nfleet: {{ url: https://host/f.git, ref: {{ branch: main, commit: {sha} }} }}\n"
        ),
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    // The config is valid (exit 2 would say otherwise); what follows is about the fleet itself.
    assert_ne!(
        run.code, 2,
        "a commit may name the branch to fetch it from: {run:?}"
    );
    assert!(!run.stderr.contains("fleet.ref"), "{run:?}");
}

#[test]
fn paths_are_relative_to_the_config_file_and_checked() {
    let dir = Dir::new();
    dir.write("etc/known_hosts", "");
    dir.write("etc/key", "");
    dir.write("etc/github-secret", "s3cret");
    dir.write("etc/fleet/clusters/dev/cluster.yaml", "name: dev\n");
    dir.write(
        "etc/flotilla.yaml",
        "\
cluster: dev
fleet: { dir: fleet, path: \"../outside\" }
credentials:
  platform: { ssh_key_file: key, known_hosts_file: known_hosts, hosts: [git.example.com] }
kubeconfig: kubeconfig
webhooks:
  github: { secret_file: github-secret }
  gitlab: { secret_file: github-secret }
",
    );
    // Run from elsewhere: relative paths must resolve against etc/, not the working directory.
    let run = flotilla(dir.path(), &["validate", "--config", "etc/flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    let kubeconfig = dir.path().join("etc/kubeconfig");
    let expected = [
        "etc/flotilla.yaml:2:28: fleet.path: \"../outside\" must not contain '..': it would leave the repository".to_string(),
        format!("etc/flotilla.yaml:5:13: kubeconfig: no such file: {}", kubeconfig.display()),
        "etc/flotilla.yaml:8:11: webhooks.gitlab: give token_file, or repos (repository URL: secret file), or both".to_string(),
        "etc/flotilla.yaml:8:13: webhooks.gitlab.secret_file: unknown field; allowed here: token_file, repos".to_string(),
        "etc/flotilla.yaml: 4 errors".to_string(),
    ];
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines, expected, "{run:?}");
}

#[test]
fn a_kubeconfig_that_is_not_one_is_refused() {
    let dir = Dir::new();
    dir.write("fleet/.keep", "");
    dir.write("kubeconfig", "apiVersion: v1\nkind: Config\nclusters: 7\n");
    dir.write(
        "flotilla.yaml",
        "cluster: dev\nfleet: { dir: fleet }\nkubeconfig: kubeconfig\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("kubeconfig: ") && run.stderr.contains("is not a usable kubeconfig"),
        "{run:?}"
    );
}

#[test]
fn a_short_interval_and_zero_concurrency_are_refused() {
    let dir = Dir::new();
    dir.write("fleet/.keep", "");
    dir.write(
        "flotilla.yaml",
        "cluster: Dev_1\nfleet: { dir: fleet }\ninterval: 100ms\nconcurrency: 0\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("flotilla.yaml:1:10: cluster: \"Dev_1\" is not a valid name"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("flotilla.yaml:3:11: interval: 100ms is too short; the least is 1s"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("flotilla.yaml:4:14: concurrency: must be at least 1"),
        "{run:?}"
    );
}

#[test]
fn the_in_cluster_config_is_valid_but_for_its_mounted_secrets() {
    // config/deploy/flotilla.yaml names files that exist only inside the Pod (the Git Secret);
    // everything else in it must be right.
    let run = flotilla(
        &repo_root(),
        &["validate", "--config", "config/deploy/flotilla.yaml"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{run:?}");
    assert!(
        lines[0].ends_with(
            "credentials.platform.ssh_key_file: no such file: /etc/flotilla/git/ssh-key"
        ),
        "{run:?}"
    );
    assert!(
        lines[1].ends_with(
            "credentials.platform.known_hosts_file: no such file: /etc/flotilla/git/known_hosts"
        ),
        "{run:?}"
    );
    assert!(
        lines[2].ends_with("listen.token_file: no such file: /etc/flotilla/api/token"),
        "{run:?}"
    );
    assert!(
        lines[3].ends_with(
            "webhooks.github.secret_file: no such file: /etc/flotilla/api/webhook-secret"
        ),
        "{run:?}"
    );
}

#[test]
fn render_tools_are_found_or_named() {
    let dir = Dir::new();
    dir.write("fleet/.keep", "");
    dir.write(
        "flotilla.yaml",
        "cluster: dev\nfleet: { dir: fleet }\nrender: { kustomize: no-such-kustomize, helm: ./bin/helm, timeout: 0s, kubectl: x }\n",
    );
    let run = flotilla(dir.path(), &["validate", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    let helm = dir.path().join("bin/helm");
    let expected = [
        "flotilla.yaml:3:22: render.kustomize: no-such-kustomize: no such executable (looked on $PATH for a bare name)".to_string(),
        format!("flotilla.yaml:3:47: render.helm: {}: no such executable (looked on $PATH for a bare name)", helm.display()),
        "flotilla.yaml:3:68: render.timeout: must be more than 0s".to_string(),
        "flotilla.yaml:3:72: render.kubectl: unknown field; allowed here: kustomize, helm, timeout".to_string(),
        "flotilla.yaml: 4 errors".to_string(),
    ];
    assert_eq!(run.stderr.lines().collect::<Vec<_>>(), expected, "{run:?}");
}
