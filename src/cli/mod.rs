//! The command line: arguments, dispatch, and the mapping of outcomes to exit codes.
//!
//! Exit codes: 0 ok; 1 the operation failed or drift was found; 2 bad usage or bad config.
//! `anyhow` lives here and in `main` only; modules below return their own error types.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, LogFormat};
use crate::logging;

mod client;
pub(crate) mod render;
pub(crate) mod run;

/// A GitOps agent for multi-tenant Kubernetes: fleet repo → tenant catalogs → applications.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The agent config file.
    #[arg(long, global = true, value_name = "FILE", env = "FLOTILLA_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log format; overrides the config's `log.format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or filter (`info`, `debug`, `info,flotilla::source=debug`); overrides `log.level`.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: fetch, render, apply and prune on every interval, webhook and sync request.
    Run {
        /// Reconcile every unit once, then exit (0 only if all converged).
        #[arg(long)]
        once: bool,
    },
    /// Ask the running agent to reconcile now.
    Sync {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        app: Option<String>,
        /// Wait for the result and exit 1 if it failed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Show what a sync would change, as a diff per object; exit 1 if anything differs.
    Diff {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        app: Option<String>,
    },
    /// Print the objects rendered for a cluster as a YAML stream.
    Render {
        /// The cluster to render for (default: the config's `cluster`).
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        app: Option<String>,
        /// Print Secrets' values (masked by default).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Check the config file (and, as they land, the fleet and tenant catalogs); print every error.
    Validate,
    /// Show each unit's revision, last result and next run.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2, help and --version with 0.
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // A reader that went away (`flotilla render | head`) is not a failure.
        Err(error)
            if error.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.downcast_ref::<config::Error>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { global, command } = cli;
    if let Some(Err(why)) = global.log_level.as_deref().map(crate::config::check_filter) {
        eprintln!("error: --log-level: {why}");
        return Ok(ExitCode::from(2));
    }
    match command {
        Command::Version => {
            println!("{}", version());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate => validate(&global),
        Command::Run { once: true } => match load_or_report(&global)? {
            Some(config) => run::once(&config),
            None => Ok(ExitCode::from(2)),
        },
        Command::Run { once: false } => match load_or_report(&global)? {
            Some(config) => Ok(crate::daemon::run(config)?),
            None => Ok(ExitCode::from(2)),
        },
        Command::Sync {
            tenant,
            app,
            wait,
            remote,
        } => client::sync(&global, &remote, tenant, app, wait),
        Command::Diff { tenant, app } => match load_or_report(&global)? {
            Some(config) => run::diff(
                &config,
                crate::reconcile::Filter {
                    tenant,
                    app,
                    ..Default::default()
                },
            ),
            None => Ok(ExitCode::from(2)),
        },
        Command::Render {
            cluster,
            tenant,
            app,
            show_secrets,
        } => {
            let Some(config) = load_or_report(&global)? else {
                return Ok(ExitCode::from(2));
            };
            render::render(
                &config,
                &render::Filter {
                    cluster,
                    tenant,
                    app,
                    show_secrets,
                },
            )
        }
        Command::Status { output, remote } => client::status(&global, &remote, output),
    }
}

/// Loads the config and starts logging with its settings, overridden by the flags.
fn load(global: &Global) -> anyhow::Result<Config> {
    let config = Config::load(&global.config)?;
    let format = global.log_format.unwrap_or(config.log.format);
    let level = global.log_level.as_deref().unwrap_or(&config.log.level);
    logging::init(format, level);
    Ok(config)
}

/// Checks the config (exit 2 if it is bad), then the fleet, every catalog and every cluster's
/// render (exit 1 if anything is wrong).
fn validate(global: &Global) -> anyhow::Result<ExitCode> {
    let Some(config) = load_or_report(global)? else {
        return Ok(ExitCode::from(2));
    };
    render::validate(&config, &global.config)
}

/// Loads the config; a config with problems has them all printed and gives `None`.
fn load_or_report(global: &Global) -> anyhow::Result<Option<Config>> {
    match load(global) {
        Ok(config) => Ok(Some(config)),
        Err(error) => match error.downcast_ref::<config::Error>() {
            Some(config::Error::Invalid(diagnostics)) => {
                eprintln!("{diagnostics}");
                let n = diagnostics.len();
                eprintln!(
                    "{}: {n} error{}",
                    global.config.display(),
                    if n == 1 { "" } else { "s" }
                );
                Ok(None)
            }
            _ => Err(error),
        },
    }
}

/// `flotilla <version> (commit <sha>)`; the commit comes from `FLOTILLA_COMMIT` at build time.
pub fn version() -> String {
    let commit = option_env!("FLOTILLA_COMMIT")
        .filter(|c| !c.is_empty())
        .unwrap_or("unknown");
    format!("flotilla {} (commit {commit})", env!("CARGO_PKG_VERSION"))
}
