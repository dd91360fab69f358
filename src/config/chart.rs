//! How a chart source is described: `chart: { repo, name, version, credentials }`, where `repo`
//! is a Helm repository (`https://…`, an `index.yaml` below it) or an OCI registry
//! (`oci://host/path`). Tenant catalogs and the fleet's infra layers both use it.

use std::fmt;

use super::Credential;
use crate::semver_range::Range;
use crate::yaml::{Fields, Node, Report, join};

/// A chart as written in a file, validated but not fetched.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartSpec {
    pub repo: ChartRepo,
    pub name: String,
    /// An exact version or a range; the highest match wins, pre-releases only when the range
    /// names one. Absent: the highest release.
    pub version: Range,
    /// The name of an entry of the agent config's `credentials`.
    pub credentials: Option<String>,
}

/// Where a chart is served from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChartRepo {
    /// A Helm repository: `https://…` (or `http://` on this machine), without a trailing `/`.
    Http(String),
    /// An OCI registry: `oci://host[:port]/path`, without a trailing `/`.
    Oci(String),
}

impl ChartRepo {
    /// The repository's URL as written (no userinfo is ever accepted in it).
    pub fn url(&self) -> &str {
        match self {
            ChartRepo::Http(u) | ChartRepo::Oci(u) => u,
        }
    }

    /// The URL scheme as written.
    pub fn scheme(&self) -> &str {
        self.url().split_once("://").map_or("", |(s, _)| s)
    }

    /// How it is spoken to, as a fleet's `limits.schemes` names it: `https`, `http`, or `oci`
    /// (over HTTPS); a registry on this machine (`127.0.0.1`, `localhost`, `::1`) is spoken to
    /// over plain HTTP, as `helm --plain-http` would, and counts as `http`.
    pub fn transport(&self) -> &str {
        match self {
            ChartRepo::Http(_) => self.scheme(),
            ChartRepo::Oci(url) => {
                let rest = url.strip_prefix("oci://").unwrap_or(url);
                let authority = rest.split('/').next().unwrap_or_default();
                let host = match authority.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or_default(),
                    None => authority.split(':').next().unwrap_or_default(),
                };
                if matches!(host, "127.0.0.1" | "localhost" | "::1") {
                    "http"
                } else {
                    "oci"
                }
            }
        }
    }
}

impl fmt::Display for ChartRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url())
    }
}

impl ChartSpec {
    /// How the chart is shown in logs and errors: `<repo> <name> <version>`.
    pub fn shown(&self) -> String {
        format!("chart {} from {} ({})", self.name, self.repo, self.version)
    }
}

/// Checks a chart repository URL: `https://`, `oci://`, or `http://` to this machine.
pub fn check_repo(url: &str) -> Result<ChartRepo, String> {
    let url = url.trim_end_matches('/');
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a chart repository URL; use https://host/path or oci://host/path"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    if authority.contains('@') {
        return Err(
            "a chart repository URL must not carry a user or password; use credentials".into(),
        );
    }
    if url.contains(['?', '#', '%', ' ']) {
        return Err(format!(
            "{url:?}: a chart repository URL has no query, fragment, escapes or spaces"
        ));
    }
    if rest.split('/').any(|seg| seg == "..") {
        return Err(format!("{url:?}: '..' is not allowed in the path"));
    }
    match scheme {
        // http:// is refused for tenants by their `limits.schemes`, as for Git.
        "https" | "http" => Ok(ChartRepo::Http(url.to_string())),
        "oci" => Ok(ChartRepo::Oci(url.to_string())),
        other => Err(format!(
            "unsupported chart repository scheme {other:?}; use https:// (a Helm repository) or oci:// (an OCI registry)"
        )),
    }
}

/// Whether `name` is a chart name: letters, digits, `-`, `_` and `.`, not starting with `.`
/// (so it is one path segment, never `..`).
pub fn is_chart_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 250
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// Decodes `chart: { repo, name, version, credentials }` at `node`.
pub fn decode_chart<'c>(
    node: &Node,
    path: &str,
    known_credentials: &dyn Fn(&str) -> Option<&'c Credential>,
    report: &mut Report,
) -> Option<ChartSpec> {
    const ALLOWED: &[&str] = &["repo", "name", "version", "credentials"];
    let mut f = Fields::new(node, path, report)?;
    let repo = f.require("repo", node, report).and_then(|n| {
        let text = n.str(&join(path, "repo"), report)?;
        check_repo(text)
            .map_err(|why| report.error(n, &join(path, "repo"), why))
            .ok()
    });
    let name = f.require("name", node, report).and_then(|n| {
        let text = n.str(&join(path, "name"), report)?;
        if !is_chart_name(text) {
            report.error(
                n,
                &join(path, "name"),
                format!("{text:?} is not a chart name (letters, digits, '-', '_' and '.')"),
            );
            return None;
        }
        Some(text.to_string())
    });
    let version = match f.get("version") {
        None => Some(Range::parse("*").expect("'*' is a range")),
        Some(n) => {
            let text = n.scalar(&join(path, "version"), report).unwrap_or_default();
            match Range::parse(&text) {
                Ok(range) => Some(range),
                Err(e) => {
                    report.error(
                        n,
                        &join(path, "version"),
                        format!("{text:?} is not a version or semver range: {e}"),
                    );
                    None
                }
            }
        }
    };
    let credentials = match f.get("credentials") {
        None => Some(None),
        Some(n) => {
            let name = n.str(&join(path, "credentials"), report)?;
            match known_credentials(name) {
                Some(c)
                    if c.ssh_key_file.is_some()
                        && c.password_file.is_none()
                        && c.token_file.is_none() =>
                {
                    report.error(
                        n,
                        &join(path, "credentials"),
                        format!("credentials {name:?} hold an SSH key; a chart repository needs a username and password_file, or a token_file"),
                    );
                    None
                }
                Some(_) => Some(Some(name.to_string())),
                None => {
                    report.error(
                        n,
                        &join(path, "credentials"),
                        format!("no credentials named {name:?} in the agent config"),
                    );
                    None
                }
            }
        }
    };
    f.finish(ALLOWED, report);
    Some(ChartSpec {
        repo: repo?,
        name: name?,
        version: version?,
        credentials: credentials?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls_are_checked() {
        assert_eq!(
            check_repo("https://charts.example.com/"),
            Ok(ChartRepo::Http("https://charts.example.com".into()))
        );
        assert_eq!(
            check_repo("oci://ghcr.io/stefanprodan/charts"),
            Ok(ChartRepo::Oci("oci://ghcr.io/stefanprodan/charts".into()))
        );
        for bad in [
            "ftp://x/y",
            "https://user:pw@x/",
            "charts.example.com",
            "https://x/a/../b",
            "https://x/?a",
            "oci://",
        ] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }
}
