//! Parameter Store as a sink: [`ssm::write_parameter`] over the AWS client, through the
//! service's gate, expecting the parameter to exist once the account's set was written.

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use secrecy::ExposeSecret;

use super::{Landed, Note, Sink, SinkWriter, WriteRequest};
use crate::aws::ssm::{self, ParameterWrite, ParameterWritten};
use crate::aws::{AwsClient, AwsError, Gate, Transport};
use crate::clock::TimeSource;

pub struct ParameterStoreWriter<'a, T, S, G> {
    pub client: &'a AwsClient<'a, T, S>,
    pub gate: G,
    /// `ssm_kms_key_id`.
    pub key_id: Option<&'a str>,
}

impl<T: Transport, S: TimeSource, G: Gate> SinkWriter for ParameterStoreWriter<'_, T, S, G> {
    fn sink(&self) -> Sink {
        Sink::ParameterStore
    }

    fn write<'a>(
        &'a self,
        request: &'a WriteRequest<'a>,
    ) -> LocalBoxFuture<'a, Result<Landed, AwsError>> {
        async move {
            let value = request.text();
            let (team, account) = (request.team, request.account);
            let name = &request.secret.name;
            let write =
                ParameterWrite::new(name, value.expose_secret(), self.key_id, team, account)?;
            let send = |operation| self.client.parameter_store(&self.gate, operation);
            let written = ssm::write_parameter(&write, request.expectation(), send).await?;
            let note = match &written {
                ParameterWritten::CreatedUntagged { tagging } => Some(Note {
                    operation: "tag_parameter",
                    error: tagging.clone(),
                }),
                _ => None,
            };
            Ok(Landed {
                written: written.written(),
                note,
            })
        }
        .boxed_local()
    }
}
