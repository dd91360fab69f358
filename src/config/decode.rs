//! Spanned YAML → [`Config`], collecting every error. Each section has a reader that takes what
//! it knows and reports the rest as unknown, so a field cannot be silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::secrets::{decode_credentials, decode_webhooks};
use super::source::{self, CredentialKind};
use super::{
    Config, Credential, DEFAULT_CONCURRENCY, DEFAULT_HTTP, DEFAULT_INTERVAL, DEFAULT_SOCKET,
    GitSettings, LeaderElection, Listen, Log, LogFormat, MIN_INTERVAL, Render, Sharding, Webhooks,
    find_program,
};
use crate::yaml::{Diagnostics, Fields, Node, Report};

const TOP: &[&str] = &[
    "cluster",
    "fleet",
    "credentials",
    "verification_keys",
    "decryption",
    "interval",
    "state_dir",
    "kubeconfig",
    "listen",
    "webhooks",
    "concurrency",
    "apply_concurrency",
    "log",
    "render",
    "git",
    "shutdown_grace",
    "unit_timeout",
    "leader_election",
    "sharding",
];

/// Decodes config text read from `file`.
pub(super) fn decode(text: &str, file: &Path) -> Result<Config, Diagnostics> {
    let shown = file.display().to_string();
    let doc = Node::parse(text, &shown)?;
    // Paths in the file are relative to its folder, made absolute so that nothing later depends
    // on the working directory.
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let base = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut report = Report::new(shown);
    let config = decode_top(&doc, &base, file, &mut report);
    match config {
        Some(config) if report.is_clean() => Ok(config),
        _ => Err(report.finish()),
    }
}

fn decode_top(doc: &Node, base: &Path, file: &Path, report: &mut Report) -> Option<Config> {
    let mut top = Fields::new(doc, "", report)?;
    let cluster = top.require("cluster", doc, report).and_then(|n| {
        let name = n.str("cluster", report)?;
        check_name(name)
            .map_err(|why| report.error(n, "cluster", why))
            .ok()?;
        Some(name.to_string())
    });
    let credentials = match top.get("credentials") {
        Some(n) => decode_credentials(n, base, report),
        None => Some(BTreeMap::new()),
    };
    let kinds = credentials.clone().unwrap_or_default();
    let known = |name: &str| kinds.get(name);
    let verification_keys = match top.get("verification_keys") {
        Some(n) => super::verify::decode_keys(n, base, report),
        None => Some(BTreeMap::new()),
    };
    let decryption = match top.get("decryption") {
        Some(n) => super::decryption::decode_decryption(n, base, report),
        None => Some(BTreeMap::new()),
    };
    let fleet = top.require("fleet", doc, report).and_then(|n| {
        let spec = source::decode(n, "fleet", base, &known, report)?;
        // The fleet's own keys are checked here; a tenant's when its repository is fetched.
        let keys = verification_keys.as_ref();
        for name in spec.verify.iter().flat_map(|v| &v.keys) {
            if keys.is_some_and(|k| !k.contains_key(name)) {
                report.error(
                    n,
                    "fleet.verify.keys",
                    format!("no verification key named {name:?} in verification_keys"),
                );
            }
        }
        Some(spec)
    });
    let interval = match top.get("interval") {
        Some(n) => n.duration("interval", report).and_then(|d| {
            if d < MIN_INTERVAL {
                report.error(
                    n,
                    "interval",
                    format!(
                        "{} is too short; the least is {}",
                        humantime::format_duration(d),
                        humantime::format_duration(MIN_INTERVAL)
                    ),
                );
                return None;
            }
            Some(d)
        }),
        None => Some(DEFAULT_INTERVAL),
    };
    let state_dir = match top.get("state_dir") {
        Some(n) => n.str("state_dir", report).and_then(|p| {
            let dir = base.join(p);
            if dir.exists() && !dir.is_dir() {
                report.error(
                    n,
                    "state_dir",
                    format!("{} exists and is not a directory", dir.display()),
                );
                return None;
            }
            Some(dir)
        }),
        None => Some(Config::default_state_dir()),
    };
    let kubeconfig = match top.get("kubeconfig") {
        Some(n) => decode_kubeconfig(n, base, report).map(Some),
        None => Some(None),
    };
    let listen = decode_listen(top.get("listen"), base, report);
    let webhooks = match top.get("webhooks") {
        Some(n) => decode_webhooks(n, base, report),
        None => Some(Webhooks::default()),
    };
    let concurrency = match top.get("concurrency") {
        Some(n) => n.u32("concurrency", report).and_then(|c| {
            if c == 0 {
                report.error(n, "concurrency", "must be at least 1");
                return None;
            }
            Some(c)
        }),
        None => Some(DEFAULT_CONCURRENCY),
    };
    let apply_concurrency = match top.get("apply_concurrency") {
        Some(n) => n.u32("apply_concurrency", report).and_then(|c| {
            if c == 0 {
                report.error(n, "apply_concurrency", "must be at least 1");
                return None;
            }
            Some(c)
        }),
        None => Some(super::DEFAULT_APPLY_CONCURRENCY),
    };
    let log = decode_log(top.get("log"), report);
    let render = decode_render(top.get("render"), base, report);
    let git = decode_git(top.get("git"), report);
    let shutdown_grace = match top.get("shutdown_grace") {
        Some(n) => n.duration("shutdown_grace", report),
        None => Some(super::DEFAULT_SHUTDOWN_GRACE),
    };
    let unit_timeout = match top.get("unit_timeout") {
        Some(n) => n.duration("unit_timeout", report),
        None => Some(super::DEFAULT_UNIT_TIMEOUT),
    };
    let leader_election = match top.get("leader_election") {
        Some(n) => decode_leader_election(n, report).map(Some),
        None => Some(None),
    };
    let sharding = match top.get("sharding") {
        Some(n) => decode_sharding(n, report).map(Some),
        None => Some(None),
    };
    if let (Some(n), Some(Some(_))) = (top.get("sharding"), &leader_election) {
        report.error(
            n,
            "sharding",
            "cannot be used with leader_election: with sharding every replica applies, each its own shards",
        );
    }
    top.finish(TOP, report);

    Some(Config {
        file: file.to_path_buf(),
        cluster: cluster?,
        fleet: fleet?,
        credentials: credentials?,
        verification_keys: verification_keys?,
        decryption: decryption?,
        interval: interval?,
        state_dir: state_dir?,
        kubeconfig: kubeconfig?,
        listen: listen?,
        webhooks: webhooks?,
        concurrency: concurrency?,
        apply_concurrency: apply_concurrency?,
        log: log?,
        render: render?,
        git: git?,
        shutdown_grace: shutdown_grace?,
        unit_timeout: unit_timeout?,
        leader_election: leader_election?,
        sharding: sharding?,
    })
}

/// Cluster, tenant and app names become label values and path segments: DNS-1123 labels.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// A path to a file that must exist and be readable now.
pub(super) fn readable_file(
    node: &Node,
    path: &str,
    base: &Path,
    report: &mut Report,
) -> Option<PathBuf> {
    let text = node.str(path, report)?;
    let file = base.join(text);
    match std::fs::File::open(&file) {
        Ok(_) if file.is_dir() => report.error(
            node,
            path,
            format!("{} is a directory, not a file", file.display()),
        ),
        Ok(_) => return Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.error(node, path, format!("no such file: {}", file.display()))
        }
        Err(e) => report.error(node, path, format!("cannot read {}: {e}", file.display())),
    }
    None
}

fn decode_kubeconfig(node: &Node, base: &Path, report: &mut Report) -> Option<PathBuf> {
    let file = readable_file(node, "kubeconfig", base, report)?;
    match kube::config::Kubeconfig::read_from(&file) {
        Ok(kc) if kc.current_context.is_none() && kc.contexts.is_empty() => {
            report.error(
                node,
                "kubeconfig",
                format!("{} has no contexts", file.display()),
            );
            None
        }
        Ok(_) => Some(file),
        Err(error) => {
            report.error(
                node,
                "kubeconfig",
                format!("{} is not a usable kubeconfig: {error}", file.display()),
            );
            None
        }
    }
}

fn decode_listen(node: Option<&Node>, base: &Path, report: &mut Report) -> Option<Listen> {
    let defaults = Listen {
        http: DEFAULT_HTTP.parse().ok(),
        socket: Some(PathBuf::from(DEFAULT_SOCKET)),
        token_file: None,
        metrics: None,
    };
    let Some(node) = node else {
        return Some(defaults);
    };
    let mut fields = Fields::new(node, "listen", report)?;
    // An explicit `null` (`http:` with nothing after it) turns a listener off; absence keeps the default.
    let http = match fields.get("http") {
        Some(n) => n.str("listen.http", report).and_then(|a| match a.parse() {
            Ok(addr) => Some(Some(addr)),
            Err(_) => {
                report.error(
                    n,
                    "listen.http",
                    format!("{a:?} is not an address like 0.0.0.0:8080 or [::1]:8080"),
                );
                None
            }
        }),
        None if has_key(node, "http") => Some(None),
        None => Some(defaults.http),
    };
    let socket = match fields.get("socket") {
        Some(n) => n.str("listen.socket", report).map(|p| Some(base.join(p))),
        None if has_key(node, "socket") => Some(None),
        None => Some(defaults.socket),
    };
    let token_file = match fields.get("token_file") {
        Some(n) => readable_file(n, "listen.token_file", base, report).map(Some),
        None => Some(None),
    };
    let metrics = match fields.get("metrics") {
        Some(n) => n
            .str("listen.metrics", report)
            .and_then(|a| match a.parse() {
                Ok(addr) => Some(Some(addr)),
                Err(_) => {
                    report.error(
                        n,
                        "listen.metrics",
                        format!("{a:?} is not an address like 127.0.0.1:9090"),
                    );
                    None
                }
            }),
        None => Some(None),
    };
    fields.finish(&["http", "socket", "token_file", "metrics"], report);
    Some(Listen {
        http: http?,
        socket: socket?,
        token_file: token_file?,
        metrics: metrics?,
    })
}

fn has_key(node: &Node, key: &str) -> bool {
    matches!(&node.value, crate::yaml::Value::Map(e) if e.iter().any(|(k, _)| k.value == crate::yaml::Value::Str(key.into())))
}

fn decode_log(node: Option<&Node>, report: &mut Report) -> Option<Log> {
    let mut log = Log {
        format: LogFormat::Text,
        level: "info".to_string(),
    };
    let Some(node) = node else { return Some(log) };
    let mut fields = Fields::new(node, "log", report)?;
    let mut ok = true;
    if let Some(n) = fields.get("format") {
        match n.str("log.format", report) {
            Some("text") => log.format = LogFormat::Text,
            Some("json") => log.format = LogFormat::Json,
            Some(other) => {
                report.error(
                    n,
                    "log.format",
                    format!("{other:?} is not a log format; use text or json"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(n) = fields.get("level") {
        match n.str("log.level", report) {
            Some(level) => match check_filter(level) {
                Ok(()) => log.level = level.to_string(),
                Err(why) => {
                    report.error(n, "log.level", why);
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    fields.finish(&["format", "level"], report);
    ok.then_some(log)
}

fn decode_render(node: Option<&Node>, base: &Path, report: &mut Report) -> Option<Render> {
    let mut render = Render::default();
    let Some(node) = node else {
        return Some(render);
    };
    let mut fields = Fields::new(node, "render", report)?;
    let mut ok = true;
    for key in ["kustomize", "helm"] {
        let Some(n) = fields.get(key) else { continue };
        let path = fields.path(key);
        let Some(name) = n.str(&path, report) else {
            ok = false;
            continue;
        };
        // A bare name is looked up on $PATH; anything with a slash is a path from this file.
        let wanted = if name.contains('/') {
            source::normalize(&base.join(name))
                .to_string_lossy()
                .into_owned()
        } else {
            name.to_string()
        };
        match find_program(&wanted) {
            Some(p) if key == "kustomize" => render.kustomize = Some(p),
            Some(p) => render.helm = Some(p),
            None => {
                report.error(
                    n,
                    &path,
                    format!("{wanted}: no such executable (looked on $PATH for a bare name)"),
                );
                ok = false;
            }
        }
    }
    if let Some(n) = fields.get("timeout") {
        match n.duration("render.timeout", report) {
            Some(d) if d.is_zero() => {
                report.error(n, "render.timeout", "must be more than 0s");
                ok = false;
            }
            Some(d) => render.timeout = d,
            None => ok = false,
        }
    }
    fields.finish(&["kustomize", "helm", "timeout"], report);
    ok.then_some(render)
}

fn decode_leader_election(node: &Node, report: &mut Report) -> Option<LeaderElection> {
    let mut fields = Fields::new(node, "leader_election", report)?;
    let le = decode_lease(&mut fields, report);
    fields.finish(&["namespace", "name", "lease_duration"], report);
    le
}

fn decode_sharding(node: &Node, report: &mut Report) -> Option<Sharding> {
    let mut fields = Fields::new(node, "sharding", report)?;
    let lease = decode_lease(&mut fields, report);
    let mut ok = true;
    let shards = match fields.get("shards") {
        None => {
            report.error(
                node,
                "sharding.shards",
                "missing: how many shards the tenants are divided into",
            );
            None
        }
        Some(n) => match n.u32("sharding.shards", report) {
            Some(s) if (1..=super::MAX_SHARDS).contains(&s) => Some(s),
            Some(_) => {
                report.error(
                    n,
                    "sharding.shards",
                    format!("must be between 1 and {}", super::MAX_SHARDS),
                );
                None
            }
            None => None,
        },
    };
    let mut advertise = None;
    if let Some(n) = fields.get("advertise") {
        match n.str("sharding.advertise", report) {
            Some(v) if check_advertise(v).is_ok() => {
                advertise = Some(v.trim_end_matches('/').to_string())
            }
            Some(v) => {
                let why = check_advertise(v).unwrap_err();
                report.error(n, "sharding.advertise", why);
                ok = false;
            }
            None => ok = false,
        }
    }
    fields.finish(
        &["shards", "namespace", "name", "lease_duration", "advertise"],
        report,
    );
    let (lease, shards) = (lease?, shards?);
    ok.then_some(Sharding {
        shards,
        lease,
        advertise,
    })
}

/// An advertised address: `http://host:port`, nothing after it.
pub(crate) fn check_advertise(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix("http://")
        .ok_or_else(|| format!("{v:?}: give an http:// URL (http://host:port)"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("{v:?}: give http://host:port, without a path"));
    }
    Ok(())
}

/// The fields of a Lease: `namespace`, `name`, `lease_duration`.
fn decode_lease(fields: &mut Fields, report: &mut Report) -> Option<LeaderElection> {
    let mut le = LeaderElection {
        namespace: super::DEFAULT_LEASE_NAMESPACE.to_string(),
        name: "flotilla".to_string(),
        lease_duration: super::DEFAULT_LEASE_DURATION,
    };
    let mut ok = true;
    for (key, slot) in [("namespace", &mut le.namespace), ("name", &mut le.name)] {
        let Some(n) = fields.get(key) else { continue };
        match n.str(&fields.path(key), report) {
            Some(v) if check_name(v).is_ok() => *slot = v.to_string(),
            Some(v) => {
                report.error(
                    n,
                    &fields.path(key),
                    format!("{v:?} is not a valid name (lowercase letters, digits and '-')"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(n) = fields.get("lease_duration") {
        let path = fields.path("lease_duration");
        match n.duration(&path, report) {
            Some(d) if d < Duration::from_secs(1) => {
                report.error(n, &path, "must be at least 1s");
                ok = false;
            }
            Some(d) => le.lease_duration = d,
            None => ok = false,
        }
    }
    ok.then_some(le)
}

fn decode_git(node: Option<&Node>, report: &mut Report) -> Option<GitSettings> {
    let mut git = GitSettings::default();
    let Some(node) = node else { return Some(git) };
    let mut fields = Fields::new(node, "git", report)?;
    let mut ok = true;
    for (key, slot) in [
        ("timeout", &mut git.timeout),
        ("connect_timeout", &mut git.connect_timeout),
    ] {
        let Some(n) = fields.get(key) else { continue };
        match n.duration(&fields.path(key), report) {
            Some(d) if d.is_zero() => {
                report.error(n, &fields.path(key), "must be more than 0s");
                ok = false;
            }
            Some(d) => *slot = d,
            None => ok = false,
        }
    }
    if let Some(n) = fields.get("retries") {
        match n.u32("git.retries", report) {
            Some(r) => git.retries = r,
            None => ok = false,
        }
    }
    fields.finish(&["timeout", "connect_timeout", "retries"], report);
    ok.then_some(git)
}

// === impl Credential ===

impl Credential {
    /// SSH or HTTPS, from the fields it has.
    pub fn kind(&self) -> CredentialKind {
        if self.ssh_key_file.is_some()
            || self.known_hosts_file.is_some()
            || self.passphrase_file.is_some()
        {
            CredentialKind::Ssh
        } else {
            CredentialKind::Https
        }
    }
}

/// Checks a log filter (`info`, `warn,flotilla=debug`) without installing it.
pub fn check_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|error| format!("{filter:?} is not a log level or filter: {error}"))
}
