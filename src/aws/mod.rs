//! The two AWS APIs the rotation needs, spoken directly: SigV4 signing through
//! `aws-sigv4`, STS's query protocol and Secrets Manager's JSON 1.1 protocol. No SDK runs
//! in the component; these modules build requests and read answers, and [`client`] sends
//! them through whatever [`client::Transport`] the runtime provides.

pub mod client;
pub mod credentials;
pub mod error;
pub mod secrets;
pub mod signing;
pub mod sts;
mod xml;

pub use client::{AwsClient, Endpoints, HttpResponse, Transport, TransportError};
pub use credentials::{AssumedCredentials, RotatorCredentials};
pub use error::AwsError;
