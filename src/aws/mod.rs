//! The two AWS APIs the rotation needs, spoken directly: SigV4 signing through
//! `aws-sigv4`, STS's query protocol and Secrets Manager's JSON 1.1 protocol. No SDK runs
//! in the component; these modules build requests and read answers, and [`client`] sends
//! them through whatever [`transport::Transport`] the runtime provides.

#[cfg(any(test, feature = "fakes"))]
pub mod answers;
pub mod client;
pub mod credentials;
pub mod endpoints;
pub mod error;
pub mod identity;
pub mod secrets;
pub mod session;
pub mod signing;
pub mod ssm;
pub mod sts;
pub mod transport;
mod xml;

pub use client::{AwsClient, Gate};
pub use credentials::{AssumedCredentials, RotatorCredentials};
pub use endpoints::Endpoints;
pub use error::{AwsError, ErrorKind};
pub use identity::{CredentialsSource, RotatorIdentity};
pub use secrets::{Expectation, Written};
pub use transport::{HttpResponse, Transport, TransportError};
