//! The external renderers: `kustomize build` (or `kubectl kustomize`) and `helm template`, each
//! run with a timeout, their stderr carried into the error.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::objects::Document;
use super::plain::parse_manifests;
use crate::fleet::Unit;
use crate::subst::Vars;

/// The most a kustomize build or a Helm render may print: far beyond any real one, small enough
/// that a hostile kustomization or chart cannot exhaust the agent's memory.
pub(super) const MAX_OUTPUT: usize = 64 << 20;
/// The most of a tool's stderr kept for its error message.
const MAX_STDERR: u64 = 64 << 10;

/// Which binaries render kustomize and Helm apps, and how long one call may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    /// `kustomize` (run as `kustomize build DIR`) or `kubectl` (`kubectl kustomize DIR`).
    pub kustomize: Option<PathBuf>,
    pub helm: Option<PathBuf>,
    pub timeout: Duration,
    /// What the cluster serves, for Helm's `.Capabilities` (`None`: rendering offline).
    pub capabilities: Option<std::sync::Arc<Capabilities>>,
    /// The agent config's SOPS keys (`decryption`), read when the tools are made.
    pub(crate) keys: crate::sops::KeyStore,
    /// The key of Secrets' hashes (a Secret in the cluster, shared by every agent and `diff`);
    /// `None`: plain sha256 (`render`, which prints no Secret hash).
    pub(crate) secret_key: Option<std::sync::Arc<[u8; 32]>>,
}

/// The cluster's version and what it serves, as `helm template --kube-version --api-versions`
/// takes them (as Argo CD passes them), so that a chart renders as an install would.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `v1.33.2`.
    pub kube_version: String,
    /// Every `group/version` and `group/version/Kind` served (`v1`, `apps/v1/Deployment`).
    pub api_versions: Vec<String>,
}

impl From<&crate::config::Render> for Tools {
    fn from(r: &crate::config::Render) -> Tools {
        Tools {
            kustomize: r.kustomize.clone(),
            helm: r.helm.clone(),
            timeout: r.timeout,
            capabilities: None,
            keys: Default::default(),
            secret_key: None,
        }
    }
}

impl Tools {
    /// The tools of `config`, with its SOPS keys read.
    pub(crate) fn of(config: &crate::config::Config) -> Tools {
        Tools {
            keys: crate::sops::KeyStore::load(&config.decryption),
            secret_key: None,
            ..Tools::from(&config.render)
        }
    }

    /// These tools with keys read from tenants' Secrets besides the agent config's.
    pub(crate) fn with_keys(
        self,
        extra: Vec<(String, Result<std::sync::Arc<crate::sops::Key>, String>)>,
    ) -> Tools {
        Tools {
            keys: self.keys.with(extra),
            ..self
        }
    }

    /// Runs kustomize on `dir` and substitutes variables in its output.
    pub(super) fn kustomize(
        &self,
        dir: &Path,
        shown: &str,
        unit: &Unit,
        substitute: bool,
    ) -> Result<Vec<Document>, Vec<String>> {
        let Some(program) = &self.kustomize else {
            return Err(vec![format!(
                "{shown}: a kustomization, and no kustomize or kubectl binary was found: install one, or set render.kustomize in the agent config"
            )]);
        };
        let sub = if program.file_name().is_some_and(|n| n == "kubectl") {
            "kustomize"
        } else {
            "build"
        };
        let out = run(program, &[sub.as_ref(), dir.as_os_str()], self.timeout)
            .map_err(|why| vec![format!("{shown}: kustomize build failed: {why}")])?;
        let text = String::from_utf8(out)
            .map_err(|_| vec![format!("{shown}: kustomize wrote output that is not UTF-8")])?;
        let vars = Vars {
            flat: &unit.vars,
            values: &unit.values,
        };
        // Output built from decrypted files is not substituted: a secret value is kept as it is,
        // and never named in an "undefined variable" error.
        parse_manifests(
            &text,
            &format!("{shown} (kustomize output)"),
            substitute.then_some(&vars),
            MAX_OUTPUT,
        )
        .map(|(docs, _)| docs)
    }

    /// Runs `helm template` on the chart in `dir` with the unit's values.
    pub(super) fn helm(
        &self,
        dir: &Path,
        shown: &str,
        unit: &Unit,
    ) -> Result<Vec<Document>, Vec<String>> {
        let Some(program) = &self.helm else {
            return Err(vec![format!(
                "{shown}: app {} is a Helm chart (Chart.yaml) and Helm is needed to render it: install helm, or set render.helm in the agent config",
                unit.id.app
            )]);
        };
        if unit.release_name.len() > 53 {
            return Err(vec![format!(
                "{shown}: the release name {:?} is longer than Helm's 53 characters; set releaseName on the app",
                unit.release_name
            )]);
        }
        // In a private folder (0700; the file 0600), removed after the call: the values may hold
        // what a SOPS values file decrypted to.
        let private = tempfile::Builder::new()
            .prefix("flotilla-values-")
            .tempdir()
            .map_err(|e| vec![format!("{shown}: cannot write the values file: {e}")])?;
        let values = tempfile::Builder::new()
            .suffix(".json")
            .tempfile_in(private.path())
            .map_err(|e| vec![format!("{shown}: cannot write the values file: {e}")])?;
        // JSON is YAML: Helm reads it as a values file. Values = chart defaults ← these.
        std::fs::write(
            values.path(),
            serde_json::to_vec(&unit.values).unwrap_or_default(),
        )
        .map_err(|e| vec![format!("{shown}: cannot write the values file: {e}")])?;
        let namespace = unit.namespace.as_deref().unwrap_or("default");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "template".as_ref(),
            unit.release_name.as_ref(),
            dir.as_os_str(),
            "--namespace".as_ref(),
            namespace.as_ref(),
            "--include-crds".as_ref(),
            "--values".as_ref(),
            values.path().as_os_str(),
        ];
        if let Some(c) = &self.capabilities {
            use std::ffi::OsStr;
            args.push(OsStr::new("--kube-version"));
            args.push(OsStr::new(&c.kube_version));
            for api in &c.api_versions {
                args.push(OsStr::new("--api-versions"));
                args.push(OsStr::new(api));
            }
        }
        let render = || -> Result<Vec<Document>, Vec<String>> {
            let out = run(program, &args, self.timeout)
                .map_err(|why| vec![format!("{shown}: helm template failed: {why}")])?;
            let text = String::from_utf8(out)
                .map_err(|_| vec![format!("{shown}: helm wrote output that is not UTF-8")])?;
            let (docs, _) = parse_manifests(
                &text,
                &format!("{shown} (helm template output)"),
                None,
                MAX_OUTPUT,
            )?;
            // Hooks a sync never runs (tests: random names, as podinfo's) are dropped before
            // the two renders are compared; the render drops them from what is applied.
            Ok(docs
                .into_iter()
                .filter(|d| !super::hook::is_hook(&d.body) || super::hook::of(&d.body).is_some())
                .collect())
        };
        // A chart that renders differently each time (a random name or password) would be
        // applied again on every sync: rendered twice, and refused if the two differ.
        let (first, second) = (render()?, render()?);
        let differing = differing(&first, &second);
        if !differing.is_empty() {
            return Err(vec![format!(
                "{shown}: the chart renders differently each time (random names or passwords?), so it would be applied again on every sync; not applied. Objects that differ: {}",
                differing.join(", ")
            )]);
        }
        Ok(first)
    }
}

/// The objects (`Kind name`) of one render that are not the same in the other.
fn differing(a: &[Document], b: &[Document]) -> Vec<String> {
    if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.body == y.body) {
        return Vec::new();
    }
    let name = |d: &Document| {
        format!(
            "{} {}",
            d.body["kind"].as_str().unwrap_or("?"),
            d.body["metadata"]["name"].as_str().unwrap_or("?")
        )
    };
    let mut out: Vec<String> = a
        .iter()
        .filter(|d| !b.iter().any(|e| e.body == d.body))
        .chain(b.iter().filter(|d| !a.iter().any(|e| e.body == d.body)))
        .map(name)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Runs a program to completion within `timeout`; its stdout, or why it failed (with stderr).
fn run(program: &Path, args: &[&std::ffi::OsStr], timeout: Duration) -> Result<Vec<u8>, String> {
    // The tool runs on a tenant's files: it gets no part of the agent's environment (tokens,
    // kubeconfig, proxies, Git settings) beyond where to find programs.
    let mut command = Command::new(program);
    command.env_clear().env("HOME", "/nonexistent");
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    // Drain both pipes on their own threads so a chatty child never blocks on a full pipe; keep
    // at most MAX_OUTPUT of stdout (past it the child is stopped) and MAX_STDERR of stderr.
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let overflow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = overflow.clone();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let read = stdout
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        if read.as_ref().is_ok_and(|b| b.len() > MAX_OUTPUT) {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        read
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(MAX_STDERR).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let deadline = crate::deadline::from_now(timeout);
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if overflow.load(std::sync::atomic::Ordering::SeqCst) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} printed more than {} MiB; refused",
                    program.display(),
                    MAX_OUTPUT >> 20
                ));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {}",
                    program.display(),
                    humantime::format_duration(timeout)
                ));
            }
            // A render runs on its own thread (render_all), never on an async worker.
            Ok(None) => {
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
        }
    };
    let stdout = out
        .join()
        .map_err(|_| "reading its output failed".to_string())?
        .map_err(|e| e.to_string())?;
    let stderr = err.join().unwrap_or_default();
    if stdout.len() > MAX_OUTPUT {
        return Err(format!(
            "{} printed more than {} MiB; refused",
            program.display(),
            MAX_OUTPUT >> 20
        ));
    }
    if status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim();
        Err(if stderr.is_empty() {
            format!("{status}")
        } else {
            format!("{status}: {stderr}")
        })
    }
}
