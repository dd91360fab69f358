//! Charts from Helm repositories (`index.yaml`) and OCI registries → an unpacked chart folder
//! at a known version and digest.
//!
//! On disk, under `state_dir/charts/`:
//! - `<sha256 hex>/`: one immutable, unpacked chart per archive digest, shared by every unit
//!   that uses that chart version (written to a temporary folder and renamed into place);
//! - `refs/<key>`: per chart spec, the last good version and digest, so a failed fetch (after
//!   a restart too) keeps the last good chart.
//!
//! A repository's listing (`index.yaml`, or an OCI repository's tags) is read at most once per
//! the asking unit's interval, with a conditional request (`If-None-Match`,
//! `If-Modified-Since`); a version once resolved to a digest is taken as immutable, as Helm
//! takes it, so an unchanged poll costs one request per repository.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::http::{Http, Response};
use super::{Checkout, Error};
use crate::config::{ChartRepo, ChartSpec, Credential};
use crate::failure::Kind;

/// The most repository listings (and archive locks) kept between fetches.
const MAX_LISTINGS: usize = 512;
/// An index up to this size is kept whole in memory; a larger one only for the charts asked for.
const KEEP_WHOLE: usize = 1 << 20;
/// The most an `index.yaml` may weigh.
const MAX_INDEX: usize = 64 << 20;
/// The most a chart archive may weigh.
pub(super) const MAX_ARCHIVE: usize = 16 << 20;

/// Fetches charts for one agent.
pub(crate) struct Charts {
    dir: PathBuf,
    pub(super) http: Http,
    credentials: BTreeMap<String, Credential>,
    /// The longest one chart fetch may take, all its requests together.
    deadline: Duration,
    /// One state per repository (an HTTP repository's URL; an OCI repository's URL and chart):
    /// its lock makes concurrent units wait for one listing instead of each fetching it.
    repos: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Listing>>>>,
}

/// What a repository was last seen to hold.
#[derive(Default)]
pub(super) struct Listing {
    pub(super) fetched: Option<Instant>,
    pub(super) etag: Option<String>,
    pub(super) last_modified: Option<String>,
    /// HTTP: chart name → its versions. OCI: the chart's versions (key "").
    pub(super) entries: HashMap<String, Vec<Entry>>,
    /// OCI: a version's manifest digest and chart layer digest, once resolved.
    pub(super) resolved: HashMap<String, (String, String)>,
    /// OCI: a bearer token from the registry's token service, and until when it serves.
    pub(super) bearer: Option<(String, Instant)>,
    /// HTTP: the chart names kept from the index (those asked for; a large public index is
    /// not held whole).
    pub(super) kept: std::collections::HashSet<String>,
    /// The last listing's failure and when: units that wait for the same repository get it
    /// instead of each trying again (for a few seconds).
    pub(super) failed: Option<(Instant, String, Kind)>,
}

/// How long a listing's failure is given to the units that waited for it.
pub(super) const FAILURE_MEMORY: Duration = Duration::from_secs(10);

impl Listing {
    /// The recent failure, if the listing failed a moment ago.
    pub(super) fn recent_failure(&self) -> Option<Fail> {
        self.failed
            .as_ref()
            .filter(|(at, _, _)| at.elapsed() < FAILURE_MEMORY)
            .map(|(_, message, kind)| Fail {
                message: message.clone(),
                kind: *kind,
            })
    }

    /// Remembers `fail` for the units waiting for this listing.
    pub(super) fn remember(&mut self, fail: Fail) -> Fail {
        self.failed = Some((Instant::now(), fail.message.clone(), fail.kind));
        fail
    }
}

/// One version of a chart in a listing.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) version: String,
    pub(super) urls: Vec<String>,
    /// The archive's sha256 (hex), as the index gives it.
    pub(super) digest: Option<String>,
}

#[derive(serde::Deserialize)]
struct IndexFile {
    #[serde(default)]
    entries: BTreeMap<String, Vec<IndexEntry>>,
}

#[derive(serde::Deserialize)]
struct IndexEntry {
    #[serde(default)]
    version: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// A failure while fetching a chart, with its kind.
pub(super) struct Fail {
    pub(super) message: String,
    pub(super) kind: Kind,
}

impl Fail {
    pub(super) fn permanent(message: impl Into<String>) -> Fail {
        Fail {
            message: message.into(),
            kind: Kind::Permanent,
        }
    }

    pub(super) fn transient(message: impl Into<String>) -> Fail {
        Fail {
            message: message.into(),
            kind: Kind::Transient,
        }
    }

    /// A failure for an HTTP status: 5xx, 408 and 429 may pass; the rest will not by waiting.
    pub(super) fn status(what: &str, response: &Response) -> Fail {
        let message = format!("{what}: the server answered {}", response.status);
        match response.status {
            408 | 429 | 500..=599 => Fail::transient(message),
            _ => Fail::permanent(message),
        }
    }
}

impl Charts {
    pub(crate) fn new(
        state_dir: &std::path::Path,
        credentials: BTreeMap<String, Credential>,
        settings: &crate::config::GitSettings,
    ) -> Charts {
        Charts {
            dir: state_dir.join("charts"),
            http: Http::new(settings.timeout, settings.connect_timeout),
            deadline: settings.timeout + Duration::from_secs(5),
            credentials,
            repos: Mutex::new(HashMap::new()),
        }
    }

    /// The chart `spec` names now; the repository's listing is read again only when it is
    /// older than `min_age`.
    pub(crate) async fn fetch(
        &self,
        spec: &ChartSpec,
        min_age: Duration,
    ) -> Result<Checkout, Error> {
        let started = Instant::now();
        // One deadline for the whole fetch (listing, token, manifest, archive), as for Git.
        let result =
            match tokio::time::timeout(self.deadline, self.fetch_inner(spec, min_age)).await {
                Ok(result) => result,
                Err(_) => Err(Fail::transient(format!(
                    "not fetched within {}",
                    humantime::format_duration(self.deadline)
                ))),
            };
        match result {
            Ok(checkout) => {
                tracing::debug!(chart = %spec.shown(), revision = %checkout.revision, elapsed = ?started.elapsed(), "chart ready");
                if let Err(error) = self.record(spec, &checkout) {
                    tracing::warn!(chart = %spec.shown(), %error, "cannot record the last good chart");
                }
                Ok(checkout)
            }
            Err(f) => Err(Error {
                location: spec.repo.url().to_string(),
                message: format!("chart {}: {}", spec.name, f.message),
                unverified: false,
                kind: f.kind,
            }),
        }
    }

    /// The last chart fetched successfully for `spec`, if it is still on disk.
    pub(crate) fn last_good(&self, spec: &ChartSpec) -> Option<Checkout> {
        let text = std::fs::read_to_string(self.refs_file(spec)).ok()?;
        let mut lines = text.lines();
        let (revision, hex) = (lines.next()?, lines.next()?);
        let root = self.dir.join(hex);
        root.join("Chart.yaml").is_file().then(|| Checkout {
            root,
            revision: revision.to_string(),
            signer: None,
        })
    }

    fn refs_file(&self, spec: &ChartSpec) -> PathBuf {
        // The credentials are part of the key: a chart fetched with one tenant's credentials
        // is never another's last good chart.
        let key = Sha256::digest(format!(
            "{}|{}|{}|{}",
            spec.repo,
            spec.name,
            spec.version,
            spec.credentials.as_deref().unwrap_or_default()
        ));
        self.dir.join("refs").join(&hex(&key)[..16])
    }

    fn record(&self, spec: &ChartSpec, checkout: &Checkout) -> std::io::Result<()> {
        let file = self.refs_file(spec);
        std::fs::create_dir_all(file.parent().expect("refs/ has a parent"))?;
        let hex = checkout
            .root
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let old = std::fs::read_to_string(&file).unwrap_or_default();
        let mut lines = old.lines();
        let (_, current, before) = (lines.next(), lines.next(), lines.next());
        if current == Some(hex.as_ref()) {
            return Ok(());
        }
        // The chart before stays on disk too (a rollback is a version change back).
        let previous = current.or(before).unwrap_or_default();
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n{hex}\n{previous}\n", checkout.revision))?;
        std::fs::rename(tmp, file)?;
        self.sweep();
        Ok(())
    }

    /// Removes the unpacked charts no record keeps (each keeps its current and previous one),
    /// composed charts not used for a week, and temporary folders left by a crash. A folder
    /// younger than ten minutes stays: a fetch may have unpacked it and not recorded it yet.
    fn sweep(&self) {
        const FRESH: Duration = Duration::from_secs(600);
        const UNUSED: Duration = Duration::from_secs(7 * 24 * 3600);
        let age = |path: &std::path::Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default()
        };
        let mut keep = std::collections::HashSet::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("refs")) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    keep.extend(text.lines().skip(1).take(2).map(str::to_string));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
                let temporary = name.starts_with(".unpack-");
                if (digest && !keep.contains(&name) || temporary) && age(&entry.path()) > FRESH {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.join("composed")) {
            for entry in entries.flatten() {
                let limit = if entry.file_name().to_string_lossy().starts_with('.') {
                    FRESH
                } else {
                    UNUSED
                };
                if age(&entry.path()) > limit {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// The unpacked chart of an archive digest (whether or not it is there yet).
    pub(super) fn cache_dir(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    pub(super) fn listing_of(&self, key: &str) -> Arc<tokio::sync::Mutex<Listing>> {
        let mut repos = self
            .repos
            .lock()
            .expect("the listing map is never poisoned");
        // Tenants name repositories: the listings kept are bounded. Over the bound, those no
        // fetch holds are dropped (read again when next asked for).
        if repos.len() >= MAX_LISTINGS && !repos.contains_key(key) {
            repos.retain(|_, l| Arc::strong_count(l) > 1);
        }
        repos.entry(key.to_string()).or_default().clone()
    }

    /// The `Authorization` header value the credentials named give, if any: basic with a user
    /// name, else a bearer token.
    pub(super) fn secret(&self, name: Option<&str>) -> Result<Option<(Credential, String)>, Fail> {
        use base64::Engine as _;
        let Some(name) = name else { return Ok(None) };
        let Some(c) = self.credentials.get(name) else {
            return Err(Fail::permanent(format!(
                "no credentials named {name:?} in the agent config"
            )));
        };
        let read = |f: &PathBuf| {
            std::fs::read_to_string(f)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    Fail::permanent(format!(
                        "credentials {name:?}: cannot read {}: {e}",
                        f.display()
                    ))
                })
        };
        let header = match (
            &c.username,
            c.password_file.as_ref().or(c.token_file.as_ref()),
        ) {
            (Some(user), Some(file)) => {
                let pair = format!("{user}:{}", read(file)?);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            (None, Some(file)) if c.token_file.is_some() => format!("Bearer {}", read(file)?),
            _ => {
                return Err(Fail::permanent(format!(
                    "credentials {name:?} hold no username and password_file, nor a token_file"
                )));
            }
        };
        Ok(Some((c.clone(), header)))
    }

    async fn fetch_inner(&self, spec: &ChartSpec, min_age: Duration) -> Result<Checkout, Fail> {
        match &spec.repo {
            ChartRepo::Http(url) => self.index_chart(url, spec, min_age).await,
            ChartRepo::Oci(url) => super::oci::fetch(self, url, spec, min_age).await,
        }
    }

    async fn index_chart(
        &self,
        repo: &str,
        spec: &ChartSpec,
        min_age: Duration,
    ) -> Result<Checkout, Fail> {
        let secret = self.secret(spec.credentials.as_deref())?;
        let auth = |url: &str| {
            secret
                .as_ref()
                .filter(|(c, _)| c.allows(url))
                .map(|(_, h)| h.clone())
        };
        // One listing per repository and credentials: what one tenant's credentials read is
        // not served to a unit that has other credentials, or none.
        let lock = self.listing_of(&format!(
            "{repo}|{}",
            spec.credentials.as_deref().unwrap_or_default()
        ));
        let mut listing = lock.lock().await;
        if !listing.kept.contains(&spec.name) && !listing.entries.contains_key(&spec.name) {
            // A chart not kept from the last index: read it whole again.
            listing.kept.insert(spec.name.clone());
            listing.fetched = None;
            listing.etag = None;
            listing.last_modified = None;
        }
        if listing.fetched.is_none_or(|t| t.elapsed() >= min_age) {
            if let Some(fail) = listing.recent_failure() {
                return Err(fail);
            }
            let url = format!("{repo}/index.yaml");
            let mut headers = Vec::new();
            if let Some(etag) = &listing.etag {
                headers.push(("If-None-Match", etag.clone()));
            }
            if let Some(date) = &listing.last_modified {
                headers.push(("If-Modified-Since", date.clone()));
            }
            let response = match self.http.get(&url, &headers, &auth, MAX_INDEX).await {
                Ok(r) => r,
                Err(e) => return Err(listing.remember(Fail::transient(format!("{url}: {e}")))),
            };
            match response.status {
                304 if listing.fetched.is_some() => {}
                200 => {
                    listing.entries = match parse_index(&response.body, &listing.kept) {
                        Ok(entries) => entries,
                        Err(fail) => return Err(listing.remember(fail)),
                    };
                    listing.etag = response.header("etag").map(str::to_string);
                    listing.last_modified = response.header("last-modified").map(str::to_string);
                }
                _ => return Err(listing.remember(Fail::status(&url, &response))),
            }
            listing.fetched = Some(Instant::now());
            listing.failed = None;
        }
        let Some(versions) = listing.entries.get(&spec.name) else {
            return Err(Fail::permanent(format!(
                "the repository's index has no chart named {:?}",
                spec.name
            )));
        };
        let entry = pick(versions, spec)?.clone();
        drop(listing);
        let Some(digest) = entry.digest.as_deref().map(str::to_ascii_lowercase) else {
            return Err(Fail::permanent(format!(
                "version {}: the index gives no digest, so the archive cannot be verified; refused",
                entry.version
            )));
        };
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Fail::permanent(format!(
                "version {}: the index's digest {digest:?} is not a sha256",
                entry.version
            )));
        }
        let revision = format!("{}@sha256:{digest}", entry.version);
        let root = self.cache_dir(&digest);
        // One download per archive: units of the same version wait for the first.
        let download = self.listing_of(&format!("archive|{digest}"));
        let _downloading = download.lock().await;
        if !root.join("Chart.yaml").is_file() {
            let Some(first) = entry.urls.first() else {
                return Err(Fail::permanent(format!(
                    "version {}: the index gives no URL",
                    entry.version
                )));
            };
            let url = super::http::join_url(&format!("{repo}/index.yaml"), first);
            let response = self
                .http
                .get(&url, &[], &auth, MAX_ARCHIVE)
                .await
                .map_err(|e| Fail::transient(format!("{url}: {e}")))?;
            if response.status != 200 {
                return Err(Fail::status(&url, &response));
            }
            self.store(&response.body, &digest, &url).await?;
        }
        Ok(Checkout {
            root,
            revision,
            signer: None,
        })
    }

    /// Verifies `data` against `digest` (sha256 hex) and unpacks it into the cache.
    pub(super) async fn store(&self, data: &[u8], digest: &str, from: &str) -> Result<(), Fail> {
        let got = hex(&Sha256::digest(data));
        if got != digest {
            return Err(Fail::permanent(format!(
                "{from}: the archive's sha256 is {got}, not the {digest} its repository gives; refused"
            )));
        }
        let (data, dest) = (data.to_vec(), self.dir.join(digest));
        tokio::task::spawn_blocking(move || super::archive::unpack(&data, &dest))
            .await
            .map_err(|e| Fail::transient(e.to_string()))?
            .map_err(|e| Fail::permanent(format!("{from}: {e}")))
    }
}

fn parse_index(
    body: &[u8],
    kept: &std::collections::HashSet<String>,
) -> Result<HashMap<String, Vec<Entry>>, Fail> {
    let text = std::str::from_utf8(body).map_err(|_| Fail::permanent("index.yaml is not UTF-8"))?;
    // A large public repository's index has millions of nodes; its size is capped above.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_events: 50_000_000,
            max_nodes: 20_000_000,
        },
    };
    let index: IndexFile = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| Fail::permanent(format!("index.yaml cannot be read: {e}")))?;
    Ok(index
        .entries
        .into_iter()
        // A small index is kept whole (its other charts are asked for next, often); a large
        // public one only for the charts asked for.
        .filter(|(name, _)| body.len() <= KEEP_WHOLE || kept.contains(name))
        .map(|(name, list)| {
            let list = list
                .into_iter()
                .map(|e| Entry {
                    version: e.version,
                    urls: e.urls,
                    digest: e.digest,
                })
                .collect();
            (name, list)
        })
        .collect())
}

/// The highest version the spec's range takes, or an error naming some that exist.
pub(super) fn pick<'a>(versions: &'a [Entry], spec: &ChartSpec) -> Result<&'a Entry, Fail> {
    spec.version
        .best(versions.iter().map(|e| (e.version.as_str(), e)))
        .ok_or_else(|| {
            let mut some: Vec<&str> = versions.iter().map(|e| e.version.as_str()).collect();
            some.truncate(10);
            Fail::permanent(format!(
                "no version matches {:?} (the repository has {})",
                spec.version.to_string(),
                if some.is_empty() {
                    "none".to_string()
                } else {
                    some.join(", ")
                }
            ))
        })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChartSpec {
        ChartSpec {
            repo: crate::config::check_repo("https://charts.example.com").unwrap(),
            name: "web".into(),
            version: "^1".parse().unwrap(),
            credentials: None,
        }
    }

    #[test]
    fn a_record_keeps_the_current_and_previous_chart_and_the_sweep_the_rest() {
        let state = tempfile::tempdir().unwrap();
        let charts = Charts::new(state.path(), BTreeMap::new(), &Default::default());
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        let digests: Vec<String> = ["a", "b", "c"].iter().map(|c| c.repeat(64)).collect();
        // Unpacked a moment ago and not recorded yet: never swept.
        let fresh = charts.cache_dir(&"d".repeat(64));
        std::fs::create_dir_all(&fresh).unwrap();
        for (i, d) in digests.iter().enumerate() {
            // Unpacked just now, recorded, then an hour passes.
            let dir = charts.cache_dir(d);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("Chart.yaml"), "name: web\n").unwrap();
            let checkout = Checkout {
                root: charts.cache_dir(d),
                revision: format!("1.{i}.0@sha256:{d}"),
                signer: None,
            };
            charts.record(&spec(), &checkout).unwrap();
            assert_eq!(charts.last_good(&spec()), Some(checkout));
            std::fs::File::open(&dir)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert!(
            !charts.cache_dir(&digests[0]).exists(),
            "neither current nor previous"
        );
        assert!(charts.cache_dir(&digests[1]).exists(), "the previous");
        assert!(charts.cache_dir(&digests[2]).exists(), "the current");
        assert!(fresh.exists());
        // Other credentials: another record, not this one's last good chart.
        let other = ChartSpec {
            credentials: Some("team".into()),
            ..spec()
        };
        assert_eq!(charts.last_good(&other), None);
    }
}
