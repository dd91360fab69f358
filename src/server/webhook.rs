//! Webhook receivers: is a request authentic, and what does it say was pushed. Pure: headers and
//! body in, a verdict out; the server does the I/O.
//!
//! A payload is an untrusted trigger, never a data source: it only names a repository (and a
//! ref) to fetch now. What gets applied is always what flotilla itself fetches.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The largest body read; a larger one is refused (413) before it is verified.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// The generic receiver's signature header when the config names none.
pub(crate) const GENERIC_HEADER: &str = "X-Signature";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Provider {
    Github,
    Gitlab,
    Gitea,
    Bitbucket,
    Generic,
}

/// What an authentic request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A push: every URL the payload gives for the repository, and the refs it moved
    /// (`refs/heads/main`, `refs/tags/v1`; none: not said, any ref may have moved).
    Push {
        urls: Vec<String>,
        references: Vec<String>,
    },
    /// Authentic, but not a push (a ping, an issue comment): acknowledged, nothing done.
    Ignored(String),
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// 401: no signature or token, or a wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// 400: authentic but unreadable.
    #[error("{0}")]
    BadRequest(String),
}

impl Provider {
    pub(crate) const ALL: [Provider; 5] = [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Bitbucket,
        Provider::Generic,
    ];

    /// `github` from `/hooks/github`.
    pub(crate) fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
            Provider::Generic => "generic",
        }
    }
}

/// The header that carries a provider's signature or token.
pub(crate) fn auth_header(provider: Provider, generic_header: Option<&str>) -> String {
    match provider {
        Provider::Github => "X-Hub-Signature-256".into(),
        Provider::Gitea => "X-Gitea-Signature".into(),
        Provider::Bitbucket => "X-Hub-Signature".into(),
        Provider::Generic => generic_header.unwrap_or(GENERIC_HEADER).into(),
        Provider::Gitlab => "X-Gitlab-Token".into(),
    }
}

/// The repository URLs a push body names, read before it is authenticated, only to choose which
/// secret must have signed it; empty when the body is not a push payload.
pub(crate) fn claimed_urls(provider: Provider, body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .map(|p| read_push(provider, &p).0)
        .unwrap_or_default()
}

/// Checks a request's authentication in constant time, then reads what it says.
///
/// `header` looks a request header up by name (case-insensitively); `secret` is the content of
/// the configured secret file (surrounding whitespace ignored); `generic_header` names the
/// generic receiver's signature header.
pub(crate) fn check(
    provider: Provider,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    secret: &[u8],
    generic_header: Option<&str>,
) -> Result<Verdict, Refusal> {
    let secret = secret.trim_ascii();
    if secret.is_empty() {
        return Err(Refusal::Unauthorized(
            "the receiver's secret file is empty; every request is refused".into(),
        ));
    }
    match provider {
        Provider::Github => {
            verify_hmac(header, "X-Hub-Signature-256", Some("sha256="), body, secret)?
        }
        Provider::Gitea => verify_hmac(header, "X-Gitea-Signature", None, body, secret)?,
        Provider::Bitbucket => {
            verify_hmac(header, "X-Hub-Signature", Some("sha256="), body, secret)?
        }
        Provider::Generic => verify_hmac(
            header,
            generic_header.unwrap_or(GENERIC_HEADER),
            Some("sha256="),
            body,
            secret,
        )?,
        Provider::Gitlab => {
            let given = header("X-Gitlab-Token")
                .ok_or_else(|| Refusal::Unauthorized("no X-Gitlab-Token header".into()))?;
            if !same_secret(given.trim().as_bytes(), secret) {
                return Err(Refusal::Unauthorized(
                    "X-Gitlab-Token does not match".into(),
                ));
            }
        }
    }
    let event = match provider {
        Provider::Github => header("X-GitHub-Event"),
        Provider::Gitea => header("X-Gitea-Event").or_else(|| header("X-GitHub-Event")),
        Provider::Gitlab => header("X-Gitlab-Event"),
        Provider::Bitbucket => header("X-Event-Key"),
        Provider::Generic => Some("push".into()),
    }
    .unwrap_or_default();
    let is_push = match provider {
        Provider::Github | Provider::Gitea | Provider::Generic => event == "push",
        Provider::Gitlab => event == "Push Hook" || event == "Tag Push Hook",
        Provider::Bitbucket => event == "repo:push" || event == "repo:refs_changed",
    };
    if !is_push {
        let shown = if event.is_empty() {
            "no event type"
        } else {
            event.as_str()
        };
        return Ok(Verdict::Ignored(format!("{shown}: not a push")));
    }
    let payload: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::BadRequest(format!("the body is not JSON: {e}")))?;
    let (urls, references) = read_push(provider, &payload);
    if urls.is_empty() {
        return Err(Refusal::BadRequest(
            "the push names no repository URL".into(),
        ));
    }
    Ok(Verdict::Push { urls, references })
}

/// Checks `header: [prefix]<hex HMAC-SHA256 of body>`; the comparison is constant-time.
fn verify_hmac(
    header: &dyn Fn(&str) -> Option<String>,
    name: &str,
    prefix: Option<&str>,
    body: &[u8],
    secret: &[u8],
) -> Result<(), Refusal> {
    let value = header(name).ok_or_else(|| Refusal::Unauthorized(format!("no {name} header")))?;
    let value = value.trim();
    let hex = match prefix {
        Some(p) => value
            .strip_prefix(p)
            .ok_or_else(|| Refusal::Unauthorized(format!("{name} is not of the form {p}<hex>")))?,
        None => value.strip_prefix("sha256=").unwrap_or(value),
    };
    let given = decode_hex(hex)
        .ok_or_else(|| Refusal::Unauthorized(format!("{name} is not hexadecimal")))?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| Refusal::Unauthorized("unusable secret".into()))?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| Refusal::Unauthorized(format!("{name} does not match the body")))
}

/// Compares two secrets in constant time (their digests, so their lengths do not leak either).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The repository URLs and the refs of a push payload.
fn read_push(provider: Provider, p: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let mut urls = Vec::new();
    let mut references: Vec<String> = s(&p["ref"]).into_iter().collect();
    match provider {
        Provider::Github | Provider::Gitea => {
            for k in ["clone_url", "ssh_url", "git_url", "html_url", "url"] {
                urls.extend(s(&p["repository"][k]));
            }
        }
        Provider::Gitlab => {
            for k in [
                "git_http_url",
                "git_ssh_url",
                "web_url",
                "http_url",
                "ssh_url",
            ] {
                urls.extend(s(&p["project"][k]));
            }
            for k in ["git_http_url", "git_ssh_url", "homepage", "url"] {
                urls.extend(s(&p["repository"][k]));
            }
        }
        Provider::Bitbucket => {
            let links = &p["repository"]["links"];
            urls.extend(s(&links["html"]["href"]));
            for list in ["clone", "self"] {
                if let Some(items) = links[list].as_array() {
                    urls.extend(items.iter().filter_map(|i| s(&i["href"])));
                }
            }
            // Every ref of the push: Server `changes[].ref.id`; Cloud `push.changes[].new`
            // ({type: branch|tag, name}).
            let server = p["changes"].as_array().into_iter().flatten();
            references.extend(server.filter_map(|c| s(&c["ref"]["id"])));
            let cloud = p["push"]["changes"].as_array().into_iter().flatten();
            references.extend(cloud.filter_map(|c| {
                let new = &c["new"];
                let name = new["name"].as_str()?;
                Some(match new["type"].as_str() {
                    Some("tag") => format!("refs/tags/{name}"),
                    _ => format!("refs/heads/{name}"),
                })
            }));
        }
        Provider::Generic => {
            urls.extend(s(&p["url"]));
            urls.extend(s(&p["repository"]).or_else(|| s(&p["repository"]["url"])));
        }
    }
    urls.retain(|u| !u.is_empty());
    urls.dedup();
    (urls, references)
}

pub(crate) use crate::agent::normalize_url;

/// Whether a push of `pushed` (`refs/heads/x`, `refs/tags/y`, or unknown) can move what a
/// source's ref names.
pub(crate) fn any_ref_matches(reference: &crate::config::GitRef, pushed: &[String]) -> bool {
    pushed.is_empty() || pushed.iter().any(|p| ref_matches(reference, Some(p)))
}

/// One pushed ref against a source's ref.
pub(crate) fn ref_matches(reference: &crate::config::GitRef, pushed: Option<&str>) -> bool {
    use crate::config::GitRef;
    let Some(pushed) = pushed else { return true };
    let branch = pushed.strip_prefix("refs/heads/");
    let tag = pushed.strip_prefix("refs/tags/");
    match reference {
        GitRef::DefaultBranch => branch.is_some(),
        GitRef::Branch(b) => branch == Some(b.as_str()),
        GitRef::Tag(t) => tag == Some(t.as_str()),
        GitRef::Semver(_) => tag.is_some(),
        // A commit never moves.
        GitRef::Commit { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name.to_lowercase())
                .map(|(_, v)| v.clone())
        }
    }

    const BODY: &[u8] =
        br#"{"ref":"refs/heads/main","repository":{"clone_url":"https://git.example.com/org/app.git"}}"#;

    #[test]
    fn github_signature_valid_invalid_missing_and_replayed() {
        let ok = headers(&[
            ("X-GitHub-Event", "push".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", sign("s3cret", BODY)),
            ),
        ]);
        assert_eq!(
            check(Provider::Github, &ok, BODY, b"s3cret\n", None),
            Ok(Verdict::Push {
                urls: vec!["https://git.example.com/org/app.git".into()],
                references: vec!["refs/heads/main".into()]
            })
        );
        let wrong_key = headers(&[
            ("X-GitHub-Event", "push".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", sign("other", BODY)),
            ),
        ]);
        assert!(matches!(
            check(Provider::Github, &wrong_key, BODY, b"s3cret", None),
            Err(Refusal::Unauthorized(_))
        ));
        let missing = headers(&[("X-GitHub-Event", "push".into())]);
        assert!(matches!(
            check(Provider::Github, &missing, BODY, b"s3cret", None),
            Err(Refusal::Unauthorized(m)) if m.contains("X-Hub-Signature-256")
        ));
        // A body replayed with the signature of another (genuine) body.
        let other = br#"{"ref":"refs/heads/dev"}"#;
        let replayed = headers(&[
            ("X-GitHub-Event", "push".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", sign("s3cret", other)),
            ),
        ]);
        assert!(matches!(
            check(Provider::Github, &replayed, BODY, b"s3cret", None),
            Err(Refusal::Unauthorized(_))
        ));
        // SHA-1 signatures are not accepted as a fallback.
        let sha1 = headers(&[
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature", format!("sha1={}", sign("s3cret", BODY))),
        ]);
        assert!(check(Provider::Github, &sha1, BODY, b"s3cret", None).is_err());
    }

    #[test]
    fn gitlab_token_gitea_bitbucket_and_generic() {
        let gl = br#"{"ref":"refs/heads/main","project":{"git_http_url":"https://gl.example.com/a/b.git"}}"#;
        let good = headers(&[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", "tok".into()),
        ]);
        assert!(matches!(
            check(Provider::Gitlab, &good, gl, b"tok", None),
            Ok(Verdict::Push { .. })
        ));
        let bad = headers(&[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", "tok2".into()),
        ]);
        assert!(check(Provider::Gitlab, &bad, gl, b"tok", None).is_err());

        let gitea = headers(&[
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Signature", sign("k", BODY)),
        ]);
        assert!(matches!(
            check(Provider::Gitea, &gitea, BODY, b"k", None),
            Ok(Verdict::Push { .. })
        ));

        let bb = br#"{"repository":{"links":{"html":{"href":"https://bitbucket.org/ws/app"}}},"push":{"changes":[{"new":{"type":"branch","name":"main"}}]}}"#;
        let sig = headers(&[
            ("X-Event-Key", "repo:push".into()),
            ("X-Hub-Signature", format!("sha256={}", sign("k", bb))),
        ]);
        assert_eq!(
            check(Provider::Bitbucket, &sig, bb, b"k", None),
            Ok(Verdict::Push {
                urls: vec!["https://bitbucket.org/ws/app".into()],
                references: vec!["refs/heads/main".into()]
            })
        );

        let generic = br#"{"url":"file:///srv/git/app.git"}"#;
        let sig = headers(&[(
            "X-Flotilla-Signature",
            format!("sha256={}", sign("k", generic)),
        )]);
        assert!(matches!(
            check(
                Provider::Generic,
                &sig,
                generic,
                b"k",
                Some("X-Flotilla-Signature")
            ),
            Ok(Verdict::Push { .. })
        ));
        assert!(check(Provider::Generic, &sig, generic, b"k", None).is_err());
    }

    #[test]
    fn a_ping_is_acknowledged_and_an_empty_secret_refuses_everything() {
        let ping = headers(&[
            ("X-GitHub-Event", "ping".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", sign("k", b"{}")),
            ),
        ]);
        assert!(matches!(
            check(Provider::Github, &ping, b"{}", b"k", None),
            Ok(Verdict::Ignored(_))
        ));
        let empty = headers(&[("X-Hub-Signature-256", format!("sha256={}", sign("", b"{}")))]);
        assert!(check(Provider::Github, &empty, b"{}", b" \n", None).is_err());
    }

    #[test]
    fn urls_of_one_repository_normalize_alike() {
        let want = "github.com/org/app";
        for url in [
            "git@github.com:org/app.git",
            "ssh://git@github.com/org/app",
            "ssh://git@GitHub.com:22/org/app.git",
            "https://github.com/org/app.git",
            "https://user:pw@github.com/org/app/",
            "git://github.com/org/app.git",
        ] {
            assert_eq!(normalize_url(url), want, "{url}");
        }
        assert_eq!(normalize_url("file:///tmp/x/Repo.git"), "/tmp/x/Repo");
        assert_eq!(normalize_url("/tmp/x/Repo.git/"), "/tmp/x/Repo");
    }

    #[test]
    fn a_bitbucket_push_of_several_refs_names_them_all() {
        let bb = br#"{"repository":{"links":{"clone":[{"href":"ssh://git@bb.example.com/p/app.git"}]}},"changes":[{"ref":{"id":"refs/heads/dev"}},{"ref":{"id":"refs/heads/main"}}]}"#;
        let sig = headers(&[
            ("X-Event-Key", "repo:refs_changed".into()),
            ("X-Hub-Signature", format!("sha256={}", sign("k", bb))),
        ]);
        let Ok(Verdict::Push { references, .. }) = check(Provider::Bitbucket, &sig, bb, b"k", None)
        else {
            panic!("a push");
        };
        assert!(any_ref_matches(
            &crate::config::GitRef::Branch("main".into()),
            &references
        ));
    }

    #[test]
    fn pushed_refs_against_source_refs() {
        use crate::config::GitRef;
        let main = GitRef::Branch("main".into());
        assert!(ref_matches(&main, Some("refs/heads/main")));
        assert!(!ref_matches(&main, Some("refs/heads/dev")));
        assert!(!ref_matches(&main, Some("refs/tags/v1")));
        assert!(ref_matches(&main, None));
        assert!(ref_matches(
            &GitRef::DefaultBranch,
            Some("refs/heads/trunk")
        ));
        assert!(ref_matches(&GitRef::Tag("v1".into()), Some("refs/tags/v1")));
        assert!(!ref_matches(
            &GitRef::Tag("v1".into()),
            Some("refs/tags/v2")
        ));
    }
}
