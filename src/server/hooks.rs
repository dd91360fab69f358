//! `POST /hooks/{provider}`: a push from a Git host, refused unsigned before its body is read,
//! checked with the secret of the repository it names (or the receiver's), and turned into the
//! rounds of the units that follow that repository.

use std::collections::BTreeSet;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;

use super::webhook::{self, MAX_BODY, Provider, Refusal, Verdict};
use super::{error, json, read_body};
use crate::agent::{self, Handle, Scope, Target, describe};
use crate::fleet::UnitId;

pub(super) async fn hook(name: &str, req: Request, agent: &Handle) -> Response {
    let Some(provider) = Provider::from_name(name) else {
        return error(StatusCode::NOT_FOUND, &format!("no receiver {name:?}"));
    };
    let count = |result: &str| agent.metrics.webhook(provider.name(), result);
    let snapshot = agent.snapshot();
    let config = &snapshot.config;
    let hooks = &config.webhooks;
    let Some(secret) = (match provider {
        Provider::Github => &hooks.github,
        Provider::Gitlab => &hooks.gitlab,
        Provider::Gitea => &hooks.gitea,
        Provider::Bitbucket => &hooks.bitbucket,
        Provider::Generic => &hooks.generic,
    }) else {
        count("not_configured");
        return error(
            StatusCode::NOT_FOUND,
            &format!("the {name} receiver is not configured (webhooks.{name})"),
        );
    };
    let headers = req.headers().clone();
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // Unsigned: refused before the body is read.
    let auth = webhook::auth_header(provider, secret.header.as_deref());
    if header(&auth).is_none() {
        count("unauthorized");
        tracing::warn!(receiver = name, "webhook refused: no {auth} header");
        return error(StatusCode::UNAUTHORIZED, &format!("no {auth} header"));
    }
    let body = match read_body(req, MAX_BODY).await {
        Ok(body) => body,
        Err(response) => {
            count("too_large");
            return response;
        }
    };
    // Which secret must have signed it: the claimed repository's own, if it has one; else the
    // receiver's.
    let claimed: BTreeSet<String> = webhook::claimed_urls(provider, &body)
        .iter()
        .map(|u| webhook::normalize_url(u))
        .collect();
    let own: BTreeSet<&std::path::PathBuf> = secret
        .repos
        .iter()
        .filter(|(url, _)| claimed.contains(&webhook::normalize_url(url)))
        .map(|(_, file)| file)
        .collect();
    // A repository with its own secret on any receiver is never accepted on another one's
    // shared secret.
    let elsewhere = [
        &hooks.github,
        &hooks.gitlab,
        &hooks.gitea,
        &hooks.bitbucket,
        &hooks.generic,
    ]
    .into_iter()
    .flatten()
    .flat_map(|r| &r.repos)
    .any(|(url, _)| claimed.contains(&webhook::normalize_url(url)));
    let file = match (own.len(), &secret.file) {
        (1, _) => own.into_iter().next().cloned(),
        (0, _) if elsewhere => None,
        (0, file) => file.clone(),
        _ => None,
    };
    let Some(file) = file else {
        count("unauthorized");
        tracing::warn!(
            receiver = name,
            "webhook refused: no secret for the repository it names"
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "no secret of this receiver is for the repository the push names",
        );
    };
    let key = match tokio::fs::read(&file).await {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(receiver = name, file = %file.display(), error = %e, "cannot read the webhook secret");
            count("error");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the receiver's secret cannot be read",
            );
        }
    };
    let verdict = webhook::check(provider, &header, &body, &key, secret.header.as_deref());
    match verdict {
        Err(Refusal::Unauthorized(why)) => {
            count("unauthorized");
            tracing::warn!(receiver = name, reason = %why, "webhook refused");
            error(StatusCode::UNAUTHORIZED, &why)
        }
        Err(Refusal::BadRequest(why)) => {
            count("bad_request");
            error(StatusCode::BAD_REQUEST, &why)
        }
        Ok(Verdict::Ignored(why)) => {
            count("ignored");
            json(StatusCode::OK, &serde_json::json!({"ignored": why}))
        }
        Ok(Verdict::Push { urls, references }) => {
            // Read again: the body and the secret took their time, and leadership or the
            // targets may have changed meanwhile.
            let snapshot = agent.snapshot();
            // With sharding, every replica takes its own units, and the others hear of it.
            if let Some(own) = &snapshot.ownership
                && !super::peers::forwarded(&headers)
            {
                super::peers::pass_on_webhook(
                    own,
                    format!("/hooks/{name}"),
                    &headers,
                    body.clone(),
                );
            }
            if !snapshot.takes_requests() {
                count("not_leader");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this replica is not the leader",
                );
            }
            let wanted: BTreeSet<String> = urls.iter().map(|u| webhook::normalize_url(u)).collect();
            let targets: Vec<&Target> = snapshot
                .status
                .targets
                .iter()
                .filter(|t| wanted.contains(&t.url))
                .collect();
            let moved: Vec<&Target> = targets
                .iter()
                .copied()
                .filter(|t| webhook::any_ref_matches(&t.reference, &references))
                .collect();
            if moved.is_empty() {
                count("ignored");
                let why = if targets.is_empty() {
                    format!("no source of this agent is {}", urls.join(" or "))
                } else {
                    format!(
                        "{} does not move a ref this agent follows",
                        if references.is_empty() {
                            "the push".to_string()
                        } else {
                            references.join(", ")
                        }
                    )
                };
                tracing::info!(receiver = name, reason = %why, "webhook push ignored");
                return json(StatusCode::OK, &serde_json::json!({"ignored": why}));
            }
            count("accepted");
            let fresh: BTreeSet<String> = moved.iter().map(|t| t.key.clone()).collect();
            let mut queued = Vec::new();
            for scope in merge(moved.iter().map(|t| t.scope.clone())) {
                queued.push(describe(&scope));
                agent.request(agent::Request {
                    scope,
                    fresh: fresh.clone(),
                    reason: format!("webhook {name}"),
                    waiter: None,
                });
            }
            tracing::info!(receiver = name, queued = ?queued, "webhook push accepted");
            json(StatusCode::ACCEPTED, &serde_json::json!({"queued": queued}))
        }
    }
}

/// Scopes merged: `All` swallows the rest; units of one request go into one scope.
fn merge(scopes: impl Iterator<Item = Scope>) -> Vec<Scope> {
    let mut tenants = BTreeSet::new();
    let mut units = BTreeSet::new();
    for s in scopes {
        match s {
            Scope::All => return vec![Scope::All],
            Scope::Tenant(t) => {
                tenants.insert(t);
            }
            Scope::Units(u) => units.extend(u),
        }
    }
    units.retain(|u: &UnitId| !u.tenant.as_ref().is_some_and(|t| tenants.contains(t)));
    let mut out: Vec<Scope> = tenants.into_iter().map(Scope::Tenant).collect();
    if !units.is_empty() {
        out.push(Scope::Units(units));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_merge_into_all_or_tenants_plus_units() {
        let a = UnitId::app("ai", "a");
        let b = UnitId::app("web", "b");
        assert_eq!(
            merge(
                [
                    Scope::Units([a.clone()].into()),
                    Scope::Tenant("ai".into()),
                    Scope::Units([b.clone()].into())
                ]
                .into_iter()
            ),
            vec![Scope::Tenant("ai".into()), Scope::Units([b].into())]
        );
        assert_eq!(
            merge([Scope::Units([a].into()), Scope::All].into_iter()),
            vec![Scope::All]
        );
    }
}
