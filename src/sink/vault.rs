//! Vault as a sink: [`kv::write`] over the tick's [`VaultClient`], through the sink's
//! gate. A credential alone is its secret's `value` field, the field Concourse reads for
//! `((name))`, beside the set's `expiration` (by which a newer set is told from an older
//! one); the `json` layout is one secret of the four fields, read as `((name.field))`.

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use secrecy::ExposeSecret;

use super::{Content, Landed, Note, Sink, SinkWriter, WriteRequest};
use crate::aws::{AwsError, Gate, Transport};
use crate::clock::TimeSource;
use crate::vault::answer::Object;
use crate::vault::kv::{self, KvWrite};
use crate::vault::{KvKey, VaultClient};

pub struct VaultWriter<'a, T, S, G> {
    pub client: &'a VaultClient<'a, T, S>,
    pub gate: G,
}

impl<T: Transport, S: TimeSource, G: Gate> SinkWriter for VaultWriter<'_, T, S, G> {
    fn sink(&self) -> Sink {
        Sink::Vault
    }

    fn describe(&self, name: &str) -> String {
        match KvKey::of(name) {
            Ok(key) => self.client.describe(&key),
            Err(_) => self.sink().describe(name),
        }
    }

    fn write<'a>(
        &'a self,
        request: &'a WriteRequest<'a>,
    ) -> LocalBoxFuture<'a, Result<Landed, AwsError>> {
        async move {
            let name = &request.secret.name;
            let key = KvKey::of(name).map_err(|problem| {
                AwsError::Request(format!("Vault path for {name:?} {problem}"))
            })?;
            let layout = self.client.layout().await?;
            let write = KvWrite {
                key: &key,
                data: data(request),
                expiration: request.credentials.expiration,
                team: request.team,
                account: request.account,
                written_before: request.written_before,
            };
            let send = |sent| self.client.send(&self.gate, sent);
            let written = kv::write(&layout, &write, send).await?;
            Ok(Landed {
                written: written.written,
                note: (written.note).map(|(operation, error)| Note { operation, error }),
            })
        }
        .boxed_local()
    }
}

/// What the secret holds in Vault.
fn data(request: &WriteRequest<'_>) -> Object {
    let credentials = request.credentials;
    match request.secret.content {
        Content::Field(_) => {
            let mut data = Object::new();
            data.insert("value".into(), request.text().expose_secret().into());
            data.insert("expiration".into(), credentials.expiration_text().into());
            data
        }
        Content::Document => credentials.json_object(),
    }
}
