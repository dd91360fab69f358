//! The agent config file (`flotilla.yaml`): what it holds once validated, and how it is loaded.
//!
//! Loading reads the file into a spanned YAML tree ([`crate::yaml`]) and decodes it in one pass
//! that collects every error, each with `file:line:column` and the field path, the way Vector
//! compiles its config. Relative paths in the file are relative to the file's own folder, so a
//! config and its neighbours can move together.

mod chart;
mod decode;
mod decryption;
pub mod hosts;
mod secrets;
mod source;
mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use chart::{ChartRepo, ChartSpec, check_repo, decode_chart, is_chart_name};
pub(crate) use decode::check_advertise;
pub use decode::{check_filter, check_name};
pub use decryption::DecryptionKey;
pub(crate) use decryption::private_key_file;
pub use source::{
    CredentialKind, GitRef, SourceLocation, SourceSpec, check_subpath, decode as decode_source,
    redact,
};
pub(crate) use verify::decode_verify;
pub use verify::{VerificationKey, Verify, VerifyMode};

use crate::yaml::{Diagnostic, Diagnostics};

/// A validated agent config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The name of the cluster this agent manages; matched against `clusters/<name>/` in the fleet.
    pub cluster: String,
    /// The fleet repository.
    pub fleet: SourceSpec,
    /// Named credentials, referenced by sources in this file and in the fleet's tenant files.
    pub credentials: BTreeMap<String, Credential>,
    /// Keys whose signatures the agent trusts, named by sources' `verify.keys`.
    pub verification_keys: BTreeMap<String, VerificationKey>,
    /// Private keys for SOPS files (`decryption`), granted to tenants by name in the fleet.
    pub decryption: BTreeMap<String, DecryptionKey>,
    /// Default reconcile interval of every unit.
    pub interval: Duration,
    /// Where checkouts and caches live.
    pub state_dir: PathBuf,
    /// `None`: kube's usual inference ($KUBECONFIG, ~/.kube/config, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    pub listen: Listen,
    pub webhooks: Webhooks,
    /// How many units reconcile (and how many sources fetch) at once.
    pub concurrency: u32,
    /// How many objects of one order group of a unit are applied at once.
    pub apply_concurrency: u32,
    pub log: Log,
    pub render: Render,
    pub git: GitSettings,
    /// How long a stopping daemon lets in-flight applies finish.
    pub shutdown_grace: Duration,
    /// The longest any unit waits for its objects' health, whatever its own `timeout` says: a
    /// tenant cannot hold the agent's attention longer.
    pub unit_timeout: Duration,
    /// Of several replicas only the holder of this Lease applies; `None`: this agent is alone.
    pub leader_election: Option<LeaderElection>,
    /// Several replicas divide the tenants between them; `None`: this agent does all.
    pub sharding: Option<Sharding>,
}

/// Tenants divided between replicas: each of `shards` shards is a Lease
/// (`<lease.name>-shard-<i>`), each replica announces itself in its own
/// (`<lease.name>-replica-<hash>`), and holds its fair share of the shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharding {
    pub shards: u32,
    /// Where the Leases live, their name prefix and duration.
    pub lease: LeaderElection,
    /// The URL other replicas reach this one's `listen.http` at (forwarded webhooks, syncs and
    /// status); default: `$FLOTILLA_ADVERTISE`, else `http://$POD_IP:<port>`, else
    /// `listen.http` itself when it is a concrete address.
    pub advertise: Option<String>,
}

/// The most shards `sharding.shards` may name.
pub const MAX_SHARDS: u32 = 256;

/// The `coordination.k8s.io/v1` Lease that elects the one replica that applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    /// How long a lease lasts without renewal; the holder renews every third of it.
    pub lease_duration: Duration,
}

/// How Git hosts are reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSettings {
    /// The longest one fetch (listing, transfer, checkout) may take.
    pub timeout: Duration,
    /// The longest a connection may take to open.
    pub connect_timeout: Duration,
    /// Retries of a fetch that failed for a transient reason (network, timeout), with backoff.
    pub retries: u32,
}

impl Default for GitSettings {
    fn default() -> GitSettings {
        GitSettings {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retries: 2,
        }
    }
}

/// The external renderers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Render {
    /// `kustomize` or `kubectl`; default: whichever is on `$PATH`, `kustomize` first.
    pub kustomize: Option<PathBuf>,
    /// `helm`; default: `helm` on `$PATH`, if any.
    pub helm: Option<PathBuf>,
    /// How long one kustomize or Helm call may take.
    pub timeout: Duration,
}

impl Default for Render {
    fn default() -> Render {
        Render {
            kustomize: find_program("kustomize").or_else(|| find_program("kubectl")),
            helm: find_program("helm"),
            timeout: DEFAULT_RENDER_TIMEOUT,
        }
    }
}

/// Finds `name` on `$PATH`, or takes it as a path when it has a `/`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// How to authenticate to a Git host. Secrets are always read from files, never written inline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credential {
    /// SSH private key (for `ssh://` and `git@host:path` URLs).
    pub ssh_key_file: Option<PathBuf>,
    /// Passphrase of the SSH key, if it has one.
    pub passphrase_file: Option<PathBuf>,
    /// Host keys the SSH server must present; an unknown or changed key is refused.
    pub known_hosts_file: Option<PathBuf>,
    /// HTTPS token (sent as the password).
    pub token_file: Option<PathBuf>,
    /// HTTPS user name (default for tokens: `git`).
    pub username: Option<String>,
    /// HTTPS password.
    pub password_file: Option<PathBuf>,
    /// Where it may be sent: no other host (or port, or path outside the prefix) ever gets it.
    pub hosts: Vec<hosts::HostRule>,
}

impl Credential {
    /// Whether the secret may be sent to `url`.
    pub fn allows(&self, url: &str) -> bool {
        hosts::endpoint(url).is_some_and(|to| self.hosts.iter().any(|h| h.allows(&to)))
    }
}

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Webhooks, API, metrics and health; `None` disables HTTP.
    pub http: Option<SocketAddr>,
    /// The operator socket used by `flotilla sync` and `flotilla status`; `None` disables it.
    pub socket: Option<PathBuf>,
    /// The bearer token that `/api/v1/*` over HTTP requires; without it the HTTP API refuses
    /// every request (the socket, guarded by its file mode, needs none).
    pub token_file: Option<PathBuf>,
    /// A listener serving only `/metrics`, `/healthz` and `/readyz`, without the token (for a
    /// scraper); `None`: metrics only on `http`, with the token.
    pub metrics: Option<SocketAddr>,
}

/// Webhook receivers, each enabled by giving its secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Webhooks {
    pub github: Option<WebhookSecret>,
    pub gitlab: Option<WebhookSecret>,
    pub gitea: Option<WebhookSecret>,
    pub bitbucket: Option<WebhookSecret>,
    pub generic: Option<WebhookSecret>,
}

/// The file holding a webhook's shared secret (GitLab calls it a token), and the repositories
/// that have secrets of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSecret {
    /// For pushes of repositories not in `repos`; `None`: only those in `repos` are accepted.
    pub file: Option<PathBuf>,
    /// Repository URL → its own secret file: a push
    /// naming it is accepted only when made with that secret, so whoever holds another
    /// repository's secret (a tenant its own) cannot forge pushes of it (the fleet).
    pub repos: Vec<(String, PathBuf)>,
    /// For the generic receiver: the header carrying `sha256=<hex HMAC>`.
    pub header: Option<String>,
}

/// Log settings; `--log-format` and `--log-level` override them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, or `info,flotilla::source=debug`.
    pub level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read at all (missing, unreadable). Permanent until the file changes.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read and is wrong; every problem is listed. Permanent until the file changes.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/flotilla/flotilla.yaml";
/// Default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// Shortest `interval` accepted: anything shorter would hammer the Git hosts and the API server.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default `concurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Default `apply_concurrency`.
pub const DEFAULT_APPLY_CONCURRENCY: u32 = 16;
/// Default `render.timeout`.
pub const DEFAULT_RENDER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `listen.http`.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default `unit_timeout`.
pub const DEFAULT_UNIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Default `shutdown_grace`: inside Kubernetes' default 30 s termination grace period.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Default `leader_election.namespace` and `sharding.namespace`.
pub const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";
/// Default `leader_election.lease_duration`.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default `listen.socket`.
pub const DEFAULT_SOCKET: &str = "/run/flotilla/flotilla.sock";

// === impl Config ===

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let shown = path.display().to_string();
        let Ok(text) = String::from_utf8(bytes) else {
            return Err(Error::Invalid(Diagnostics::one(Diagnostic {
                file: shown,
                line: 1,
                column: 1,
                path: String::new(),
                message: "not a text file (not valid UTF-8); expected a YAML mapping".to_string(),
            })));
        };
        Config::parse(&text, path)
    }

    /// Validates config text as if it were read from `path` (which anchors relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        decode::decode(text, path).map_err(Error::Invalid)
    }

    /// The state directory's default: systemd's `$STATE_DIRECTORY` if set, else `/var/lib/flotilla`.
    pub fn default_state_dir() -> PathBuf {
        std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/flotilla"))
    }
}
