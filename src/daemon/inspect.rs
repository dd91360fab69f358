//! A unit compared with the cluster on demand (the status page's objects and diff): rendered
//! from the last good checkouts (nothing is fetched that was fetched before), then dry-run
//! applied as `flotilla diff` does. Nothing is written, and no round's state is touched.

use std::sync::Arc;

use tracing::Instrument as _;

use super::round::{Context, unit_name};
use crate::agent::status::Inspection;
use crate::agent::{INSPECT_TIMEOUT, Inspect};
use crate::fleet::UnitId;
use crate::pipeline::{Fetcher, prepare_with};
use crate::reconcile::{self, Filter, Mode};

/// Answers one inspection request (in its own task).
pub(super) fn spawn(ctx: Arc<Context>, request: Inspect) {
    let span = tracing::info_span!("inspect", unit = %unit_name(&request.unit));
    let Inspect {
        unit,
        mut reply,
        permit,
    } = request;
    tokio::spawn(
        async move {
            let _permit = permit;
            let result = tokio::select! {
                r = tokio::time::timeout(INSPECT_TIMEOUT, inspect(ctx, unit)) => {
                    r.unwrap_or_else(|_| Err(format!(
                        "the comparison did not finish within {}",
                        humantime::format_duration(INSPECT_TIMEOUT)
                    )))
                }
                // The page went away: nobody waits for the answer.
                _ = reply.closed() => return,
            };
            if let Err(error) = &result {
                tracing::info!(%error, "the unit could not be compared");
            }
            let _ = reply.send(result);
        }
        .instrument(span),
    );
}

async fn inspect(ctx: Arc<Context>, unit: UnitId) -> Result<Inspection, String> {
    let cluster = ctx.engine.cluster.clone();
    let capabilities = cluster.capabilities().await.ok();
    // Read, never made here: a round makes it.
    let secret_key = cluster.secret_hash_key(false).await.ok().flatten();
    let handle = tokio::runtime::Handle::current();
    let prepared = {
        let (ctx, unit) = (ctx.clone(), unit.clone());
        tokio::task::spawn_blocking(move || {
            let mut fetcher = Fetcher::on(handle.clone(), ctx.sources.clone());
            // From the last good copies: an inspection fetches only what was never fetched.
            fetcher.fresh = Some(Default::default());
            fetcher.interval = ctx.config.interval;
            let read_secret = |identity: &crate::fleet::Identity, ns: &str, name: &str| {
                handle.block_on(cluster.read_secret(identity, ns, name))
            };
            prepare_with(
                &ctx.config,
                &fetcher,
                &|u| *u == unit,
                capabilities,
                Some(&read_secret),
                secret_key,
            )
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("internal error: the render task failed: {e}"))??
    };
    let mut input = prepared.input;
    // What a round would refuse (an object another unit owns) is refused here too.
    if let Ok(claims) = ctx.claims.lock() {
        claims.check(&mut input.results);
    }
    if !input.units.iter().any(|u| u.id == unit) {
        let why: Vec<String> = prepared
            .problems
            .iter()
            .filter(|p| match &p.owner {
                crate::fleet::Owner::Unit(id) => *id == unit,
                crate::fleet::Owner::Tenant(t) => unit.tenant.as_deref() == Some(t.as_str()),
                crate::fleet::Owner::Fleet => true,
            })
            .map(ToString::to_string)
            .collect();
        return Err(if why.is_empty() {
            format!("{} is not placed on this cluster", unit_name(&unit))
        } else {
            why.join("; ")
        });
    }
    let filter = Filter {
        tenant: unit.tenant.clone(),
        app: Some(unit.app.clone()),
        only: Some([unit.clone()].into()),
        ..Default::default()
    };
    let entries = reconcile::pass(ctx.engine.clone(), &mut input, &filter, Mode::Diff).await;
    let Some(entry) = entries.into_iter().find(|e| e.unit.as_ref() == Some(&unit)) else {
        return Err(format!("{} was not compared", unit_name(&unit)));
    };
    let o = entry.outcome;
    Ok(Inspection {
        revision: entry.revision,
        errors: o.failure_lines(),
        objects: o.objects,
        diff: o.diff,
        changes: o.changes,
        notes: o.notes,
    })
}
