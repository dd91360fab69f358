//! The config's secrets, each named by a file and never written inline: Git credentials (with
//! the hosts each may be sent to) and webhook secrets (shared, and per repository).

use std::collections::BTreeMap;
use std::path::Path;

use super::decode::readable_file;
use super::{Credential, WebhookSecret, Webhooks};
use crate::yaml::{Fields, Node, Report};

pub(super) fn decode_credentials(
    node: &Node,
    base: &Path,
    report: &mut Report,
) -> Option<BTreeMap<String, Credential>> {
    let crate::yaml::Value::Map(entries) = &node.value else {
        return report.wrong_type(node, "credentials", "a mapping of names to credentials");
    };
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        let Some(name) = key.str("credentials", report) else {
            continue;
        };
        let path = format!("credentials.{name}");
        if let Some(credential) = decode_credential(value, &path, base, report) {
            out.insert(name.to_string(), credential);
        }
    }
    Some(out)
}

fn decode_credential(
    node: &Node,
    path: &str,
    base: &Path,
    report: &mut Report,
) -> Option<Credential> {
    const ALLOWED: &[&str] = &[
        "ssh_key_file",
        "passphrase_file",
        "known_hosts_file",
        "token_file",
        "username",
        "password_file",
        "hosts",
    ];
    let mut fields = Fields::new(node, path, report)?;
    // A missing file is reported, but the field still counts as given: which fields are written
    // decides what kind of credential this is, so one error does not cascade into another.
    let mut file = |key: &str, fields: &mut Fields<'_>| {
        let n = fields.get(key)?;
        readable_file(n, &fields.path(key), base, report).or_else(|| match &n.value {
            crate::yaml::Value::Str(p) => Some(base.join(p)),
            _ => None,
        })
    };
    let mut c = Credential {
        hosts: Vec::new(),
        ssh_key_file: file("ssh_key_file", &mut fields),
        passphrase_file: file("passphrase_file", &mut fields),
        known_hosts_file: file("known_hosts_file", &mut fields),
        token_file: file("token_file", &mut fields),
        password_file: file("password_file", &mut fields),
        username: fields
            .get("username")
            .and_then(|n| Some(n.str(&fields.path("username"), report)?.to_string())),
    };
    // Required: a credential without hosts would go to whichever server asks.
    let hosts = match fields.get("hosts") {
        None => {
            report.error(
                node,
                path,
                "hosts is missing: name the hosts it may be sent to (host, host:port, optionally followed by a path prefix such as /team)",
            );
            Vec::new()
        }
        Some(n) => {
            let p = fields.path("hosts");
            let texts = n.strings(&p, report).unwrap_or_default();
            if texts.is_empty() && matches!(n.value, crate::yaml::Value::Seq(_)) {
                report.error(n, &p, "name at least one host");
            }
            let mut rules = Vec::new();
            for (i, t) in texts.iter().enumerate() {
                match crate::config::hosts::HostRule::parse(t) {
                    Ok(rule) => rules.push(rule),
                    Err(why) => report.error(n, &format!("{p}[{i}]"), why),
                }
            }
            rules
        }
    };
    c.hosts = hosts;
    // `username` fits both kinds: the HTTPS user, or the SSH login when the URL names none.
    let ssh = fields.present(&["ssh_key_file", "passphrase_file", "known_hosts_file"]);
    let https = fields.present(&["token_file", "password_file"]);
    let has_user = !fields.present(&["username"]).is_empty();
    fields.finish(ALLOWED, report);

    let mut problem = |message: &str| report.error(node, path, message);
    match (ssh.is_empty(), https.is_empty()) {
        (true, true) if has_user => {
            problem("username needs ssh_key_file, token_file or password_file")
        }
        (true, true) => problem(
            "empty: give ssh_key_file and known_hosts_file, or token_file, or username and password_file",
        ),
        (false, false) => problem(&format!(
            "mixes SSH fields ({}) with HTTPS fields ({}); make two credentials",
            ssh.join(", "),
            https.join(", ")
        )),
        (false, true) => {
            if !ssh.contains(&"ssh_key_file") {
                problem("ssh_key_file is missing");
            }
            if !ssh.contains(&"known_hosts_file") {
                problem("known_hosts_file is missing: SSH host keys are always verified");
            }
        }
        (true, false) => {
            if https.contains(&"token_file") && https.contains(&"password_file") {
                problem("give token_file or password_file, not both");
            } else if https.contains(&"password_file") && !has_user {
                problem("password_file needs a username");
            }
        }
    }
    Some(c)
}

pub(super) fn decode_webhooks(node: &Node, base: &Path, report: &mut Report) -> Option<Webhooks> {
    const PROVIDERS: &[&str] = &["github", "gitlab", "gitea", "bitbucket", "generic"];
    let mut fields = Fields::new(node, "webhooks", report)?;
    let mut one = |name: &str, fields: &mut Fields<'_>| {
        let n = fields.get(name)?;
        let path = fields.path(name);
        // GitLab sends the shared secret itself as a token; the others sign the body with it.
        let secret_key = if name == "gitlab" {
            "token_file"
        } else {
            "secret_file"
        };
        let allowed: &[&str] = if name == "generic" {
            &[secret_key, "header", "repos"]
        } else {
            &[secret_key, "repos"]
        };
        let mut f = Fields::new(n, &path, report)?;
        let file = f
            .get(secret_key)
            .map(|s| readable_file(s, &f.path(secret_key), base, report));
        let mut repos = Vec::new();
        let mut repos_ok = true;
        if let Some(r) = f.get("repos") {
            let rp = f.path("repos");
            match &r.value {
                crate::yaml::Value::Map(entries) => {
                    for (key, file_node) in entries {
                        let Some(url) = key.str(&rp, report) else {
                            repos_ok = false;
                            continue;
                        };
                        let p = format!("{rp}.{url}");
                        match readable_file(file_node, &p, base, report) {
                            Some(file) => repos.push((url.to_string(), file)),
                            None => repos_ok = false,
                        }
                    }
                }
                _ => {
                    report.wrong_type::<()>(r, &rp, "a mapping of repository URL to secret file");
                    repos_ok = false;
                }
            }
        }
        let header = f
            .get("header")
            .and_then(|h| Some(h.str(&f.path("header"), report)?.to_string()));
        f.finish(allowed, report);
        if file.is_none() && repos.is_empty() && repos_ok {
            report.error(
                n,
                &path,
                format!("give {secret_key}, or repos (repository URL: secret file), or both"),
            );
            return None;
        }
        let file = match file {
            Some(None) => return None,
            Some(Some(f)) => Some(f),
            None => None,
        };
        if !repos_ok {
            return None;
        }
        Some(WebhookSecret {
            file,
            repos,
            header,
        })
    };
    let hooks = Webhooks {
        github: one("github", &mut fields),
        gitlab: one("gitlab", &mut fields),
        gitea: one("gitea", &mut fields),
        bitbucket: one("bitbucket", &mut fields),
        generic: one("generic", &mut fields),
    };
    fields.finish(PROVIDERS, report);
    Some(hooks)
}
