//! systemd's notify protocol (`Type=notify`): `READY=1`, `STOPPING=1`, `STATUS=...` and
//! `WATCHDOG=1` datagrams to `$NOTIFY_SOCKET`. Without that variable (not under systemd) every
//! call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (`READY=1`, `STATUS=syncing`); false if there is no socket or it failed.
pub(crate) fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    // Never block the runtime on a reader that is not reading: a full queue drops the message.
    let _ = socket.set_nonblocking(true);
    let path = path.to_string_lossy().into_owned();
    let sent = match path.strip_prefix('@') {
        // An abstract socket name.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(error) = &sent {
        tracing::debug!(%error, "systemd notification not sent");
    }
    sent.is_ok()
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if it is set for this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().filter(|p| !p.is_empty())
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}
/// The watchdog: pings systemd every `every`, but only while the scheduler shows signs of life
/// (its `heartbeat` is younger than two periods): a stuck loop gets the agent restarted.
pub(crate) fn spawn_watchdog(
    every: Duration,
    heartbeat: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
) {
    use tracing::Instrument as _;
    let task = async move {
        loop {
            let age = heartbeat.lock().map(|h| h.elapsed()).unwrap_or_default();
            if age < every * 2 {
                notify("WATCHDOG=1");
            } else {
                tracing::error!(stalled_for = ?age, "the scheduler is not responding; no watchdog ping");
            }
            tokio::time::sleep(every).await;
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("watchdog")));
}
