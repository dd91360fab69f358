//! The command line itself: what `--help` lists, `version`, and the exit codes for bad usage.

use crate::support::{Dir, flotilla, repo_root};

#[test]
fn help_lists_every_command_and_the_global_flags() {
    let run = flotilla(&repo_root(), &["--help"]);
    assert_eq!(run.code, 0, "{run:?}");
    for command in [
        "run", "sync", "diff", "render", "validate", "status", "version",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(command)),
            "--help does not list {command}: {run:?}"
        );
    }
    for flag in ["--config <FILE>", "--log-format", "--log-level"] {
        assert!(
            run.stdout.contains(flag),
            "--help does not show {flag}: {run:?}"
        );
    }
    assert!(
        run.stdout.contains("/etc/flotilla/flotilla.yaml"),
        "default config path: {run:?}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let run = flotilla(&repo_root(), &["version"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with(&format!("flotilla {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{run:?}"
    );
}

#[test]
fn an_unknown_command_or_flag_is_bad_usage_with_exit_2() {
    let dir = Dir::new();
    assert_eq!(flotilla(dir.path(), &["deploy"]).code, 2);
    assert_eq!(flotilla(dir.path(), &["validate", "--bogus"]).code, 2);
    assert_eq!(
        flotilla(dir.path(), &["--log-format", "xml", "version"]).code,
        2
    );
}

#[test]
fn a_bad_log_level_is_bad_usage_with_exit_2() {
    let run = flotilla(
        &repo_root(),
        &[
            "--log-level",
            "loud=[",
            "validate",
            "--config",
            "config/examples/flotilla.yaml",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--log-level"), "{run:?}");
}

#[test]
fn global_flags_work_after_the_command_too() {
    let run = flotilla(
        &repo_root(),
        &[
            "validate",
            "--config",
            "config/examples/flotilla.yaml",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn the_config_path_can_come_from_the_environment() {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("validate")
        .env(
            "FLOTILLA_CONFIG",
            repo_root().join("config/examples/flotilla.yaml"),
        )
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = Dir::new();
    let port = crate::support::git::free_port();
    dir.write(
        "flotilla.yaml",
        format!("cluster: dev\nfleet: {{ url: \"git://127.0.0.1:{port}/fleet\" }}\nstate_dir: state\ngit: {{ retries: 1 }}\n"),
    );
    let run = flotilla(dir.path(), &["render", "--config", "flotilla.yaml"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("WARN flotilla::source: fetch failed; retrying"),
        "{run:?}"
    );
    assert!(!run.stderr.contains('\u{1b}'), "no ANSI escapes: {run:?}");
    assert!(
        run.stderr
            .contains(&format!("error: fleet: git://127.0.0.1:{port}/fleet: ")),
        "{run:?}"
    );
}
