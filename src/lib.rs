//! flotilla: a GitOps agent for multi-tenant Kubernetes.
//!
//! The pipeline and the folder of each stage are described in `ARCHITECTURE.md`.

// `unsafe` is denied everywhere; the one exception (libgit2's global timeouts) says why.
#![deny(unsafe_code)]
// Only what the tests and benchmarks use is public; the rest is `pub(crate)`, so that dead code
// is reported. The project's clippy rules are in `clippy.toml`.
#![deny(unreachable_pub)]
#![deny(clippy::await_holding_lock)]

pub(crate) mod agent;
pub mod cli;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod daemon;
pub(crate) mod deadline;
pub mod failure;
pub mod fleet;
pub(crate) mod inventory;
pub(crate) mod logging;
pub(crate) mod pipeline;
pub(crate) mod plan;
pub(crate) mod reconcile;
pub mod render;
pub(crate) mod semver_range;
pub(crate) mod server;
pub(crate) mod shard;
mod sops;
pub mod source;
pub(crate) mod subst;
pub mod yaml;
