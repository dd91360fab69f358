//! `flotilla run`: the long-running agent.
//!
//! Tasks and channels (see `ARCHITECTURE.md`):
//! - the **scheduler** (this file's loop) owns the [`schedule::Schedule`]; it receives
//!   [`Request`]s (webhooks, syncs, follow-ups, reloads) on one channel, starts rounds as tasks
//!   ([`round::run`]), and records each finished round in the shared status and metrics;
//! - the **servers** ([`crate::server`]) on TCP and the unix socket read the shared state and send
//!   requests;
//! - **signals**: the first SIGTERM/SIGINT turns the stop flag on, a second exits at once;
//! - the **config watcher** ([`reload`]) sends each valid new config;
//! - the **Lease renewer** ([`leader`]) reports a lost lease; the **watchdog** pings systemd;
//! - with `sharding`, the **shard manager** ([`shards`]) publishes the shards this replica
//!   holds; a lost shard cancels the running rounds (their other units run again at once), and
//!   the manager gives a shard up only once the scheduler acknowledged that.
//!
//! Shutdown order: stop flag → no new rounds → running rounds finish (within `shutdown_grace`)
//! → `STOPPING=1` → the Lease (or the shards) are released → servers stop → exit.

mod book;
mod finished;
mod inspect;
pub(crate) mod leader;
pub(crate) mod reload;
pub(crate) mod round;
pub(crate) mod schedule;
pub(crate) mod shards;
pub(crate) mod systemd;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::agent::status::Metrics;
pub(crate) use crate::agent::{Handle, Waiter, stopped};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::fleet::Identity;
use crate::reconcile::Engine;
use crate::source::Sources;
use book::Book;
use finished::{TaskRounds, joined_round, publish_next_runs};
use round::{Context, Done};
use schedule::{Schedule, Scope};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot listen on {what} {address}: {source}")]
    Listen {
        what: &'static str,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Socket(String),
    #[error("kubeconfig: {0}")]
    Cluster(#[from] crate::cluster::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs the agent until it is stopped; exit 0 after a clean shutdown.
pub(crate) fn run(config: Config) -> Result<ExitCode, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(main(config))
}

async fn main(config: Config) -> Result<ExitCode, Error> {
    let config = Arc::new(config);
    let (requests, mut incoming) = mpsc::unbounded_channel();
    let (inspections, mut inspect_requests) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::default());
    let (handle, publisher) = Handle::new(config.clone(), (requests, inspections), metrics.clone());
    let (stop_tx, mut stop) = watch::channel(false);
    signals(stop_tx.clone());

    if let Some(addr) = config.listen.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen {
                what: "listen.http",
                address: addr.to_string(),
                source,
            })?;
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(address = %bound, "listening for HTTP");
        tokio::spawn(
            crate::server::serve_tcp(listener, handle.clone(), stop.clone(), false)
                .instrument(tracing::info_span!("http", listener = "listen.http")),
        );
    }
    if let Some(addr) = config.listen.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen {
                what: "listen.metrics",
                address: addr.to_string(),
                source,
            })?;
        tracing::info!(address = %addr, "serving metrics");
        tokio::spawn(
            crate::server::serve_tcp(listener, handle.clone(), stop.clone(), true)
                .instrument(tracing::info_span!("http", listener = "listen.metrics")),
        );
    }
    let socket = match &config.listen.socket {
        Some(path) => {
            let listener = bind_socket(path)?;
            tracing::info!(socket = %path.display(), "listening on the operator socket");
            tokio::spawn(
                crate::server::serve_unix(listener, handle.clone(), stop.clone())
                    .instrument(tracing::info_span!("http", listener = "listen.socket")),
            );
            Some(path.clone())
        }
        None => None,
    };
    let (reloads_tx, mut reloads) = mpsc::unbounded_channel();
    let _watcher = match reload::watch(&config.file, &config, reloads_tx) {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(%error, file = %config.file.display(), "cannot watch the config file; reload needs a restart");
            None
        }
    };
    // The watchdog pings only while the scheduler (or the wait for the Lease) shows signs of
    // life: a stuck loop gets the agent restarted by systemd.
    let heartbeat = Arc::new(Mutex::new(Instant::now()));
    let watchdog = systemd::watchdog_interval();
    if let Some(every) = watchdog {
        systemd::spawn_watchdog(every, heartbeat.clone());
    }
    let beat = {
        let heartbeat = heartbeat.clone();
        move || {
            if let Ok(mut h) = heartbeat.lock() {
                *h = Instant::now();
            }
        }
    };
    let tick = watchdog.unwrap_or(Duration::from_secs(3600));

    let cluster = Arc::new(Cluster::connect(config.kubeconfig.as_deref()).await?);
    tracing::info!(api_server = %cluster.url(), cluster = %config.cluster, "agent starting");
    let engine = Arc::new(Engine {
        cluster: cluster.clone(),
        concurrency: config.apply_concurrency as usize,
        units: crate::reconcile::slots::Slots::new(config.concurrency as usize),
        max_wait: config.unit_timeout,
        unit_locks: Default::default(),
        touched: Default::default(),
        synced_by: Default::default(),
        wanted: Default::default(),
    });

    // Leader election: wait for the Lease (serving /healthz meanwhile), then keep renewing it.
    let (lost_tx, mut lost) = mpsc::unbounded_channel::<String>();
    let mut elector = None;
    let mut renewing: Option<tokio::task::JoinHandle<()>> = None;
    if let Some(le) = &config.leader_election {
        let identity = format!("{}_{}", round::hostname(), std::process::id());
        let mut e = leader::Elector::new(cluster.client(&Identity::Agent)?, le, identity);
        systemd::notify("STATUS=waiting to be elected leader");
        tracing::info!(lease = %format!("{}/{}", le.namespace, le.name), identity = %e.identity, "waiting for the Lease");
        loop {
            beat();
            match tokio::time::timeout(e.period(), e.try_acquire()).await {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "leader election: cannot read or write the Lease")
                }
                Err(_) => tracing::warn!("leader election: the API server did not answer in time"),
            }
            tokio::select! {
                _ = tokio::time::sleep(e.period()) => {}
                _ = stopped(&mut stop) => {
                    finish(&socket);
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        tracing::info!(identity = %e.identity, "elected leader");
        let e = Arc::new(tokio::sync::Mutex::new(e));
        renewing = Some(leader::spawn_renewer(e.clone(), lost_tx));
        elector = Some(e);
    }
    // Sharding: this replica announces itself and takes its share of the shards as the
    // manager's ticks go; rounds cover the tenants of the shards the scheduler last acted on.
    let mut sharding = None;
    if let Some(sh) = &config.sharding {
        let identity = format!("{}_{}", round::hostname(), std::process::id());
        let address = advertise(&config, sh);
        if address.is_none() || config.listen.token_file.is_none() {
            tracing::warn!(
                "sharding: without listen.http (or sharding.advertise) and listen.token_file, webhooks, syncs and status are not passed between this replica and the others"
            );
        }
        tracing::info!(identity = %identity, address = ?address, shards = sh.shards, "sharding: joining");
        let manager = shards::Manager::new(
            cluster.client(&Identity::Agent)?,
            sh,
            identity,
            address,
            config.listen.token_file.clone(),
        );
        let (own_tx, own_rx) = watch::channel(manager.ownership().clone());
        let (ack_tx, ack_rx) = watch::channel(0u64);
        let (acted, _) = watch::channel(manager.ownership().held.clone());
        let stopping = manager.stopping.clone();
        let manager = Arc::new(tokio::sync::Mutex::new(manager));
        let task = shards::spawn(manager.clone(), own_tx, ack_rx);
        sharding = Some(Sharded {
            manager,
            task,
            rx: own_rx,
            ack: ack_tx,
            acted,
            stopping,
            closed: false,
        });
    }
    publisher.update(|s| {
        s.leader = sharding.is_none();
        s.ownership = sharding.as_ref().map(|sh| sh.rx.borrow().clone());
    });

    let mut ctx = Arc::new(Context {
        config: config.clone(),
        sources: Arc::new(Sources::new(&config)),
        engine: engine.clone(),
        metrics: metrics.clone(),
        claims: Default::default(),
        shards: sharding.as_ref().map(|sh| sh.acted.subscribe()),
    });
    let mut schedule: Schedule<Waiter> = Schedule::new(config.interval, Instant::now());
    let mut rounds: tokio::task::JoinSet<Done> = tokio::task::JoinSet::new();
    let mut book = Book::default();
    let out = (&publisher, &*metrics);
    let mut code = ExitCode::SUCCESS;
    systemd::notify("STATUS=first sync");
    let mut task_rounds = TaskRounds::new();
    loop {
        beat();
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        schedule.due(now);
        for round in schedule.start(now) {
            let id = round.id;
            let task = rounds.spawn(round::run(ctx.clone(), round));
            task_rounds.insert(task.id(), id);
        }
        publish_next_runs(&publisher, &schedule);
        let wake = schedule.next_wake().min(Instant::now() + tick);
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(now) = owned_changed(&mut sharding) => {
                let sh = sharding.as_mut().expect("a change came from it");
                shards_changed(sh, now, &mut schedule, (&mut rounds, &mut book, &mut task_rounds), out).await;
                // Nothing renews the Leases any more: stop, so that the replica is restarted.
                if sh.closed {
                    code = ExitCode::from(1);
                    let _ = stop_tx.send(true);
                    break;
                }
            }
            Some(why) = lost.recv() => {
                tracing::error!(reason = %why, "lost leadership; cancelling running syncs so that only the new leader applies");
                publisher.update(|s| s.leader = false);
                rounds.abort_all();
                code = ExitCode::from(1);
                let _ = stop_tx.send(true);
                break;
            }
            Some(joined) = rounds.join_next_with_id(), if !rounds.is_empty() => {
                joined_round(out, &mut schedule, &mut book, &mut task_rounds, joined);
            }
            Some(r) = incoming.recv() => schedule.request(r.scope, r.fresh, &r.reason, r.waiter),
            Some(i) = inspect_requests.recv() => inspect::spawn(ctx.clone(), i),
            _ = tokio::time::sleep_until(wake.into()) => {}
            Some(new) = reloads.recv() => {
                let sources = if new.credentials == ctx.config.credentials
                    && new.git == ctx.config.git
                    && new.verification_keys == ctx.config.verification_keys
                {
                    ctx.sources.clone()
                } else {
                    Arc::new(Sources::new(&new))
                };
                ctx = Arc::new(Context {
                    config: new.clone(),
                    sources,
                    engine: engine.clone(),
                    metrics: metrics.clone(),
                    claims: ctx.claims.clone(),
                    shards: ctx.shards.clone(),
                });
                publisher.update(|s| s.config = new.clone());
                schedule.set_interval(new.interval, Instant::now());
                schedule.request(Scope::All, BTreeSet::new(), "config reloaded", None);
            }
        }
    }

    // Shutdown: no new rounds; the running ones finish within the grace period.
    // Not ready any more, also in the status rounds finishing now publish.
    book.stopping = true;
    book.status.ready = false;
    if let Some(sh) = &sharding {
        sh.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    publisher.update(|s| {
        s.status.ready = false;
        if let Some(o) = &mut s.ownership {
            o.announced = false;
        }
    });
    systemd::notify("STOPPING=1");
    let grace = config.shutdown_grace;
    if !rounds.is_empty() {
        tracing::info!(rounds = rounds.len(), grace = %humantime::format_duration(grace), "stopping: letting running syncs finish");
    }
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            Some(why) = lost.recv(), if publisher.snapshot().leader => {
                tracing::error!(reason = %why, "lost leadership while stopping; cancelling running syncs");
                publisher.update(|s| s.leader = false);
                rounds.abort_all();
                code = ExitCode::from(1);
            }
            // A shard lost while stopping: its work stops at once, as while running.
            Some(mut now) = owned_changed(&mut sharding) => {
                let sh = sharding.as_mut().expect("a change came from it");
                now.announced = false;
                shards_changed(sh, now, &mut schedule, (&mut rounds, &mut book, &mut task_rounds), out).await;
                if rounds.is_empty() {
                    break;
                }
            }
            joined = rounds.join_next_with_id() => match joined {
                None => break,
                Some(joined) => joined_round(out, &mut schedule, &mut book, &mut task_rounds, joined),
            },
            _ = &mut deadline => {
                tracing::error!(rounds = rounds.len(), "the grace period is over; cancelling the syncs still running");
                rounds.abort_all();
                // Awaited: the shards are given up below, and nothing of theirs may still run.
                while let Some(joined) = rounds.join_next_with_id().await {
                    joined_round(out, &mut schedule, &mut book, &mut task_rounds, joined);
                }
                code = ExitCode::from(1);
                break;
            }
        }
    }
    // The renewer stops first, so that it cannot take the released Lease back.
    if let Some(r) = renewing {
        r.abort();
        let _ = r.await;
    }
    if let Some(e) = elector
        && publisher.snapshot().leader
    {
        let e = e.lock().await;
        let _ = tokio::time::timeout(e.period(), e.release()).await;
    }
    // No work runs any more: the shards are given up for the other replicas to take at once.
    if let Some(sh) = sharding {
        sh.task.abort();
        let _ = sh.task.await;
        let mut m = sh.manager.lock().await;
        let period = m.period();
        let _ = tokio::time::timeout(period * 2, m.leave()).await;
    }
    finish(&socket);
    tracing::info!("stopped");
    Ok(code)
}

/// The scheduler's side of the shard manager.
struct Sharded {
    manager: Arc<tokio::sync::Mutex<shards::Manager>>,
    task: tokio::task::JoinHandle<()>,
    rx: watch::Receiver<crate::agent::Ownership>,
    /// The last generation whose lost shards' work has stopped.
    ack: watch::Sender<u64>,
    /// The shards the scheduler last acted on: what rounds started now cover.
    acted: watch::Sender<crate::shard::Held>,
    /// The manager's flag: no shard is taken any more.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The manager's task ended: nothing renews the Leases any more.
    closed: bool,
}

/// The next ownership the manager publishes (never, without sharding). Should the manager's
/// task end, every shard is taken as lost: nothing renews their Leases any more.
async fn owned_changed(sharding: &mut Option<Sharded>) -> Option<crate::agent::Ownership> {
    match sharding {
        Some(sh) if !sh.closed => match sh.rx.changed().await {
            Ok(()) => Some(sh.rx.borrow_and_update().clone()),
            Err(_) => {
                tracing::error!(
                    "sharding: the shard manager stopped; giving every shard's work up"
                );
                sh.closed = true;
                let mut none = sh.rx.borrow().clone();
                none.held.held.clear();
                none.generation += 1;
                Some(none)
            }
        },
        _ => std::future::pending().await,
    }
}

/// The shards held changed: on a loss every running round is cancelled and awaited (another
/// replica may take the shard as soon as the manager hears of it), then the manager is told;
/// rounds started from now on cover the new set, and a full round follows any change.
async fn shards_changed(
    sh: &mut Sharded,
    now: crate::agent::Ownership,
    schedule: &mut Schedule<Waiter>,
    (rounds, book, task_rounds): (&mut tokio::task::JoinSet<Done>, &mut Book, &mut TaskRounds),
    out: (&crate::agent::Publisher, &Metrics),
) {
    let before = sh.acted.borrow().held.clone();
    let lost: Vec<u32> = before.difference(&now.held.held).copied().collect();
    let gained: Vec<u32> = now.held.held.difference(&before).copied().collect();
    if !lost.is_empty() {
        tracing::warn!(shards = ?lost, rounds = rounds.len(), "sharding: shards lost or given up; cancelling the running syncs");
        rounds.abort_all();
        while let Some(joined) = rounds.join_next_with_id().await {
            joined_round(out, schedule, book, task_rounds, joined);
        }
    }
    sh.acted.send_replace(now.held.clone());
    let _ = sh.ack.send(now.generation);
    if !gained.is_empty() {
        tracing::info!(shards = ?gained, "sharding: shards acquired");
    }
    let changed = !lost.is_empty() || !gained.is_empty();
    out.0.update(|s| {
        s.leader = !now.held.held.is_empty();
        s.ownership = Some(now);
    });
    if changed && !book.stopping {
        schedule.request(Scope::All, BTreeSet::new(), "the shards held changed", None);
    }
}

/// The URL other replicas reach this one at: `sharding.advertise`, else `$FLOTILLA_ADVERTISE`,
/// else `http://$POD_IP:<listen.http port>`, else `listen.http` when it names one address.
fn advertise(config: &Config, sharding: &crate::config::Sharding) -> Option<String> {
    if let Some(a) = &sharding.advertise {
        return Some(a.clone());
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(a) = env("FLOTILLA_ADVERTISE") {
        if crate::config::check_advertise(&a).is_ok() {
            return Some(a.trim_end_matches('/').to_string());
        }
        tracing::warn!(value = %a, "FLOTILLA_ADVERTISE is not http://host:port; ignored");
    }
    let http = config.listen.http?;
    if let Some(ip) = env("POD_IP").and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
        return Some(format!(
            "http://{}",
            std::net::SocketAddr::new(ip, http.port())
        ));
    }
    (!http.ip().is_unspecified()).then(|| format!("http://{http}"))
}

/// SIGTERM or SIGINT turns the stop flag on; a second one exits at once.
fn signals(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    let signals = async move {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                tracing::info!(
                    signal = name,
                    "stopping: no new syncs; a second signal exits at once"
                );
                let _ = stop.send(true);
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                // Asked for: the operator wants out now, without the shutdown order.
                #[allow(clippy::disallowed_methods)]
                std::process::exit(130);
            }
        }
    };
    tokio::spawn(signals.instrument(tracing::info_span!("signals")));
}

/// Binds the operator socket with mode 0660: a stale socket file is replaced, a live one (another
/// agent) is an error.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Socket(format!(
                "cannot create the socket's folder {}: {e}",
                dir.display()
            ))
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !meta.file_type().is_socket() {
            return Err(Error::Socket(format!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Socket(format!(
                "another agent is listening on {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| Error::Listen {
        what: "listen.socket",
        address: path.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::Socket(format!("cannot set the mode of {}: {e}", path.display())))?;
    Ok(listener)
}

fn finish(socket: &Option<std::path::PathBuf>) {
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
}
