//! Writing one secret into the KV engine, over a `send` closure (which adds the token,
//! gates writes and classifies error answers; see [`super::client`]).
//!
//! - KV v1: one plain write.
//! - KV v2: check-and-set. The metadata says the current version (none: 0, "create
//!   only"), and the write carries it as `cas`, so a write based on a stale read fails
//!   instead of clobbering what another writer stored meanwhile. On that failure the
//!   stored set is read: if it expires later than ours, it is newer (a node that took
//!   over) and kept; otherwise ours is written again on the new version. The metadata's
//!   `custom_metadata` names the team and account, as tags do in AWS.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::answer::{field, object, Object, CAS_MISMATCH};
use super::{KvKey, KvVersion};
use crate::aws::{AwsError, ErrorKind, HttpResponse, Written};

/// The `custom_metadata` key that names the secret's team.
pub const TEAM_LABEL: &str = "concourse-sts:team";
/// The `custom_metadata` key that names the secret's account.
pub const ACCOUNT_LABEL: &str = "concourse-sts:account";

/// One request to Vault's API, before the token and namespace are added.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultRequest {
    pub method: http::Method,
    /// After `/v1/`.
    pub path: String,
    pub body: Option<Value>,
}

impl VaultRequest {
    pub fn get(path: String) -> Self {
        Self {
            method: http::Method::GET,
            path,
            body: None,
        }
    }

    pub fn post(path: String, body: Value) -> Self {
        Self {
            method: http::Method::POST,
            path,
            body: Some(body),
        }
    }

    /// Whether it changes what Vault stores: such a request passes the sink's gate.
    pub fn is_write(&self) -> bool {
        self.method != http::Method::GET
    }

    /// `POST concourse/data/alpha/dev`, for error messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Where the KV engine keeps a key: its mount as Vault reports it, the part of
/// `vault_kv_mount` below that mount (Concourse's path prefix may reach into one), and
/// its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    pub mount: String,
    pub below: String,
    pub version: KvVersion,
}

impl KvLayout {
    /// Where a key's data is written and read.
    pub fn data(&self, key: &KvKey) -> String {
        match self.version {
            KvVersion::V2 => self.path("data/", key),
            _ => self.path("", key),
        }
    }

    fn metadata(&self, key: &KvKey) -> String {
        self.path("metadata/", key)
    }

    fn path(&self, api: &str, key: &KvKey) -> String {
        let below = match self.below.as_str() {
            "" => String::new(),
            below => format!("{below}/"),
        };
        format!("{}/{api}{below}{}", self.mount, key.as_str())
    }
}

/// One secret to write.
pub struct KvWrite<'a> {
    pub key: &'a KvKey,
    pub data: Object,
    /// The set's expiration: a stored set that expires later is newer.
    pub expiration: DateTime<Utc>,
    pub team: &'a str,
    pub account: &'a str,
    /// The account's set was written before (all KV v1 can go by to count creations).
    pub written_before: bool,
}

/// How a write ended: the outcome, and what went wrong beside a landed (or kept) value,
/// as the operation it belongs to and its error.
#[derive(Debug)]
pub struct KvWritten {
    pub written: Written,
    pub note: Option<(&'static str, AwsError)>,
}

/// Writes one secret under `layout` through `send`, which answers `Ok` for a 2xx and a
/// classified error otherwise.
pub async fn write<S, F>(
    layout: &KvLayout,
    write: &KvWrite<'_>,
    mut send: S,
) -> Result<KvWritten, AwsError>
where
    S: FnMut(VaultRequest) -> F,
    F: Future<Output = Result<HttpResponse, AwsError>>,
{
    let data = Value::Object(write.data.clone());
    if layout.version != KvVersion::V2 {
        send(VaultRequest::post(layout.data(write.key), data)).await?;
        let written = match write.written_before {
            true => Written::Updated,
            false => Written::Created,
        };
        return Ok(KvWritten {
            written,
            note: None,
        });
    }
    let mut metadata = read_metadata(layout, write.key, &mut send).await?;
    for conflicted in [false, true] {
        if conflicted {
            if let Some(kept) = newer_stored(layout, write, &mut send).await? {
                return Ok(kept);
            }
            metadata = read_metadata(layout, write.key, &mut send).await?;
        }
        let body = json!({ "data": data, "options": { "cas": metadata.version } });
        match send(VaultRequest::post(layout.data(write.key), body)).await {
            Ok(_) => {
                let note = label(layout, write, &metadata.labels, &mut send).await;
                let written = match metadata.version {
                    0 => Written::Created,
                    _ => Written::Updated,
                };
                return Ok(KvWritten { written, note });
            }
            Err(error) if error.code() == Some(CAS_MISMATCH) => {}
            Err(error) => return Err(error),
        }
    }
    Err(AwsError::Service {
        status: 400,
        code: CAS_MISMATCH.to_owned(),
        message: format!(
            "check-and-set: another writer wrote {} twice while this one wrote it",
            layout.data(write.key)
        ),
        request_id: None,
        kind: ErrorKind::Transient,
    })
}

/// A secret's current version (0 when there is none) and its `custom_metadata`.
struct Metadata {
    version: u64,
    labels: Object,
}

async fn read_metadata<S, F>(
    layout: &KvLayout,
    key: &KvKey,
    send: &mut S,
) -> Result<Metadata, AwsError>
where
    S: FnMut(VaultRequest) -> F,
    F: Future<Output = Result<HttpResponse, AwsError>>,
{
    let answer = match send(VaultRequest::get(layout.metadata(key))).await {
        Ok(answer) => object(&answer, "Vault's KV metadata")?,
        Err(error) if error.kind() == ErrorKind::NotFound => Object::new(),
        Err(error) => return Err(error),
    };
    let labels = field(&answer, &["data", "custom_metadata"])
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Ok(Metadata {
        version: field(&answer, &["data", "current_version"])
            .and_then(Value::as_u64)
            .unwrap_or(0),
        labels,
    })
}

/// After a check-and-set conflict: the stored set, kept (as a note saying so) when it
/// expires later than ours.
async fn newer_stored<S, F>(
    layout: &KvLayout,
    write: &KvWrite<'_>,
    send: &mut S,
) -> Result<Option<KvWritten>, AwsError>
where
    S: FnMut(VaultRequest) -> F,
    F: Future<Output = Result<HttpResponse, AwsError>>,
{
    let path = layout.data(write.key);
    let answer = match send(VaultRequest::get(path.clone())).await {
        Ok(answer) => object(&answer, "Vault's KV data")?,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let stored = field(&answer, &["data", "data", "expiration"])
        .and_then(Value::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok());
    let Some(stored) = stored.filter(|stored| *stored > write.expiration) else {
        return Ok(None);
    };
    let kept = AwsError::Service {
        status: 400,
        code: "VaultNewerSetKept".to_owned(),
        message: format!(
            "another writer stored a set expiring {} at {path} while this one wrote; it is newer than this one's ({}) and was kept",
            stored.to_utc().to_rfc3339(),
            write.expiration.to_rfc3339()
        ),
        request_id: None,
        kind: ErrorKind::Other,
    };
    Ok(Some(KvWritten {
        written: Written::Updated,
        note: Some(("vault_check_and_set", kept)),
    }))
}

/// Names team and account in the secret's `custom_metadata` (keeping the other keys
/// there), unless it already does; a failure is the write's note, not its failure.
async fn label<S, F>(
    layout: &KvLayout,
    write: &KvWrite<'_>,
    labels: &Object,
    send: &mut S,
) -> Option<(&'static str, AwsError)>
where
    S: FnMut(VaultRequest) -> F,
    F: Future<Output = Result<HttpResponse, AwsError>>,
{
    let wanted = [(TEAM_LABEL, write.team), (ACCOUNT_LABEL, write.account)];
    if wanted
        .iter()
        .all(|(key, value)| labels.get(*key).and_then(Value::as_str) == Some(*value))
    {
        return None;
    }
    let mut merged = labels.clone();
    for (key, value) in wanted {
        merged.insert(key.to_owned(), value.into());
    }
    let body = json!({ "custom_metadata": merged });
    let request = VaultRequest::post(layout.metadata(write.key), body);
    send(request)
        .await
        .err()
        .map(|error| ("vault_metadata", error))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;
    use crate::vault::answer;

    fn layout(version: KvVersion) -> KvLayout {
        KvLayout {
            mount: "concourse".into(),
            below: String::new(),
            version,
        }
    }

    /// A scripted `send`: records each request and answers from a list.
    struct Script {
        answers: RefCell<VecDeque<(u16, &'static str)>>,
        sent: RefCell<Vec<VaultRequest>>,
    }

    impl Script {
        fn new(answers: &[(u16, &'static str)]) -> Self {
            Self {
                answers: RefCell::new(answers.iter().copied().collect()),
                sent: RefCell::default(),
            }
        }

        fn run(&self, version: KvVersion, expiration: i64) -> Result<KvWritten, AwsError> {
            let key = KvKey::of("/concourse/alpha/dev").unwrap();
            let write = KvWrite {
                key: &key,
                data: json!({"value": "v"}).as_object().unwrap().clone(),
                expiration: DateTime::from_timestamp(expiration, 0).unwrap(),
                team: "alpha",
                account: "dev",
                written_before: false,
            };
            futures::executor::block_on(super::write(&layout(version), &write, |request| {
                let described = request.describe();
                self.sent.borrow_mut().push(request);
                let (status, body) = self.answers.borrow_mut().pop_front().expect("an answer");
                let response = HttpResponse::new(status, body);
                async move {
                    match status {
                        200..=299 => Ok(response),
                        _ => Err(answer::error(&response, &described)),
                    }
                }
            }))
        }

        fn calls(&self) -> Vec<String> {
            self.sent
                .borrow()
                .iter()
                .map(VaultRequest::describe)
                .collect()
        }

        fn cas(&self, n: usize) -> Value {
            self.sent.borrow()[n].body.as_ref().unwrap()["options"]["cas"].clone()
        }
    }

    const DATA: &str = "POST concourse/data/alpha/dev";
    const METADATA: &str = "GET concourse/metadata/alpha/dev";
    const WRITTEN: &str = r#"{"data":{"version":1}}"#;
    const LABELLED: &str = r#"{"data":{"current_version":4,"custom_metadata":{"concourse-sts:team":"alpha","concourse-sts:account":"dev"}}}"#;
    const CONFLICT: &str =
        r#"{"errors":["check-and-set parameter did not match the current version"]}"#;

    #[test]
    fn a_new_secret_is_created_with_cas_0_and_labelled() {
        let script = Script::new(&[(404, r#"{"errors":[]}"#), (200, WRITTEN), (204, "")]);
        let written = script.run(KvVersion::V2, 0).unwrap();
        assert_eq!(written.written, Written::Created);
        assert!(written.note.is_none());
        assert_eq!(
            script.calls(),
            [METADATA, DATA, "POST concourse/metadata/alpha/dev"]
        );
        assert_eq!(script.cas(1), 0);
        let labels = script.sent.borrow()[2].body.clone().unwrap()["custom_metadata"].clone();
        assert_eq!(labels[TEAM_LABEL], "alpha");
        assert_eq!(labels[ACCOUNT_LABEL], "dev");
        assert_eq!(
            script.sent.borrow()[1].body.as_ref().unwrap()["data"]["value"],
            "v"
        );
    }

    #[test]
    fn an_existing_labelled_secret_is_one_read_and_one_write_on_its_version() {
        let script = Script::new(&[(200, LABELLED), (200, WRITTEN)]);
        assert_eq!(
            script.run(KvVersion::V2, 0).unwrap().written,
            Written::Updated
        );
        assert_eq!(script.calls(), [METADATA, DATA]);
        assert_eq!(script.cas(1), 4);
    }

    #[test]
    fn a_conflict_with_an_older_set_writes_again_on_the_new_version() {
        let older = r#"{"data":{"data":{"value":"x","expiration":"1970-01-01T00:00:10Z"},"metadata":{"version":5}}}"#;
        let at_five = r#"{"data":{"current_version":5,"custom_metadata":{"concourse-sts:team":"alpha","concourse-sts:account":"dev"}}}"#;
        let script = Script::new(&[
            (200, LABELLED),
            (400, CONFLICT),
            (200, older),
            (200, at_five),
            (200, WRITTEN),
        ]);
        let written = script.run(KvVersion::V2, 100).unwrap();
        assert_eq!(written.written, Written::Updated);
        assert!(written.note.is_none());
        assert_eq!(
            script.calls(),
            [
                METADATA,
                DATA,
                "GET concourse/data/alpha/dev",
                METADATA,
                DATA
            ]
        );
        assert_eq!((script.cas(1), script.cas(4)), (4.into(), 5.into()));
    }

    #[test]
    fn a_conflict_with_a_newer_set_keeps_it() {
        let newer = r#"{"data":{"data":{"value":"x","expiration":"1970-01-01T01:00:00Z"},"metadata":{"version":5}}}"#;
        let script = Script::new(&[(200, LABELLED), (400, CONFLICT), (200, newer)]);
        let written = script.run(KvVersion::V2, 100).unwrap();
        let (operation, note) = written.note.unwrap();
        assert_eq!(operation, "vault_check_and_set");
        assert!(note.to_string().contains("was kept"), "{note}");
        assert_eq!(script.calls().len(), 3, "nothing more is written");
    }

    #[test]
    fn two_conflicts_in_a_row_are_left_to_a_retry() {
        let older = r#"{"data":{"data":{"value":"x"},"metadata":{"version":5}}}"#;
        let script = Script::new(&[
            (200, LABELLED),
            (400, CONFLICT),
            (200, older),
            (200, LABELLED),
            (400, CONFLICT),
        ]);
        let error = script.run(KvVersion::V2, 100).unwrap_err();
        assert_eq!(error.code(), Some(CAS_MISMATCH));
        assert!(error.is_retryable());
    }

    #[test]
    fn metadata_that_cannot_be_set_is_a_note_and_other_labels_stay() {
        let foreign = r#"{"data":{"current_version":2,"custom_metadata":{"owner":"platform"}}}"#;
        let denied = r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#;
        let script = Script::new(&[(200, foreign), (200, WRITTEN), (403, denied)]);
        let written = script.run(KvVersion::V2, 0).unwrap();
        assert_eq!(written.written, Written::Updated);
        let (operation, error) = written.note.unwrap();
        assert_eq!(operation, "vault_metadata");
        assert!(error.to_string().contains("concourse/metadata/alpha/dev"));
        let labels = script.sent.borrow()[2].body.clone().unwrap()["custom_metadata"].clone();
        assert_eq!(labels["owner"], "platform");
    }

    #[test]
    fn failures_end_the_write() {
        let denied = r#"{"errors":["permission denied"]}"#;
        let script = Script::new(&[(200, LABELLED), (403, denied)]);
        let error = script.run(KvVersion::V2, 0).unwrap_err();
        assert!(error.is_permanent());
        assert!(error.to_string().contains(DATA), "{error}");
        let sealed = Script::new(&[(503, r#"{"errors":["Vault is sealed"]}"#)]);
        assert!(sealed.run(KvVersion::V2, 0).unwrap_err().is_retryable());
    }

    #[test]
    fn kv_v1_is_one_plain_write() {
        let script = Script::new(&[(204, "")]);
        assert_eq!(
            script.run(KvVersion::V1, 0).unwrap().written,
            Written::Created
        );
        assert_eq!(script.calls(), ["POST concourse/alpha/dev"]);
        assert_eq!(
            script.sent.borrow()[0].body,
            Some(json!({"value": "v"})),
            "the data itself, no options"
        );
    }

    #[test]
    fn a_prefix_below_the_mount_goes_after_the_api_segment() {
        let key = KvKey::of("/concourse/alpha/dev").unwrap();
        let layout = KvLayout {
            mount: "secret".into(),
            below: "concourse".into(),
            version: KvVersion::V2,
        };
        assert_eq!(layout.data(&key), "secret/data/concourse/alpha/dev");
        assert_eq!(layout.metadata(&key), "secret/metadata/concourse/alpha/dev");
    }
}
