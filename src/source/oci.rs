//! Charts from an OCI registry (the distribution API, as `helm push` stores them): list the
//! repository's tags, resolve the chosen version's manifest, pull its chart layer, verify both
//! digests. Registries on this machine (`127.0.0.1`, `localhost`, `::1`) are spoken to over
//! plain HTTP, as `helm --plain-http` would; every other one over HTTPS.
//!
//! Authentication: the credentials are offered with the first request when they are bound to
//! the registry; a registry that answers 401 with a `Bearer` challenge gets a token from its
//! token service (with the credentials only when they are bound to that service's host too).

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Checkout;
use super::chart::{Charts, Entry, Fail, Listing, MAX_ARCHIVE, hex, pick};
use crate::config::ChartSpec;

/// Helm's chart layer.
const CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The most tag pages one listing follows.
const MAX_PAGES: usize = 20;

/// `oci://host[:port]/path` → the registry's base URL and the repository path of `chart`.
pub(super) fn locate(repo: &str, chart: &str) -> (String, String) {
    let rest = repo.strip_prefix("oci://").unwrap_or(repo);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let plain = crate::config::ChartRepo::Oci(repo.to_string()).transport() == "http";
    let scheme = if plain { "http" } else { "https" };
    let repository = if path.is_empty() {
        chart.to_string()
    } else {
        format!("{path}/{chart}")
    };
    (format!("{scheme}://{authority}"), repository)
}

pub(super) async fn fetch(
    charts: &Charts,
    repo: &str,
    spec: &ChartSpec,
    min_age: Duration,
) -> Result<Checkout, Fail> {
    let (base, repository) = locate(repo, &spec.name);
    let secret = charts.secret(spec.credentials.as_deref())?;
    // One listing (and bearer token) per repository and credentials: what one tenant's
    // credentials read is not served to a unit with other credentials, or none.
    let lock = charts.listing_of(&format!(
        "{base}/{repository}|{}",
        spec.credentials.as_deref().unwrap_or_default()
    ));
    let mut listing = lock.lock().await;
    let mut session = Session {
        charts,
        base: &base,
        repository: &repository,
        secret: &secret,
    };
    if listing.fetched.is_none_or(|t| t.elapsed() >= min_age) {
        if let Some(fail) = listing.recent_failure() {
            return Err(fail);
        }
        if let Err(fail) = session.list_tags(&mut listing).await {
            return Err(listing.remember(fail));
        }
        listing.failed = None;
    }
    let versions = listing
        .entries
        .get("")
        .map(Vec::as_slice)
        .unwrap_or_default();
    let entry = pick(versions, spec)?.clone();
    // Helm stores `+` of a version as `_` in the tag (tags cannot hold `+`).
    let tag = entry.version.replace('+', "_");
    let (manifest, layer) = match listing.resolved.get(&tag) {
        Some(known) => known.clone(),
        None => {
            let found = session.manifest(&mut listing, &tag).await?;
            listing.resolved.insert(tag.clone(), found.clone());
            found
        }
    };
    let root = charts.cache_dir(&layer);
    if !root.join("Chart.yaml").is_file() {
        let url = format!("{base}/v2/{repository}/blobs/sha256:{layer}");
        let response = session.get(&mut listing, &url, None, MAX_ARCHIVE).await?;
        if response.status != 200 {
            return Err(Fail::status(&url, &response));
        }
        charts.store(&response.body, &layer, &url).await?;
    }
    Ok(Checkout {
        root,
        revision: format!("{}@sha256:{manifest}", entry.version),
        signer: None,
    })
}

/// One fetch's view of a registry: where, which repository, which credentials.
struct Session<'a> {
    charts: &'a Charts,
    base: &'a str,
    repository: &'a str,
    secret: &'a Option<(crate::config::Credential, String)>,
}

impl Session<'_> {
    /// A GET with what authorisation the registry takes: a bearer token once one was issued,
    /// else the credentials when bound to the URL's host. A 401 with a `Bearer` challenge
    /// fetches a token and tries once more.
    async fn get(
        &mut self,
        listing: &mut Listing,
        url: &str,
        accept: Option<&str>,
        max: usize,
    ) -> Result<super::http::Response, Fail> {
        let mut headers = Vec::new();
        if let Some(a) = accept {
            headers.push(("Accept", a.to_string()));
        }
        if url.ends_with("/tags/list")
            && let Some(etag) = &listing.etag
        {
            headers.push(("If-None-Match", etag.clone()));
        }
        for attempt in 0..2 {
            let bearer = listing
                .bearer
                .as_ref()
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(t, _)| format!("Bearer {t}"));
            let registry = self.base.to_string();
            let secret = self.secret;
            // A token goes to the registry only; a redirect to storage elsewhere gets nothing.
            let auth = move |to: &str| match &bearer {
                Some(b) => (to.starts_with(&registry) && to[registry.len()..].starts_with('/'))
                    .then(|| b.clone()),
                None => secret
                    .as_ref()
                    .filter(|(c, _)| c.allows(to))
                    .map(|(_, h)| h.clone()),
            };
            let response = self
                .charts
                .http
                .get(url, &headers, &auth, max)
                .await
                .map_err(|e| Fail::transient(format!("{url}: {e}")))?;
            if response.status != 401 || attempt == 1 {
                return Ok(response);
            }
            let Some(challenge) = response.header("www-authenticate").map(str::to_string) else {
                return Ok(response);
            };
            if !challenge.to_ascii_lowercase().starts_with("bearer") {
                return Err(Fail::permanent(format!(
                    "{url}: the registry wants credentials ({})",
                    if self.secret.is_some() {
                        "the ones given were refused, or are not bound to this host"
                    } else {
                        "none are given"
                    }
                )));
            }
            let token = self.token(&challenge).await?;
            listing.bearer = Some(token);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// A token from the registry's token service, for pulling this repository.
    async fn token(&self, challenge: &str) -> Result<(String, Instant), Fail> {
        let param = |name: &str| {
            let at = challenge.find(&format!("{name}=\""))? + name.len() + 2;
            let end = challenge[at..].find('"')?;
            Some(challenge[at..at + end].to_string())
        };
        let realm = param("realm")
            .filter(|r| r.starts_with("https://") || r.starts_with("http://"))
            .filter(|r| !r.contains(['?', '#', '%', ' ']))
            .ok_or_else(|| {
                Fail::permanent(format!(
                    "the registry's challenge names no usable token service: {challenge}"
                ))
            })?;
        let mut url = format!("{realm}?scope=repository:{}:pull", self.repository);
        if let Some(service) = param("service") {
            // Only a plain name: a service that carries its own parameters could widen the
            // token's scope.
            if !service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
            {
                return Err(Fail::permanent(format!(
                    "the registry's token service name {service:?} is not a plain name; refused"
                )));
            }
            url.push_str(&format!("&service={service}"));
        }
        let secret = self.secret;
        // Credentials go to the token service only when they are bound to the registry too
        // (the token is for it) and to the host of each request (a redirect gets nothing).
        let registry_ok = secret
            .as_ref()
            .is_some_and(|(c, _)| c.allows(&format!("{}/v2/", self.base)));
        let auth = |to: &str| {
            let to = to.split('?').next().unwrap_or(to);
            secret
                .as_ref()
                .filter(|(c, _)| registry_ok && c.allows(to))
                .map(|(_, h)| h.clone())
        };
        let response = self
            .charts
            .http
            .get(&url, &[], &auth, 1 << 20)
            .await
            .map_err(|e| Fail::transient(format!("{realm}: {e}")))?;
        if response.status != 200 {
            return Err(Fail::status(&realm, &response));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: Token = serde_json::from_slice(&response.body)
            .map_err(|e| Fail::permanent(format!("{realm}: not a token: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| Fail::permanent(format!("{realm}: the answer holds no token")))?;
        // Renewed a little early; registries give 60 s to hours (kept an hour at most).
        let lasts = t.expires_in.unwrap_or(60).clamp(20, 3600) - 10;
        Ok((token, crate::deadline::from_now(Duration::from_secs(lasts))))
    }

    async fn list_tags(&mut self, listing: &mut Listing) -> Result<(), Fail> {
        let first = format!("{}/v2/{}/tags/list", self.base, self.repository);
        let mut url = first.clone();
        let mut tags: Vec<String> = Vec::new();
        let mut etag = None;
        for page in 0..MAX_PAGES {
            let response = self.get(listing, &url, None, 8 << 20).await?;
            match response.status {
                304 if page == 0 && listing.fetched.is_some() => {
                    listing.fetched = Some(Instant::now());
                    return Ok(());
                }
                200 => {}
                404 => {
                    return Err(Fail::permanent(format!(
                        "the registry has no repository {}",
                        self.repository
                    )));
                }
                _ => return Err(Fail::status(&url, &response)),
            }
            if page == 0 {
                etag = response.header("etag").map(str::to_string);
            }
            #[derive(serde::Deserialize)]
            struct Tags {
                tags: Option<Vec<String>>,
            }
            let page_tags: Tags = serde_json::from_slice(&response.body)
                .map_err(|e| Fail::permanent(format!("{url}: not a tag list: {e}")))?;
            tags.extend(page_tags.tags.unwrap_or_default());
            // `Link: </v2/…/tags/list?last=x&n=y>; rel="next"`
            let next = response
                .header("link")
                .filter(|l| l.contains("rel=\"next\""))
                .and_then(|l| Some(l.split_once('<')?.1.split_once('>')?.0.to_string()));
            match next {
                Some(n) => url = super::http::join_url(&first, &n),
                None => {
                    let entries = tags
                        .into_iter()
                        .map(|t| Entry {
                            version: t.replace('_', "+"),
                            urls: Vec::new(),
                            digest: None,
                        })
                        .collect();
                    listing.entries.insert(String::new(), entries);
                    listing.etag = etag;
                    listing.fetched = Some(Instant::now());
                    return Ok(());
                }
            }
        }
        Err(Fail::permanent(format!(
            "{first}: more than {MAX_PAGES} pages of tags"
        )))
    }

    /// The manifest digest of `tag` and the digest of its chart layer, both verified.
    async fn manifest(
        &mut self,
        listing: &mut Listing,
        tag: &str,
    ) -> Result<(String, String), Fail> {
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, self.repository);
        let response = self.get(listing, &url, Some(MANIFEST), 4 << 20).await?;
        if response.status != 200 {
            return Err(Fail::status(&url, &response));
        }
        let digest = hex(&Sha256::digest(&response.body));
        if let Some(said) = response.header("docker-content-digest")
            && said != format!("sha256:{digest}")
        {
            return Err(Fail::permanent(format!(
                "{url}: the manifest's sha256 is {digest}, not the {said} the registry gives; refused"
            )));
        }
        #[derive(serde::Deserialize)]
        struct Layer {
            #[serde(rename = "mediaType")]
            media_type: String,
            digest: String,
        }
        #[derive(serde::Deserialize)]
        struct Manifest {
            #[serde(default)]
            layers: Vec<Layer>,
        }
        let manifest: Manifest = serde_json::from_slice(&response.body)
            .map_err(|e| Fail::permanent(format!("{url}: not an OCI manifest: {e}")))?;
        let layer = manifest
            .layers
            .iter()
            .find(|l| l.media_type == CHART_LAYER)
            .ok_or_else(|| {
                Fail::permanent(format!(
                    "{url}: the manifest has no Helm chart layer ({CHART_LAYER}); is this a chart?"
                ))
            })?;
        let layer = layer
            .digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                Fail::permanent(format!("{url}: the chart layer's digest is not a sha256"))
            })?
            .to_ascii_lowercase();
        Ok((digest, layer))
    }
}

#[cfg(test)]
mod tests {
    use super::locate;

    #[test]
    fn registries_are_located() {
        assert_eq!(
            locate("oci://ghcr.io/stefanprodan/charts", "podinfo"),
            (
                "https://ghcr.io".into(),
                "stefanprodan/charts/podinfo".into()
            )
        );
        assert_eq!(
            locate("oci://127.0.0.1:5000", "web"),
            ("http://127.0.0.1:5000".into(), "web".into())
        );
        assert_eq!(
            locate("oci://localhost:5000/a", "web"),
            ("http://localhost:5000".into(), "a/web".into())
        );
        assert_eq!(
            locate("oci://[::1]:5000/a", "web"),
            ("http://[::1]:5000".into(), "a/web".into())
        );
        assert_eq!(
            locate("oci://localhost.evil.example/a", "web").0,
            "https://localhost.evil.example"
        );
    }
}
