//! concourse-sts: gives every Concourse team fresh, short-lived AWS credentials.
//!
//! On each cron tick the component reads every team document from Spin's key-value store,
//! assumes each account's CI role with STS (the session named after the team) and writes
//! the temporary credentials into Secrets Manager under `/concourse/<team>/<account>-*`,
//! where Concourse pipelines read them.
//!
//! Everything but [`spin`] is plain Rust with no Spin in it, tested natively:
//!
//! - input: [`config`] (team documents), [`names`], [`template`] (secret paths),
//!   [`roles`] and [`settings`] (the application variables);
//! - AWS: [`aws`] signs and speaks STS, Secrets Manager and Parameter Store over a
//!   transport trait; [`vault`] speaks Vault's API over the same transport;
//! - [`sink`]: every place credentials are written, one shape each;
//! - the tick: [`tick`] loads, plans, executes and records, under the [`lease`], with
//!   [`state`] documents, [`timing`] rules, [`retry`] and [`pace`];
//! - around it: [`store`] (the key-value trait), [`clock`], [`events`] (log lines) and
//!   [`api`] (the admin API's routes).

pub mod api;
pub mod aws;
pub mod clock;
pub mod config;
pub mod deployment;
pub mod events;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod overview;
pub mod pace;
pub mod retry;
pub mod roles;
pub mod settings;
pub mod sink;
pub mod state;
pub mod store;
pub mod template;
pub mod tick;
pub mod timing;
pub mod vault;

#[cfg(target_arch = "wasm32")]
mod spin;

#[cfg(test)]
mod fake_aws;
#[cfg(test)]
mod fake_vault;
