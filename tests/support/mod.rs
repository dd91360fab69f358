//! Helpers shared by the test modules.

pub mod apply_scenarios;
pub mod browser;
pub mod charts;
pub mod cluster;
pub mod daemon;
pub mod daemon_scenarios;
pub mod git;
pub mod hook_scenarios;
pub mod kube_api;
pub mod page_scenarios;
pub mod scenarios;
pub mod shard_scenarios;
pub mod sops;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where `config/examples` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A run of the real `flotilla` binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `flotilla` with `args` in `dir`, with no inherited config location.
pub fn flotilla(dir: &Path, args: &[&str]) -> Run {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .current_dir(dir)
        .env_remove("FLOTILLA_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .output()
        .expect("the flotilla binary runs");
    Run {
        code: output
            .status
            .code()
            .expect("flotilla exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A temporary folder with helpers to write files into it; removed when dropped.
pub struct Dir(tempfile::TempDir);

impl Dir {
    pub fn new() -> Dir {
        Dir(tempfile::tempdir().expect("a temp dir"))
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    /// Writes `contents` to `name` (parents created) and returns the full path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A throwaway platform: an agent config, a fleet with clusters `dev` and `prod`, and tenant repos
/// as local folders. Tests add tenants and files, then run `flotilla` against it.
pub struct Platform {
    pub dir: Dir,
}

impl Platform {
    pub fn new() -> Platform {
        let dir = Dir::new();
        dir.write("flotilla.yaml", "cluster: dev\nfleet: { dir: fleet }\n");
        dir.write(
            "fleet/clusters/dev/cluster.yaml",
            "name: dev\nlabels: { env: dev }\nvars: { domain: dev.example.com }\n",
        );
        dir.write(
            "fleet/clusters/prod/cluster.yaml",
            "name: prod\nlabels: { env: prod }\nvars: { domain: example.com }\n",
        );
        Platform { dir }
    }

    /// Adds tenant `name` owning `namespaces`, on every cluster, with this `tenant.yaml`.
    pub fn tenant(&self, name: &str, namespaces: &str, catalog: &str) -> &Platform {
        self.dir.write(
            &format!("fleet/tenants/{name}.yaml"),
            format!(
                "name: {name}\nnamespaces: {namespaces}\nsource: {{ dir: ../../tenants/{name} }}\nclusters: [{{ labels: {{}} }}]\n"
            ),
        );
        self.dir
            .write(&format!("tenants/{name}/tenant.yaml"), catalog);
        self
    }

    /// Writes a file below the platform folder.
    pub fn file(&self, rel: &str, contents: &str) -> &Platform {
        self.dir.write(rel, contents);
        self
    }

    /// Runs `flotilla <args> --config flotilla.yaml` in the platform folder.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", "flotilla.yaml"]);
        flotilla(self.dir.path(), &all)
    }
}

/// The documents of a rendered YAML stream, as JSON values.
pub fn documents(stream: &str) -> Vec<serde_json::Value> {
    flotilla::yaml::Node::parse_stream(stream, "stdout")
        .expect("render prints valid YAML")
        .iter()
        .map(flotilla::yaml::Node::to_json)
        .collect()
}

/// The Python that has Helm's Go SDK (`helm-python-sdk`), as an absolute path:
/// `$FLOTILLA_TEST_HELM_PYTHON` (CI sets it; named but broken is a failure), else `python3` if it
/// can import `helm_python`; `None` where neither has it.
pub fn helm_python() -> Option<String> {
    let named = std::env::var("FLOTILLA_TEST_HELM_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    let python = named.clone().unwrap_or_else(|| "python3".into());
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import helm_python"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_sdk || named.is_none(),
        "FLOTILLA_TEST_HELM_PYTHON={python} cannot import helm_python"
    );
    if !has_sdk {
        return None;
    }
    std::process::Command::new(&python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A `helm` for the tests: `tests/support/helm_standin.py` run by a Python that has Helm's Go
/// SDK (`helm-python-sdk`): `$FLOTILLA_TEST_HELM_PYTHON` (CI sets it), else `python3` if it can
/// import `helm_python`. Written as an executable into `dir` (flotilla runs tools with an empty
/// environment, so the wrapper names its interpreter). `None` where neither has the SDK.
pub fn helm_standin(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let python = helm_python()?;
    let script = repo_root().join("tests/support/helm_standin.py");
    let wrapper = dir.join("helm");
    // Each call's arguments go to `helm.args` beside it, one line per call.
    let log = dir.join("helm.args");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{python}' '{}' \"$@\"\n",
            log.display(),
            script.display()
        ),
    )
    .ok()?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(wrapper)
}
