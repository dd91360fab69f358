//! Log setup: tracing with a text or JSON formatter on stderr, filtered by a level or directives.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Called once, after the config (if any) is loaded, so the
/// config's `log` section and the command-line flags both apply.
pub(crate) fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into files, pipes or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (tests calling the CLI entry twice in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
