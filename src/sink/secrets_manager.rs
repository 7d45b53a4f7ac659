//! Secrets Manager as a sink: [`secrets::write_secret`] over the AWS client, through the
//! service's gate, expecting the secret to exist once the account's set was written.

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use secrecy::ExposeSecret;

use super::{Landed, Sink, SinkWriter, WriteRequest};
use crate::aws::secrets::{self, SecretWrite};
use crate::aws::{AwsClient, AwsError, Gate, Transport};
use crate::clock::TimeSource;

pub struct SecretsManagerWriter<'a, T, S, G> {
    pub client: &'a AwsClient<'a, T, S>,
    pub gate: G,
}

impl<T: Transport, S: TimeSource, G: Gate> SinkWriter for SecretsManagerWriter<'_, T, S, G> {
    fn sink(&self) -> Sink {
        Sink::SecretsManager
    }

    fn write<'a>(
        &'a self,
        request: &'a WriteRequest<'a>,
    ) -> LocalBoxFuture<'a, Result<Landed, AwsError>> {
        async move {
            let value = request.text();
            let write = SecretWrite::new(
                &request.secret.name,
                value.expose_secret(),
                request.credentials,
                request.team,
                request.account,
            );
            let send = |operation| self.client.secrets_manager(&self.gate, operation);
            let expectation = request.expectation();
            secrets::write_secret(&write, expectation, send)
                .await
                .map(Landed::from)
        }
        .boxed_local()
    }
}
