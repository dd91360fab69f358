//! How a Git source is described: `{url, ref, path, credentials}` or `{dir, path}`. The agent
//! config uses it for the fleet; the fleet's tenant files and tenant catalogs use it for their
//! repos, so it is decoded (and its errors worded) in one place.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use super::Credential;
use crate::yaml::{Fields, Node, Report, join};

/// A source as written in a file, validated but not fetched.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpec {
    pub location: SourceLocation,
    /// Which commit to use; only for URL sources.
    pub reference: GitRef,
    /// A subfolder of the tree; relative, without `..`.
    pub path: Option<String>,
    /// The name of an entry of the agent config's `credentials`.
    pub credentials: Option<String>,
    /// Which signatures its revisions must carry (URL sources only).
    pub verify: Option<super::Verify>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceLocation {
    /// A Git URL: `file://`, `git://`, `ssh://`, `https://`, `http://`, scp-like `user@host:path`,
    /// or an absolute path to a repository.
    Url(String),
    /// A local directory used as it is (pre-synced checkouts, development); resolved to absolute.
    Dir(PathBuf),
}

/// Which commit of a Git source to use.
#[derive(Clone, Debug, PartialEq)]
pub enum GitRef {
    /// No `ref` given: the remote's default branch (its `HEAD`).
    DefaultBranch,
    Branch(String),
    Tag(String),
    /// The highest tag matching the range; pre-releases only if the range names one.
    Semver(crate::semver_range::Range),
    /// A full 40-hex commit SHA, optionally with the branch to fetch it from.
    Commit {
        sha: String,
        branch: Option<String>,
    },
}

/// The kinds a `ref` may name.
const REF_KINDS: &[&str] = &["branch", "tag", "semver", "commit"];

// === impl SourceLocation ===

impl fmt::Display for SourceLocation {
    /// The URL with any userinfo password removed, or the directory; safe for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceLocation::Url(url) => f.write_str(&redact(url)),
            SourceLocation::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

// === impl SourceSpec ===

impl fmt::Display for SourceSpec {
    /// `ssh://git@host/fleet.git (branch main)`, `/srv/fleet`, plus `path` when set; safe for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let SourceLocation::Url(_) = self.location {
            write!(f, " ({})", self.reference)?;
        }
        if let Some(path) = &self.path {
            write!(f, " path {path}")?;
        }
        Ok(())
    }
}

// === impl GitRef ===

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitRef::DefaultBranch => f.write_str("HEAD"),
            GitRef::Branch(b) => write!(f, "branch {b}"),
            GitRef::Tag(t) => write!(f, "tag {t}"),
            GitRef::Semver(r) => write!(f, "semver {r}"),
            GitRef::Commit {
                sha,
                branch: Some(b),
            } => write!(f, "commit {sha} on branch {b}"),
            GitRef::Commit { sha, branch: None } => write!(f, "commit {sha}"),
        }
    }
}

/// Decodes a source at `node`. `base` anchors relative `dir`s; `known_credentials` tells whether
/// a credentials name exists (and what it is for), so a typo is caught here.
pub fn decode<'c>(
    node: &Node,
    path: &str,
    base: &Path,
    known_credentials: &dyn Fn(&str) -> Option<&'c Credential>,
    report: &mut Report,
) -> Option<SourceSpec> {
    const ALLOWED: &[&str] = &["url", "dir", "ref", "path", "credentials", "verify"];
    let mut fields = Fields::new(node, path, report)?;
    let given = fields.present(&["url", "dir"]);
    let url = fields
        .get("url")
        .and_then(|n| Some((n, n.str(&fields.path("url"), report)?)));
    let dir = fields
        .get("dir")
        .and_then(|n| Some((n, n.str(&fields.path("dir"), report)?)));
    let reference = fields.get("ref");
    let sub = fields.get("path").and_then(|n| {
        let text = n.str(&fields.path("path"), report)?;
        check_subpath(text)
            .map_err(|why| report.error(n, &fields.path("path"), why))
            .ok()?;
        Some(text.to_string())
    });
    let credentials = fields.get("credentials").and_then(|n| {
        let name = n.str(&fields.path("credentials"), report)?;
        Some((n, name.to_string()))
    });
    let fields_verify = fields.get("verify");
    let verify = match fields_verify {
        None => Some(None),
        Some(n) if fields.get("dir").is_some() => {
            report.error(
                n,
                &join(path, "verify"),
                "a dir source has no commits to verify",
            );
            None
        }
        Some(n) => super::verify::decode_verify(n, &join(path, "verify"), report).map(Some),
    };
    fields.finish(ALLOWED, report);

    if given.len() != 1 {
        let what = if given.is_empty() { "neither" } else { "both" };
        report.error(
            node,
            path,
            format!("give exactly one of url or dir ({what} given)"),
        );
        return None;
    }
    let (location, reference) = if let Some((n, url)) = url {
        let kind = check_url(url)
            .map_err(|why| report.error(n, &join(path, "url"), why))
            .ok()?;
        let reference = match reference {
            Some(r) => decode_ref(r, &join(path, "ref"), report)?,
            None => GitRef::DefaultBranch,
        };
        if let Some((n, name)) = &credentials {
            match known_credentials(name) {
                None => {
                    report.error(
                        n,
                        &join(path, "credentials"),
                        format!("no credentials named {name:?} in the agent config"),
                    );
                }
                Some(have)
                    if have.kind() != kind.wants() && kind.wants() != CredentialKind::Any =>
                {
                    report.error(
                        n,
                        &join(path, "credentials"),
                        format!(
                            "{name:?} holds {} credentials, but {} needs {}",
                            have.kind(),
                            kind.name(),
                            kind.wants()
                        ),
                    );
                }
                Some(have) if kind != UrlKind::Local && !have.allows(url) => {
                    let hosts: Vec<String> = have.hosts.iter().map(|h| h.to_string()).collect();
                    report.error(
                        n,
                        &join(path, "credentials"),
                        format!(
                            "{name:?} may not be sent to {} (its hosts: {})",
                            redact(url),
                            hosts.join(", ")
                        ),
                    );
                }
                Some(_) if kind == UrlKind::Http && !loopback_http(url) => {
                    report.error(
                        n,
                        &join(path, "credentials"),
                        "credentials would cross the network in clear over http://; use https://",
                    );
                }
                Some(_) => {}
            }
        } else if kind == UrlKind::Ssh {
            report.error(
                n,
                &join(path, "credentials"),
                "an SSH URL needs credentials with ssh_key_file and known_hosts_file",
            );
        }
        if let (Some(Some(v)), Some(n)) = (&verify, fields_verify)
            && v.mode != super::VerifyMode::Head
            && !matches!(reference, GitRef::Tag(_) | GitRef::Semver(_))
        {
            report.error(
                n,
                &join(path, "verify.mode"),
                "a tag is verified only for a tag or semver ref",
            );
            return None;
        }
        (SourceLocation::Url(url.to_string()), reference)
    } else {
        let (n, dir) = dir?;
        for (key, present) in [
            ("ref", reference.is_some()),
            ("credentials", credentials.is_some()),
        ] {
            if present {
                report.error(
                    n,
                    &join(path, key),
                    format!("{key} applies to url sources only, not to dir"),
                );
            }
        }
        let dir = normalize(&base.join(dir));
        if !dir.is_dir() {
            report.error(
                n,
                &join(path, "dir"),
                format!("no such directory: {}", dir.display()),
            );
        }
        (SourceLocation::Dir(dir), GitRef::DefaultBranch)
    };
    Some(SourceSpec {
        location,
        reference,
        path: sub,
        credentials: credentials.map(|(_, name)| name),
        verify: verify?,
    })
}

/// What a named credential is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    Ssh,
    Https,
    /// Used only where any kind fits.
    Any,
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialKind::Ssh => "SSH",
            CredentialKind::Https => "HTTPS",
            CredentialKind::Any => "any",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UrlKind {
    Ssh,
    Https,
    Http,
    Local,
}

impl UrlKind {
    fn wants(self) -> CredentialKind {
        match self {
            UrlKind::Ssh => CredentialKind::Ssh,
            UrlKind::Https | UrlKind::Http => CredentialKind::Https,
            UrlKind::Local => CredentialKind::Any,
        }
    }
    fn name(self) -> &'static str {
        match self {
            UrlKind::Ssh => "an SSH URL",
            UrlKind::Https => "an https:// URL",
            UrlKind::Http => "an http:// URL",
            UrlKind::Local => "a local URL",
        }
    }
}

/// Accepts the URL forms Git accepts and refuses secrets written into the URL.
fn check_url(url: &str) -> Result<UrlKind, String> {
    if url.trim() != url || url.is_empty() {
        return Err(format!("{:?} is not a Git URL", redact(url)));
    }
    let secret_in_url = || {
        format!(
            "{}: credentials in the URL are not allowed; put them in a credentials file",
            redact(url)
        )
    };
    if let Some((scheme, rest)) = url.split_once("://") {
        let kind = match scheme {
            "file" => return Ok(UrlKind::Local),
            "git" => UrlKind::Local,
            "ssh" => UrlKind::Ssh,
            "https" => UrlKind::Https,
            "http" => UrlKind::Http,
            other => {
                return Err(format!(
                    "unsupported URL scheme {other:?}; use file://, git://, ssh://, https:// or http://"
                ));
            }
        };
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.rsplit_once('@') {
            // An SSH login name is fine; anything else before `@` can be a token or a password.
            Some((userinfo, host)) if kind == UrlKind::Ssh && !userinfo.contains(':') => host,
            Some(_) => return Err(secret_in_url()),
            None => authority,
        };
        if host.is_empty() {
            return Err(format!("{:?} has no host", redact(url)));
        }
        return Ok(kind);
    }
    if url.starts_with('/') {
        return Ok(UrlKind::Local);
    }
    // scp-like: [user@]host:path, where host has no slash before the colon; a `:` before the `@`
    // is a password.
    if url
        .split_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':') && !userinfo.contains('/'))
    {
        return Err(secret_in_url());
    }
    match url.split_once(':') {
        Some((host, path)) if !host.contains('/') && !host.is_empty() && !path.is_empty() => {
            Ok(UrlKind::Ssh)
        }
        _ => Err(format!(
            "{:?} is not a Git URL; use file://, git://, ssh://, https://, git@host:path or an absolute path",
            redact(url)
        )),
    }
}

/// The host of an `http://` URL is this machine (credentials may cross it in clear).
fn loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or_else(
            || host.rsplit_once(':').map_or(host, |(h, _)| h),
            |(h, _)| h,
        );
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Hides URL userinfo that could be a secret: `https://u:secret@h/x` and `https://TOKEN@h/x`
/// become `https://***@h/x`; an SSH login name (`ssh://git@h/x`, `git@h:x`) is kept.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // scp-like `user:password@host:path`
        return match url.split_once('@') {
            Some((userinfo, rest)) if userinfo.contains(':') => format!("***@{rest}"),
            _ => url.to_string(),
        };
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, _)) if scheme == "ssh" && !userinfo.contains(':') => url.to_string(),
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => url.to_string(),
    }
}

/// Resolves `.` and `..` lexically, so `/srv/fleet/tenants/../../teams/ai` reads `/srv/teams/ai`.
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A subfolder must stay inside the tree: relative, no `..`.
pub fn check_subpath(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("{path:?} must be relative to the repository root"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "{path:?} must not contain '..': it would leave the repository"
        ));
    }
    Ok(())
}

fn decode_ref(node: &Node, path: &str, report: &mut Report) -> Option<GitRef> {
    let mut fields = Fields::new(node, path, report)?;
    let given = fields.present(REF_KINDS);
    let branch = nonempty("branch", &mut fields, report);
    let tag = nonempty("tag", &mut fields, report);
    let range = nonempty("semver", &mut fields, report);
    let commit = nonempty("commit", &mut fields, report);
    fields.finish(REF_KINDS, report);

    let allowed_pair = given == ["branch", "commit"];
    if given.is_empty() || (given.len() > 1 && !allowed_pair) {
        report.error(
            node,
            path,
            format!(
                "give exactly one of branch, tag, semver or commit (commit may add the branch to fetch it from); found {}",
                if given.is_empty() { "none".to_string() } else { given.join(" and ") }
            ),
        );
        return None;
    }
    if let Some((n, sha)) = commit {
        if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            report.error(
                n,
                &format!("{path}.commit"),
                format!("{sha:?} is not a full 40-character commit SHA"),
            );
            return None;
        }
        return Some(GitRef::Commit {
            sha: sha.to_ascii_lowercase(),
            branch: branch.map(|(_, b)| b),
        });
    }
    if let Some((_, b)) = branch {
        return Some(GitRef::Branch(b));
    }
    if let Some((_, t)) = tag {
        return Some(GitRef::Tag(t));
    }
    let (n, range) = range?;
    match crate::semver_range::Range::parse(&range) {
        Ok(req) => Some(GitRef::Semver(req)),
        Err(error) => {
            report.error(
                n,
                &format!("{path}.semver"),
                format!("{range:?} is not a semver range: {error}"),
            );
            None
        }
    }
}

/// A string field that must not be empty, with its node for later errors.
fn nonempty<'a>(
    key: &str,
    fields: &mut Fields<'a>,
    report: &mut Report,
) -> Option<(&'a Node, String)> {
    let n = fields.get(key)?;
    let value = n.str(&fields.path(key), report)?;
    if value.is_empty() {
        report.error(n, &fields.path(key), "must not be empty");
        return None;
    }
    Some((n, value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_are_recognised() {
        assert_eq!(check_url("file:///srv/fleet.git"), Ok(UrlKind::Local));
        assert_eq!(check_url("/srv/fleet.git"), Ok(UrlKind::Local));
        assert_eq!(check_url("git://127.0.0.1:9418/fleet"), Ok(UrlKind::Local));
        assert_eq!(check_url("ssh://git@host/x.git"), Ok(UrlKind::Ssh));
        assert_eq!(check_url("git@github.com:org/x.git"), Ok(UrlKind::Ssh));
        assert_eq!(check_url("https://host/x.git"), Ok(UrlKind::Https));
        assert!(
            check_url("ftp://host/x")
                .unwrap_err()
                .contains("unsupported URL scheme")
        );
        assert!(check_url("relative/path").is_err());
        assert!(check_url("https:///x").unwrap_err().contains("no host"));
    }

    #[test]
    fn passwords_in_urls_are_refused_and_redacted() {
        let err = check_url("https://bob:hunter2@host/x.git").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("https://***@host/x.git"), "{err}");
        assert_eq!(redact("ssh://git@host/x"), "ssh://git@host/x");
        assert_eq!(redact("git@host:x.git"), "git@host:x.git");
        // Regression (review M5): a bare token as userinfo, and a password in the scp-like form.
        let err = check_url("https://ghp_abc123@github.com/x.git").unwrap_err();
        assert!(
            !err.contains("ghp_abc123") && err.contains("https://***@github.com/x.git"),
            "{err}"
        );
        let err = check_url("bob:hunter2@host:x.git").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!check_url("https://tok@/x").unwrap_err().contains("tok"));
        assert!(loopback_http("http://127.0.0.1:8080/x") && loopback_http("http://localhost/x"));
        assert!(loopback_http("http://[::1]:80/x") && !loopback_http("http://git.example.com/x"));
    }

    #[test]
    fn subpaths_stay_inside_the_tree() {
        assert!(check_subpath("apps/web").is_ok());
        assert!(check_subpath("apps/../../etc").unwrap_err().contains(".."));
        assert!(check_subpath("/etc").unwrap_err().contains("relative"));
    }
}
