//! flotilla: a GitOps agent for multi-tenant Kubernetes.
//!
//! The pipeline and the folder of each stage are described in `ARCHITECTURE.md`.

// `unsafe` is denied everywhere; the one exception (libgit2's global timeouts) says why.
#![deny(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod deadline;
pub mod failure;
pub mod fleet;
pub mod inventory;
pub mod logging;
pub mod pipeline;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod semver_range;
pub mod server;
pub mod source;
pub mod subst;
pub mod yaml;
