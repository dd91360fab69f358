//! Where a credential may be sent: each credential names its hosts (`host`, `host:port`, either
//! followed by a path prefix, `host/team/`), and a secret goes only to a URL they cover, both when
//! a source is checked and when a Git server asks for it.

use std::fmt;

/// One entry of a credential's `hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// Lowercase host name or IP address (no brackets).
    pub host: String,
    /// `None`: any port.
    pub port: Option<u16>,
    /// `None`: any path; else the URL's path must start with it, at a `/` boundary.
    pub path: Option<String>,
}

/// The parts of a Git URL that decide where a secret goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    /// The URL's port, or its scheme's default (ssh 22, https 443, http 80).
    pub port: u16,
    /// The path, with a leading `/`.
    pub path: String,
}

impl HostRule {
    /// `git.example.com`, `git.example.com:2222`, `[::1]:22`, `git.example.com/team/`.
    pub fn parse(text: &str) -> Result<HostRule, String> {
        let bad = || {
            format!(
                "{text:?} is not host, host:port or host/path (for example git.example.com:2222/team)"
            )
        };
        if text.is_empty()
            || text.contains("://")
            || text.contains('@')
            || text.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let (authority, path) = match text.find('/') {
            Some(i) => (&text[..i], Some(normalize_path(&text[i..]))),
            None => (text, None),
        };
        let (host, port) = split_host_port(authority).ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HostRule {
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    pub fn allows(&self, to: &Endpoint) -> bool {
        self.host == to.host
            && self.port.is_none_or(|p| p == to.port)
            && self.path.as_deref().is_none_or(|prefix| {
                let prefix = prefix.trim_end_matches('/');
                to.path == prefix || to.path.starts_with(&format!("{prefix}/")) || prefix.is_empty()
            })
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(path) = &self.path {
            f.write_str(path)?;
        }
        Ok(())
    }
}

/// Where `url` leads: `ssh://[user@]host[:port]/path`, `[user@]host:path` (scp-like, port 22),
/// `https://`, `http://`; `None` for local and `git://` URLs, which take no credentials.
pub fn endpoint(url: &str) -> Option<Endpoint> {
    // A query, a fragment or a percent-escape could make the path a server sees differ from the
    // one checked here (`/team/x?/../../other`, `/team/%2e%2e/other`): no credential goes there.
    if url.contains(['?', '#', '%']) {
        return None;
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let default = match scheme {
            "ssh" => 22,
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(authority)?;
        return Some(Endpoint {
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default),
            path: normalize_path(path),
        });
    }
    if url.starts_with('/') {
        return None;
    }
    // scp-like `[user@]host:path`
    let (authority, path) = url.split_once(':')?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some(Endpoint {
        host: host.to_ascii_lowercase(),
        port: 22,
        path: normalize_path(path),
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` into host and port.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port.parse().ok()?))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// A leading `/`, no empty or `.` segments, `..` resolved (as a server would) so it cannot climb
/// out of a path prefix.
fn normalize_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(rule: &str, url: &str) -> bool {
        HostRule::parse(rule)
            .unwrap()
            .allows(&endpoint(url).unwrap())
    }

    #[test]
    fn a_rule_covers_its_host_port_and_path_prefix_only() {
        assert!(allows(
            "git.example.com",
            "https://git.example.com/ai/x.git"
        ));
        assert!(allows(
            "git.example.com",
            "ssh://git@git.example.com:2222/ai/x.git"
        ));
        assert!(allows("Git.Example.com", "git@git.example.com:ai/x.git"));
        assert!(!allows(
            "git.example.com",
            "https://git.example.com.evil.net/x.git"
        ));
        assert!(!allows(
            "git.example.com",
            "https://evil.net/git.example.com/x.git"
        ));
        assert!(allows(
            "git.example.com:443",
            "https://git.example.com/x.git"
        ));
        assert!(!allows(
            "git.example.com:2222",
            "ssh://git@git.example.com/x.git"
        ));
        assert!(allows(
            "git.example.com/ai",
            "https://git.example.com/ai/x.git"
        ));
        assert!(allows(
            "git.example.com/ai/",
            "https://git.example.com//ai/./x.git"
        ));
        assert!(!allows(
            "git.example.com/ai",
            "https://git.example.com/aix/x.git"
        ));
        assert!(!allows(
            "git.example.com/ai",
            "https://git.example.com/bigdata/x.git"
        ));
        assert!(!allows(
            "git.example.com/ai",
            "https://git.example.com/ai/../bigdata/x.git"
        ));
        assert!(allows("[::1]:2200", "ssh://git@[::1]:2200/x"));
        assert!(allows("127.0.0.1", "http://127.0.0.1:8080/x.git"));
        for tricky in [
            "https://git.example.com/bigdata/x.git?/../../ai/y",
            "https://git.example.com/ai/%2e%2e/bigdata/x.git",
            "https://git.example.com/ai/x.git#/../../bigdata",
        ] {
            assert_eq!(endpoint(tricky), None, "{tricky}");
        }
    }

    #[test]
    fn bad_rules_and_local_urls() {
        for bad in [
            "",
            "https://git.example.com",
            "git@host",
            "host:port",
            "a b",
        ] {
            assert!(HostRule::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(endpoint("file:///srv/x.git"), None);
        assert_eq!(endpoint("git://host/x.git"), None);
        assert_eq!(endpoint("/srv/x.git"), None);
        assert_eq!(
            HostRule::parse("Host.example:22/a/").unwrap().to_string(),
            "host.example:22/a"
        );
    }
}
