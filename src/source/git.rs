//! Blocking git2 work for one URL: the bare mirror, listing the remote's refs, resolving a ref
//! and fetching (checkouts are written by `checkout.rs`). Runs on blocking threads under the
//! async facade in `mod.rs`; git2 types never leave the `source` module.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::time::Instant;

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorClass, ErrorCode,
    FetchOptions, Oid, RemoteCallbacks, Repository,
};

use super::known_hosts::{self, Refusal};
use crate::config::{Credential, GitRef};

/// How an operation failed; the message never holds a secret.
#[derive(Debug)]
pub(super) enum Failure {
    /// The network or the server: worth a retry.
    Transient(String),
    /// Will fail again until something changes (a ref, a key, a setting).
    Permanent(String),
    /// The local mirror is damaged: worth one retry from a fresh mirror.
    Local(String),
}

/// Everything an operation needs to reach the remote.
pub(super) struct Access<'a> {
    pub url: &'a str,
    pub credential: Option<&'a Credential>,
    /// Past this instant a transfer is aborted.
    pub deadline: Instant,
}

/// What to fetch for a ref and which commit it names.
struct Target {
    /// The commit (or, before fetching, possibly an annotated tag object).
    oid: Oid,
    /// Refspec sources to fetch (`refs/heads/main`, `HEAD`, ...).
    fetch: Vec<String>,
    /// Whether a depth-1 fetch is enough.
    shallow: bool,
    /// The annotated tag object a tag ref names, and the tag's name (for a tag's signature).
    tag: Option<(Oid, String)>,
}

/// Brings the mirror at `mirror` up to date for `reference` and returns the commit it names:
/// a commit pin already present costs nothing; otherwise one ref listing, and a fetch only when
/// the wanted commit is not in the mirror yet.
pub(super) fn resolve_and_fetch(
    mirror: &Path,
    access: &Access<'_>,
    reference: &GitRef,
) -> Result<(Oid, Option<(Oid, String)>), Failure> {
    let repo = open_mirror(mirror)?;
    if let GitRef::Commit { sha, .. } = reference {
        let oid = Oid::from_str(sha).map_err(|e| Failure::Permanent(e.message().to_string()))?;
        if repo.find_commit(oid).is_ok() {
            return Ok((oid, None));
        }
    }
    let heads = list_remote(&repo, access)?;
    let target = resolve(&heads, reference)?;
    let present = repo
        .find_object(target.oid, None)
        .ok()
        .and_then(|o| o.peel_to_commit().ok());
    if let Some(commit) = present
        && target
            .tag
            .as_ref()
            .is_none_or(|(t, _)| repo.find_tag(*t).is_ok())
    {
        return Ok((commit.id(), target.tag));
    }
    fetch(&repo, access, &target)?;
    let object = repo
        .find_object(target.oid, None)
        .map_err(|_| match reference {
            GitRef::Commit { sha, .. } => {
                Failure::Permanent(format!("commit {sha} is not on the remote"))
            }
            _ => Failure::Local(format!(
                "the fetched commit {} is missing from the mirror",
                target.oid
            )),
        })?;
    let commit = object
        .peel_to_commit()
        .map_err(|e| Failure::Permanent(format!("{reference} is not a commit: {}", e.message())))?;
    Ok((commit.id(), target.tag))
}

/// Opens the bare mirror, or makes a new one.
fn open_mirror(path: &Path) -> Result<Repository, Failure> {
    if path.exists() {
        return Repository::open_bare(path)
            .map_err(|e| Failure::Local(format!("cannot open the mirror: {}", e.message())));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::Permanent(format!("cannot create {}: {e}", parent.display())))?;
    }
    Repository::init_bare(path)
        .map_err(|e| Failure::Permanent(format!("cannot create the mirror: {}", e.message())))
}

/// One connection that lists the remote's refs (`git ls-remote`).
fn list_remote(repo: &Repository, access: &Access<'_>) -> Result<Vec<(String, Oid)>, Failure> {
    let mut remote = repo
        .remote_anonymous(access.url)
        .map_err(|e| Failure::Permanent(e.message().to_string()))?;
    let state = CallbackState::default();
    let conn = remote
        .connect_auth(Direction::Fetch, Some(callbacks(access, &state)), None)
        .map_err(|e| state.failure(e))?;
    let heads = conn.list().map_err(|e| state.failure(e))?;
    Ok(heads
        .iter()
        .map(|h| (h.name().to_string(), h.oid()))
        .collect())
}

/// Which commit `reference` names among the remote's refs, and what to fetch for it.
fn resolve(heads: &[(String, Oid)], reference: &GitRef) -> Result<Target, Failure> {
    let find = |name: &str| heads.iter().find(|(n, _)| n == name).map(|(_, oid)| *oid);
    // An annotated tag is advertised as the tag object and, peeled, as `name^{}`.
    let tag = |name: &str| {
        find(&format!("refs/tags/{name}^{{}}")).or_else(|| find(&format!("refs/tags/{name}")))
    };
    let annotated = |name: &str| {
        find(&format!("refs/tags/{name}^{{}}"))
            .and(find(&format!("refs/tags/{name}")))
            .map(|oid| (oid, name.to_string()))
    };
    match reference {
        GitRef::DefaultBranch => {
            let oid = find("HEAD").ok_or_else(|| {
                Failure::Permanent("the remote has no HEAD (an empty repository?)".into())
            })?;
            Ok(Target {
                oid,
                fetch: vec!["HEAD".into()],
                shallow: true,
                tag: None,
            })
        }
        GitRef::Branch(b) => {
            let oid = find(&format!("refs/heads/{b}")).ok_or_else(|| {
                Failure::Permanent(format!("branch {b} does not exist on the remote"))
            })?;
            Ok(Target {
                oid,
                fetch: vec![format!("refs/heads/{b}")],
                shallow: true,
                tag: None,
            })
        }
        GitRef::Tag(t) => {
            let oid = tag(t).ok_or_else(|| {
                Failure::Permanent(format!("tag {t} does not exist on the remote"))
            })?;
            Ok(Target {
                oid,
                fetch: vec![format!("refs/tags/{t}")],
                shallow: true,
                tag: annotated(t),
            })
        }
        GitRef::Semver(range) => {
            let mut tags: Vec<&str> = heads
                .iter()
                .filter_map(|(n, _)| n.strip_prefix("refs/tags/"))
                .filter(|n| !n.ends_with("^{}"))
                .collect();
            tags.sort();
            let best = range.best(tags.iter().map(|t| (*t, *t)));
            let Some(name) = best else {
                let shown: Vec<&str> = tags.iter().take(10).copied().collect();
                let more = if tags.len() > 10 { ", ..." } else { "" };
                return Err(Failure::Permanent(format!(
                    "no tag matches the semver range \"{range}\" (tags: {}{more})",
                    if shown.is_empty() {
                        "none".to_string()
                    } else {
                        shown.join(", ")
                    }
                )));
            };
            let oid = tag(name).expect("the tag was listed");
            Ok(Target {
                oid,
                fetch: vec![format!("refs/tags/{name}")],
                shallow: true,
                tag: annotated(name),
            })
        }
        GitRef::Commit { sha, branch } => {
            let oid =
                Oid::from_str(sha).map_err(|e| Failure::Permanent(e.message().to_string()))?;
            let fetch = match branch {
                Some(b) => {
                    if find(&format!("refs/heads/{b}")).is_none() {
                        return Err(Failure::Permanent(format!(
                            "branch {b} does not exist on the remote"
                        )));
                    }
                    vec![format!("refs/heads/{b}")]
                }
                None => vec!["refs/heads/*".into(), "refs/tags/*".into()],
            };
            Ok(Target {
                oid,
                fetch,
                shallow: false,
                tag: None,
            })
        }
    }
}

/// Fetches the target's refs into `refs/flotilla/...`, shallow where the ref allows.
fn fetch(repo: &Repository, access: &Access<'_>, target: &Target) -> Result<(), Failure> {
    let refspecs: Vec<String> = target
        .fetch
        .iter()
        .map(|src| {
            let dst = src.strip_prefix("refs/").unwrap_or(src);
            format!("+{src}:refs/flotilla/{dst}")
        })
        .collect();
    let attempt = |depth: i32| {
        let mut remote = repo
            .remote_anonymous(access.url)
            .map_err(|e| Failure::Permanent(e.message().to_string()))?;
        let state = CallbackState::default();
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks(access, &state))
            .download_tags(AutotagOption::None)
            .depth(depth);
        remote
            .fetch(&refspecs, Some(&mut options), None)
            .map_err(|e| state.failure(e))
    };
    // libgit2's local transport (file:// and paths) cannot fetch shallow, and needs not: reading
    // a local repository is cheap.
    let local = access.url.starts_with("file://") || access.url.starts_with('/');
    if !target.shallow || local {
        return attempt(0);
    }
    match attempt(1) {
        // A server or transport that refuses shallow fetches: fetch what the ref needs instead.
        Err(Failure::Permanent(m) | Failure::Local(m) | Failure::Transient(m))
            if m.contains("shallow") =>
        {
            attempt(0)
        }
        other => other,
    }
}

/// What the callbacks learned, so an error can say *why* (refused key, refused host).
#[derive(Default)]
struct CallbackState {
    auth_attempts: Cell<u32>,
    refusal: RefCell<Option<String>>,
    timed_out: Cell<bool>,
}

impl CallbackState {
    /// Our own reason when a callback refused, else libgit2's message, classified.
    fn failure(&self, e: git2::Error) -> Failure {
        if let Some(reason) = self.refusal.borrow_mut().take() {
            return Failure::Permanent(reason);
        }
        if self.timed_out.get() {
            return Failure::Transient("the transfer did not finish within the timeout".into());
        }
        classify(&e)
    }
}

fn callbacks<'a>(access: &'a Access<'a>, state: &'a CallbackState) -> RemoteCallbacks<'a> {
    let mut cbs = RemoteCallbacks::new();
    cbs.credentials(move |url, username_from_url, allowed| {
        let login = || {
            username_from_url
                .or(access.credential.and_then(|c| c.username.as_deref()))
                .unwrap_or("git")
        };
        // SSH without a user in the URL: libgit2 first asks only for the login name. That is not
        // an authentication attempt, so it is answered without counting.
        if allowed == CredentialType::USERNAME {
            return Cred::username(login());
        }
        let attempt = state.auth_attempts.get() + 1;
        state.auth_attempts.set(attempt);
        let refuse = |why: String| {
            *state.refusal.borrow_mut() = Some(why.clone());
            Err(git2::Error::from_str(&why))
        };
        let Some(c) = access.credential else {
            return refuse("the server asks for credentials and the source names none".into());
        };
        // The URL libgit2 is talking to now (after any redirect), not the one configured: a
        // secret goes only where its credential's hosts allow.
        if !c.allows(url) || !c.allows(access.url) {
            return refuse(format!(
                "{} asks for credentials that are not for it (not in their hosts); not sent",
                crate::config::redact(url)
            ));
        }
        if attempt > 1 {
            let what = match &c.ssh_key_file {
                Some(key) => format!("the server refused the SSH key {}", key.display()),
                None => "the server refused the HTTPS credentials".to_string(),
            };
            return refuse(format!("authentication failed: {what}"));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &c.ssh_key_file
        {
            let passphrase = match &c.passphrase_file {
                Some(f) => match read_secret(f) {
                    Ok(p) => Some(p),
                    Err(why) => return refuse(why),
                },
                None => None,
            };
            return Cred::ssh_key(login(), None, key, passphrase.as_deref());
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let secret =
                match c.token_file.as_ref().or(c.password_file.as_ref()) {
                    Some(f) => match read_secret(f) {
                        Ok(s) => s,
                        Err(why) => return refuse(why),
                    },
                    None => return refuse(
                        "the server asks for a user name and password; the credentials have none"
                            .into(),
                    ),
                };
            let user = c.username.as_deref().or(username_from_url).unwrap_or("git");
            return Cred::userpass_plaintext(user, &secret);
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(login());
        }
        refuse(format!(
            "the server asks for credentials of a kind flotilla does not hold ({allowed:?})"
        ))
    });
    cbs.certificate_check(move |cert, _host| {
        let Some(hostkey) = cert.as_hostkey() else {
            // TLS: libgit2 verifies the certificate against the system's CA store.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let refuse = |why: String| {
            *state.refusal.borrow_mut() = Some(why.clone());
            Err(git2::Error::from_str(&why))
        };
        let Some(key) = hostkey.hostkey() else {
            return refuse("the SSH server's host key could not be read".into());
        };
        let Some((host, port)) = ssh_host_port(access.url) else {
            return refuse("cannot tell the SSH host from the URL".into());
        };
        let Some(file) = access.credential.and_then(|c| c.known_hosts_file.as_ref()) else {
            return refuse("no known_hosts_file to verify the SSH host key against".into());
        };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return refuse(format!("cannot read the known_hosts file {}: {e}", file.display())),
        };
        let name = known_hosts::host_name(&host, port);
        match known_hosts::verify(&text, &name, key) {
            Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
            Err(Refusal::Unknown) => {
                refuse(format!("host key refused: {name} is not in the known_hosts file {}", file.display()))
            }
            Err(Refusal::Changed) => refuse(format!(
                "host key refused: the key {name} presented differs from the known_hosts file {} (changed host key, or a man in the middle)",
                file.display()
            )),
            Err(Refusal::Revoked) => refuse(format!("host key refused: {name} presented a key marked @revoked")),
        }
    });
    cbs.transfer_progress(move |_| {
        let on_time = Instant::now() < access.deadline;
        if !on_time {
            state.timed_out.set(true);
        }
        on_time
    });
    cbs
}

/// A secret from a file, without its trailing newline.
fn read_secret(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// The SSH host and port of an `ssh://` or scp-like URL.
pub(super) fn ssh_host_port(url: &str) -> Option<(String, u16)> {
    if let Some(rest) = url.strip_prefix("ssh://") {
        let authority = rest.split('/').next()?;
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = after
                .strip_prefix(':')
                .map_or(Some(22), |p| p.parse().ok())?;
            return Some((host.to_string(), port));
        }
        return match hostport.rsplit_once(':') {
            Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
            None => Some((hostport.to_string(), 22)),
        };
    }
    let (userhost, _) = url.split_once(':')?;
    Some((
        userhost
            .rsplit_once('@')
            .map_or(userhost, |(_, h)| h)
            .to_string(),
        22,
    ))
}

/// Sorts libgit2's errors: network trouble is transient, refusals permanent, a damaged mirror local.
fn classify(e: &git2::Error) -> Failure {
    let message = e.message().to_string();
    match (e.code(), e.class()) {
        (ErrorCode::Auth, _) | (ErrorCode::Certificate, _) => Failure::Permanent(message),
        (
            _,
            ErrorClass::Odb
            | ErrorClass::Object
            | ErrorClass::Repository
            | ErrorClass::Zlib
            | ErrorClass::Index,
        )
        | (_, ErrorClass::Reference) => Failure::Local(message),
        // The server answered and refused (no such repository, no access): retrying cannot help.
        (_, ErrorClass::Http) if [" 401", " 403", " 404"].iter().any(|c| message.contains(c)) => {
            Failure::Permanent(message)
        }
        (
            _,
            ErrorClass::Net | ErrorClass::Ssh | ErrorClass::Http | ErrorClass::Os | ErrorClass::Ssl,
        ) => Failure::Transient(message),
        _ => Failure::Permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_give_their_host_and_port() {
        assert_eq!(
            ssh_host_port("ssh://git@127.0.0.1:2222/srv/x.git"),
            Some(("127.0.0.1".into(), 2222))
        );
        assert_eq!(
            ssh_host_port("ssh://git.example.com/x.git"),
            Some(("git.example.com".into(), 22))
        );
        assert_eq!(
            ssh_host_port("ssh://git@[::1]:2200/x"),
            Some(("::1".into(), 2200))
        );
        assert_eq!(
            ssh_host_port("git@github.com:org/x.git"),
            Some(("github.com".into(), 22))
        );
    }
}
