//! Sources: a `{url, ref, path, credentials}` or `{dir, path}` → a read-only tree at a known
//! revision. Git work runs on blocking threads (git2); this async facade adds per-URL locking,
//! an overall timeout, retries with backoff and jitter, and keeps the last good checkout.
//!
//! On disk, under `state_dir/git/`:
//! - `mirrors/<key>.git`: one bare mirror per URL (`<key>` = first 16 hex of sha256(url));
//! - `checkouts/<key>/<commit>/`: one immutable checkout per (URL, commit), shared by every unit
//!   that uses it, written to a temporary folder and renamed into place;
//! - `refs/<key>/<refkey>`: per (URL, ref), the current and the previous commit. Garbage
//!   collection keeps exactly the checkouts these name.

mod archive;
mod chart;
mod checkout;
mod deps;
mod git;
mod http;
pub mod known_hosts;
pub mod local;
mod oci;
mod verify;
pub(crate) use chart::hex;
pub use checkout::REFUSED_LINK;
pub(crate) use checkout::copy_tree;
pub(crate) use deps::DependencyRules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::{Config, Credential, GitRef, GitSettings, SourceLocation, SourceSpec, redact};
use crate::failure::Kind;

/// How an error for a revision refused for its signature begins.
pub(crate) const UNVERIFIED: &str = "signature not verified";

/// A tree ready to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// The folder the source names (its `path` applied).
    pub root: PathBuf,
    /// The commit SHA, or `sha256:<hex>` of a local directory's tree.
    pub revision: String,
    /// Who signed it, when the source asks for verified revisions.
    pub signer: Option<String>,
}

/// Why a source could not be fetched. The location is safe to show (URL userinfo redacted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct Error {
    pub location: String,
    pub message: String,
    /// Whether the revision was refused for its signature (`verify`).
    pub unverified: bool,
    /// Network trouble and timeouts are transient (retried with backoff); a missing ref, a
    /// refused key or host key, or a bad path are permanent until the source or config changes.
    pub kind: Kind,
}

/// Fetches and checks out sources for one agent.
pub struct Sources {
    state_dir: PathBuf,
    credentials: BTreeMap<String, Credential>,
    settings: GitSettings,
    /// One lock per URL: the mirror is written by one fetch at a time; a second caller waits and
    /// then finds the commit already there (no second fetch).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bounds the Git operations in flight, so a poll of many repositories does not open more
    /// connections than a Git host accepts at once, and the hashing of local directories (each on
    /// a blocking thread). `concurrency` bounds both units and fetches.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// The keys `verify` names.
    verification_keys: Arc<BTreeMap<String, crate::config::VerificationKey>>,
    /// Each verification's result, by commit, tag and policy: a revision is checked once, not
    /// once per unit or per round.
    verified: Arc<Mutex<HashMap<String, Result<String, String>>>>,
    /// Charts from Helm repositories and OCI registries.
    charts: chart::Charts,
}

impl Sources {
    pub fn new(config: &Config) -> Sources {
        set_git_timeouts(&config.git);
        Sources {
            state_dir: config.state_dir.clone(),
            credentials: config.credentials.clone(),
            verification_keys: Arc::new(config.verification_keys.clone()),
            verified: Default::default(),
            charts: chart::Charts::new(&config.state_dir, config.credentials.clone(), &config.git),
            settings: config.git.clone(),
            locks: Mutex::new(HashMap::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.concurrency.max(1) as usize
            )),
        }
    }

    /// The tree `spec` names now. Transient failures are retried with backoff; a failure leaves
    /// the last good checkout in place (see [`Sources::last_good`]).
    pub async fn fetch(&self, spec: &SourceSpec) -> Result<Checkout, Error> {
        let url = match &spec.location {
            SourceLocation::Dir(dir) => return self.local(dir, spec).await,
            SourceLocation::Url(url) => url.clone(),
        };
        let lock = self.lock_for(&url);
        let mut attempt = 0;
        loop {
            // Per attempt: the URL's lock (one operation on a mirror at a time) and a slot of
            // the bound on Git operations in flight. Neither is held while backing off.
            let held = lock.clone().lock_owned().await;
            let slot = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match self.fetch_once(&url, spec, held, slot).await {
                Err((e, retry)) if retry && attempt < self.settings.retries => {
                    tracing::warn!(source = %e.location, error = %e.message, attempt, "fetch failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other.map_err(|(e, _)| e),
            }
        }
    }

    /// The chart `spec` names now, its repository's listing read again only when older than
    /// `min_age`. A failure leaves the last good chart in place (see [`Sources::last_good_chart`]).
    pub async fn chart(
        &self,
        spec: &crate::config::ChartSpec,
        min_age: Duration,
    ) -> Result<Checkout, Error> {
        // Not under the bound on Git operations: chart requests wait on their repository's
        // listing instead (one listing per repository at a time), and a Git host is not kept
        // waiting by a slow chart repository.
        self.charts.fetch(spec, min_age).await
    }

    /// The names of the agent config's credentials.
    pub(crate) fn credential_names(&self) -> Vec<String> {
        self.credentials.keys().cloned().collect()
    }

    /// The last chart fetched successfully for `spec`, if it is still on disk.
    pub fn last_good_chart(&self, spec: &crate::config::ChartSpec) -> Option<Checkout> {
        self.charts.last_good(spec)
    }

    /// The last checkout that was fetched successfully for `spec`, if it is still on disk.
    pub fn last_good(&self, spec: &SourceSpec) -> Option<Checkout> {
        let SourceLocation::Url(url) = &spec.location else {
            return None;
        };
        let key = url_key(url);
        let text = std::fs::read_to_string(self.refs_dir(&key).join(record_name(spec))).ok()?;
        let mut lines = text.lines();
        let commit = lines.next()?.to_string();
        // A source that asks for signatures takes only a commit verified under its policy.
        let signer = match &spec.verify {
            None => None,
            Some(v) => {
                let recorded = lines.nth(1)?;
                let (policy, signer) = recorded.split_once('\t')?;
                (policy == v.cache_key())
                    .then(|| signer.to_string())?
                    .into()
            }
        };
        let dir = self.checkouts_dir(&key).join(&commit);
        let root = apply_path(&dir, spec).ok()?;
        dir.is_dir().then_some(Checkout {
            root,
            revision: commit,
            signer,
        })
    }

    async fn local(&self, dir: &Path, spec: &SourceSpec) -> Result<Checkout, Error> {
        let location = dir.display().to_string();
        let fail = |message: String| Error {
            location: location.clone(),
            unverified: false,
            message,
            kind: Kind::Permanent,
        };
        if !dir.is_dir() {
            return Err(fail("no such directory".into()));
        }
        let root = apply_path(dir, spec).map_err(fail)?;
        let owned = dir.to_path_buf();
        // Under the bound on Git operations too: a fleet of a hundred tenant directories hashed
        // at once took a blocking thread each (each thread's stack and allocations stay for a while).
        let _slot = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let revision = tokio::task::spawn_blocking(move || local::revision(&owned))
            .await
            .map_err(|e| fail(format!("hashing the tree failed: {e}")))?
            .map_err(fail)?;
        Ok(Checkout {
            root,
            revision,
            signer: None,
        })
    }

    /// One attempt. The error says whether a retry could help: a transient failure yes, a
    /// timeout no (its Git work may still be running; it keeps the URL's lock until it ends).
    async fn fetch_once(
        &self,
        url: &str,
        spec: &SourceSpec,
        held: tokio::sync::OwnedMutexGuard<()>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Checkout, (Error, bool)> {
        let location = redact(url);
        let key = url_key(url);
        let mirror = self
            .state_dir
            .join("git/mirrors")
            .join(format!("{key}.git"));
        let checkouts = self.checkouts_dir(&key);
        let credential = spec
            .credentials
            .as_ref()
            .and_then(|name| self.credentials.get(name))
            .cloned();
        let reference = spec.reference.clone();
        let owned_url = url.to_string();
        let timeout = self.settings.timeout;
        let started = Instant::now();
        let verify = spec.verify.clone();
        let (keys, verified) = (self.verification_keys.clone(), self.verified.clone());

        type Fetched = (String, PathBuf, Option<String>);
        let job = move || -> Result<Fetched, git::Failure> {
            let access = git::Access {
                url: &owned_url,
                credential: credential.as_ref(),
                deadline: crate::deadline::from_now(timeout),
            };
            let update = || -> Result<Fetched, git::Failure> {
                let (commit, tag) = git::resolve_and_fetch(&mirror, &access, &reference)?;
                // Checked before anything of it is written out: an unverified revision never
                // becomes a checkout, nor the last good one.
                let signer = match &verify {
                    None => None,
                    Some(v) => {
                        // A key that cannot be read fails this fetch (transiently: the file
                        // may come back) and is not remembered as the revision's verdict.
                        let trusted =
                            verify::trusted_keys(v, &keys).map_err(git::Failure::Transient)?;
                        let material = trusted
                            .iter()
                            .map(|(_, _, text)| hex16(text.as_bytes()))
                            .collect::<Vec<_>>()
                            .join(",");
                        let tag_key = tag.as_ref().map(|(t, n)| format!("{t}:{n}"));
                        let cache = format!("{commit}|{tag_key:?}|{}|{material}", v.cache_key());
                        let known = verified.lock().ok().and_then(|c| c.get(&cache).cloned());
                        let result = match known {
                            Some(result) => result,
                            None => {
                                let repo = git2::Repository::open_bare(&mirror)
                                    .map_err(|e| git::Failure::Local(e.message().to_string()))?;
                                let tag = tag.as_ref().map(|(t, n)| (*t, n.as_str()));
                                let result = verify::check(&repo, commit, tag, v, &trusted);
                                if let Ok(mut c) = verified.lock() {
                                    c.insert(cache, result.clone());
                                }
                                result
                            }
                        };
                        Some(result.map_err(|why| {
                            git::Failure::Permanent(format!("{UNVERIFIED}: {why}"))
                        })?)
                    }
                };
                let dest = checkout::checkout_dir(&checkouts, commit);
                if !dest.is_dir() {
                    checkout::checkout(&mirror, commit, &dest)?;
                }
                Ok((commit.to_string(), dest, signer))
            };
            match update() {
                // A damaged mirror is thrown away and made again from the remote, once.
                Err(git::Failure::Local(why)) => {
                    tracing::warn!(source = %redact(&owned_url), error = %why, "the mirror is damaged; cloning it again");
                    std::fs::remove_dir_all(&mirror).map_err(|e| {
                        git::Failure::Permanent(format!(
                            "cannot remove the damaged mirror {}: {e}",
                            mirror.display()
                        ))
                    })?;
                    update()
                }
                other => other,
            }
        };
        // The blocking work aborts transfers at the deadline itself; this bounds the rest (a
        // server that accepts and never answers) so the caller is never stuck.
        let mut task = tokio::task::spawn_blocking(job);
        let error = |message: String, kind: Kind| Error {
            location: location.clone(),
            unverified: message.starts_with(UNVERIFIED),
            message,
            kind,
        };
        let (commit, dir, signer) =
            match tokio::time::timeout(timeout.saturating_add(Duration::from_secs(5)), &mut task)
                .await
            {
                Err(_) => {
                    // The Git work cannot be cancelled; until it ends it keeps the URL's lock, so
                    // nothing else touches that mirror meanwhile. The shared slot is given back
                    // now: a host that trickles bytes holds up its own URL, not everyone's fetches.
                    drop(slot);
                    let release = async move {
                        let _ = task.await;
                        drop(held);
                    };
                    tokio::spawn(tracing::Instrument::in_current_span(release));
                    let message = format!(
                        "did not finish within {}",
                        humantime::format_duration(timeout)
                    );
                    return Err((error(message, Kind::Transient), false));
                }
                Ok(Err(e)) => {
                    return Err((
                        error(format!("the fetch task failed: {e}"), Kind::Transient),
                        true,
                    ));
                }
                Ok(Ok(Err(git::Failure::Transient(m)))) => {
                    return Err((error(m, Kind::Transient), true));
                }
                Ok(Ok(Err(git::Failure::Permanent(m) | git::Failure::Local(m)))) => {
                    return Err((error(m, Kind::Permanent), false));
                }
                Ok(Ok(Ok(done))) => done,
            };
        let root = apply_path(&dir, spec).map_err(|message| {
            (
                error(format!("at {commit}: {message}"), Kind::Permanent),
                false,
            )
        })?;
        // Records and garbage collection touch the disk: on the blocking pool, still under the
        // URL's lock.
        let (refs, checkouts) = (self.refs_dir(&key), self.checkouts_dir(&key));
        let (name, recorded) = (record_name(spec), commit.clone());
        let verified = spec
            .verify
            .as_ref()
            .zip(signer.clone())
            .map(|(v, s)| format!("{}\t{s}", v.cache_key()));
        let _ = tokio::task::spawn_blocking(move || {
            record(&refs, &checkouts, &name, &recorded, verified.as_deref())
        })
        .await;
        match &signer {
            Some(signer) => {
                tracing::info!(source = %location, revision = %commit, %signer, "verified revision")
            }
            None => {
                tracing::debug!(source = %location, revision = %commit, elapsed = ?started.elapsed(), "source ready")
            }
        }
        Ok(Checkout {
            root,
            revision: commit,
            signer,
        })
    }

    fn lock_for(&self, url: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(url.to_string()).or_default().clone()
    }

    fn checkouts_dir(&self, key: &str) -> PathBuf {
        self.state_dir.join("git/checkouts").join(key)
    }

    fn refs_dir(&self, key: &str) -> PathBuf {
        self.state_dir.join("git/refs").join(key)
    }
}

/// The folder `spec.path` names inside a tree, which must exist and stay inside it.
fn apply_path(tree: &Path, spec: &SourceSpec) -> Result<PathBuf, String> {
    let Some(path) = &spec.path else {
        return Ok(tree.to_path_buf());
    };
    crate::config::check_subpath(path)?;
    let dir = tree.join(path);
    let real = dir
        .canonicalize()
        .map_err(|_| format!("path {path} does not exist"))?;
    let top = tree
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", tree.display()))?;
    if !real.starts_with(&top) {
        return Err(format!(
            "path {path} leaves the repository through a symlink"
        ));
    }
    if !real.is_dir() {
        return Err(format!("path {path} is not a folder"));
    }
    Ok(dir)
}

fn url_key(url: &str) -> String {
    hex16(url.as_bytes())
}

fn ref_key(reference: &GitRef) -> String {
    hex16(reference.to_string().as_bytes())
}

fn hex16(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The record of a spec's last good commit: one per ref, and one per ref and signature policy,
/// so that a fetch made without `verify` (or under another policy) never stands in for one made
/// with it.
fn record_name(spec: &SourceSpec) -> String {
    match &spec.verify {
        None => ref_key(&spec.reference),
        Some(v) => format!(
            "{}~{}",
            ref_key(&spec.reference),
            hex16(v.cache_key().as_bytes())
        ),
    }
}

/// Records `commit` as the last good one in the record `name` (the one before it kept, and with
/// `verified`, `policy\tsigner`, its signer), then removes the checkouts in `checkouts` that no
/// record of the URL keeps (each keeps its current and previous commit).
fn record(refs: &Path, checkouts: &Path, name: &str, commit: &str, verified: Option<&str>) {
    let file = refs.join(name);
    let old = std::fs::read_to_string(&file).unwrap_or_default();
    let mut lines = old.lines();
    let (current, before) = (lines.next(), lines.next());
    let was_verified = lines.next();
    if current == Some(commit) && was_verified == verified {
        // Unchanged: the previous commit stays the previous one (and its checkout stays).
        return;
    }
    // The same commit, verified anew: the one before it stays the one before it.
    let previous = if current == Some(commit) {
        before
    } else {
        current
    };
    let mut text = format!("{commit}\n{}\n", previous.unwrap_or_default());
    if let Some(v) = verified {
        text.push_str(v);
        text.push('\n');
    }
    if std::fs::create_dir_all(refs).is_ok() {
        // Written whole and renamed, so a reader never sees half a file.
        let tmp = refs.join(format!(".{name}.tmp"));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    let mut keep = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(refs) {
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                keep.extend(
                    text.lines()
                        .take(2)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(checkouts) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !keep.contains(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// 0.5 s, 1 s, 2 s, ... capped at 30 s, each ±20% so many sources do not retry in step.
fn backoff(attempt: u32) -> Duration {
    crate::deadline::backoff(
        Duration::from_millis(500),
        attempt,
        Duration::from_secs(30),
        0.2,
    )
}

/// libgit2's socket timeouts are process-wide; they are set once, from the first config.
#[allow(unsafe_code)]
fn set_git_timeouts(settings: &GitSettings) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let connect = i32::try_from(settings.connect_timeout.as_millis()).unwrap_or(i32::MAX);
    let io = i32::try_from(settings.timeout.as_millis()).unwrap_or(i32::MAX);
    ONCE.call_once(|| {
        // SAFETY: these only store integers in libgit2's global settings. `Once` makes this the
        // first and only call, before any Git operation of this process reads them.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(connect);
            let _ = git2::opts::set_server_timeout_in_milliseconds(io);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 0..10 {
            let d = backoff(attempt);
            let base = Duration::from_millis(500)
                .saturating_mul(1 << attempt.min(6))
                .min(Duration::from_secs(30));
            assert!(
                d >= base.mul_f64(0.79) && d <= base.mul_f64(1.21),
                "{attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(url_key("https://a/x.git"), url_key("https://a/x.git"));
        assert_ne!(url_key("https://a/x.git"), url_key("https://a/y.git"));
        assert_eq!(url_key("x").len(), 16);
    }
}
