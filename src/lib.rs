//! concourse-sts: gives every Concourse team fresh, short-lived AWS credentials.
//!
//! On each cron tick the component reads every team document from Spin's key-value store,
//! assumes each account's CI role with STS (the session named after the team) and writes
//! the temporary credentials into Secrets Manager under `/concourse/<team>/<account>-*`,
//! where Concourse pipelines read them.
//!
//! Everything but [`spin`] is plain Rust with no Spin in it, tested natively:
//! [`config`] and [`template`] validate input, [`aws`] speaks STS and Secrets Manager,
//! [`rotate`] runs a tick against small traits that [`spin`] implements with Spin's
//! key-value store, variables and outbound HTTP.

pub mod api;
pub mod aws;
pub mod clock;
pub mod config;
pub mod lease;
pub mod names;
pub mod pace;
pub mod retry;
pub mod roles;
pub mod rotate;
pub mod settings;
pub mod state;
pub mod store;
pub mod template;

#[cfg(target_arch = "wasm32")]
mod spin;
