//! Config reload: the config file's folder is watched (editors and Kubernetes ConfigMap volumes
//! replace files by renaming, which a watch on the file itself would miss). A change is read
//! and validated; a valid config is handed to the daemon, an invalid one is refused with every
//! error logged and the running config kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::config::{self, Config};

/// How long the file must be quiet before it is read (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `file`; each valid new config is sent on `tx`. The watcher lives as long as the
/// returned value.
pub(crate) fn watch(
    file: &Path,
    current: &Config,
    tx: mpsc::UnboundedSender<Arc<Config>>,
) -> notify::Result<notify::RecommendedWatcher> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = events_tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    let mut last = std::fs::read(&file).ok();
    let running = current.clone();
    let watch = async move {
        let mut running = running;
        while events.recv().await.is_some() {
            // Settle: take every event of the next moment together.
            loop {
                match tokio::time::timeout(SETTLE, events.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = std::fs::read(&file).ok();
            if now == last {
                continue;
            }
            last = now;
            match Config::load(&file) {
                Ok(new) => {
                    if new == running {
                        continue;
                    }
                    let addresses = |l: &config::Listen| (l.http, l.socket.clone(), l.metrics);
                    for (what, changed) in [
                        (
                            "listen",
                            addresses(&new.listen) != addresses(&running.listen),
                        ),
                        ("concurrency", new.concurrency != running.concurrency),
                        (
                            "apply_concurrency",
                            new.apply_concurrency != running.apply_concurrency,
                        ),
                        (
                            "shutdown_grace",
                            new.shutdown_grace != running.shutdown_grace,
                        ),
                        ("unit_timeout", new.unit_timeout != running.unit_timeout),
                        ("kubeconfig", new.kubeconfig != running.kubeconfig),
                        ("state_dir", new.state_dir != running.state_dir),
                        ("log", new.log != running.log),
                        (
                            "leader_election",
                            new.leader_election != running.leader_election,
                        ),
                        ("sharding", new.sharding != running.sharding),
                    ] {
                        if changed {
                            tracing::warn!(
                                setting = what,
                                "config reloaded, but {what} changes take effect only on restart"
                            );
                        }
                    }
                    tracing::info!(file = %file.display(), "config reloaded");
                    running = new.clone();
                    if tx.send(Arc::new(new)).is_err() {
                        return;
                    }
                }
                Err(config::Error::Invalid(diagnostics)) => {
                    for d in diagnostics.iter() {
                        tracing::error!(error = %d, "config reload refused");
                    }
                    tracing::error!(
                        file = %file.display(),
                        errors = diagnostics.len(),
                        "config reload refused; the running config is kept"
                    );
                }
                Err(error) => {
                    tracing::error!(%error, "config reload refused; the running config is kept")
                }
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(
        watch,
        tracing::info_span!("config watcher"),
    ));
    Ok(watcher)
}
