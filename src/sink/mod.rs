//! Where an account's credentials go. Every sink (Secrets Manager, Parameter Store,
//! Vault) is one shape, a [`SinkWriter`]: "write this secret of the account's set",
//! through its own client, each write passing the gate the executor gives the sink (its
//! pace, then the lease's fence). The executor knows no sink but through that trait, so
//! adding a sink adds a file here, and the clients stay free of each other's rules.

pub mod parameter_store;
pub mod secrets_manager;
pub mod vault;

use std::fmt;
use std::str::FromStr;

use futures::future::LocalBoxFuture;
use secrecy::SecretString;

use crate::aws::{AssumedCredentials, AwsError, Expectation, Written};
use crate::names::MAX_SECRET_NAME_LEN;
use crate::template::{SecretFormat, SecretPath};

/// One service credentials are written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sink {
    SecretsManager,
    ParameterStore,
    Vault,
}

impl Sink {
    const ALL: [Sink; 3] = [Sink::SecretsManager, Sink::ParameterStore, Sink::Vault];

    /// The name `secret_sink` lists it by and the state documents record it by.
    pub fn name(self) -> &'static str {
        match self {
            Sink::SecretsManager => "secretsmanager",
            Sink::ParameterStore => "ssm",
            Sink::Vault => "vault",
        }
    }

    /// The operation a failed attempt to write into it is reported as.
    pub fn operation(self) -> &'static str {
        match self {
            Sink::SecretsManager => "write_secret",
            Sink::ParameterStore => "put_parameter",
            Sink::Vault => "vault_write",
        }
    }

    /// A secret's name in a log line about this sink: Secrets Manager's as it is, the
    /// others' marked with the sink.
    pub fn describe(self, name: &str) -> String {
        match self {
            Sink::SecretsManager => name.to_owned(),
            other => format!("{name} ({})", other.name()),
        }
    }

    /// Why this sink could not take a secret of this name, phrased to stand alone.
    pub fn name_problem(self, name: &str) -> Option<String> {
        match self {
            Sink::SecretsManager => (name.len() > MAX_SECRET_NAME_LEN).then(|| {
                format!("secret name {name:?} is longer than Secrets Manager's {MAX_SECRET_NAME_LEN} characters")
            }),
            Sink::ParameterStore => crate::aws::ssm::parameter_name_problem(name)
                .map(|problem| format!("parameter name {name:?} {problem}")),
            Sink::Vault => crate::vault::KvKey::of(name)
                .err()
                .map(|problem| format!("Vault path for {name:?} {problem}")),
        }
    }
}

/// The sinks `secret_sink` lists, comma separated (`secretsmanager`, `ssm`, `vault`), in a
/// stable order; `both` is `secretsmanager,ssm`, as before lists existed. An account is
/// rotated only when every one of them holds its new set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSinks(Vec<Sink>);

impl Default for SecretSinks {
    fn default() -> Self {
        Self(vec![Sink::SecretsManager])
    }
}

impl FromStr for SecretSinks {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut listed = [false; Sink::ALL.len()];
        for item in text.split(',').map(str::trim) {
            let named =
                |sink: &Sink| item == sink.name() || (item == "both" && *sink != Sink::Vault);
            let found = Sink::ALL.iter().filter(|sink| named(sink));
            let mut any = false;
            for sink in found {
                listed[*sink as usize] = true;
                any = true;
            }
            if !any {
                return Err(format!("secret_sink {text:?}: {item:?} is not a sink; list secretsmanager, ssm and vault, comma separated (both = secretsmanager,ssm)"));
            }
        }
        let sinks = Sink::ALL.into_iter().filter(|sink| listed[*sink as usize]);
        Ok(Self(sinks.collect()))
    }
}

impl fmt::Display for SecretSinks {
    /// As the configuration fingerprint has always read it: a deployment that upgrades
    /// keeps its accounts' fingerprints, so nothing is rewritten for the upgrade alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0[..] {
            [Sink::SecretsManager, Sink::ParameterStore] => f.write_str("both"),
            _ => {
                let names: Vec<&str> = self.0.iter().map(|sink| sink.name()).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

impl SecretSinks {
    pub fn sinks(&self) -> &[Sink] {
        &self.0
    }

    pub fn contains(&self, sink: Sink) -> bool {
        self.0.contains(&sink)
    }

    /// Why one of the names `format` writes under `path` could not be written to every
    /// sink: too long for Secrets Manager, not a name Parameter Store or Vault takes.
    pub fn path_problem(&self, path: &SecretPath, format: SecretFormat) -> Option<String> {
        path.names(format)
            .iter()
            .find_map(|name| self.0.iter().find_map(|sink| sink.name_problem(name)))
    }
}

/// One credential of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AccessKeyId,
    SecretAccessKey,
    SessionToken,
}

/// What one secret of an account's set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// One credential alone (the `split` layout, the Lambda's).
    Field(Field),
    /// The whole set with its expiration (the `json` layout), written at once.
    Document,
}

impl Content {
    /// As a string secret (Secrets Manager, Parameter Store): the credential itself, or
    /// the set as one JSON object.
    pub fn text(self, credentials: &AssumedCredentials) -> SecretString {
        let [access, secret, token] = credentials.secret_values();
        match self {
            Content::Field(Field::AccessKeyId) => access.to_owned().into(),
            Content::Field(Field::SecretAccessKey) => secret.to_owned().into(),
            Content::Field(Field::SessionToken) => token.to_owned().into(),
            Content::Document => credentials.json_document(),
        }
    }
}

/// One secret of an account's set: its rendered name and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub content: Content,
}

/// The secrets `format` lays out under `path`, in the order of [`SecretPath::names`].
pub fn secret_set(path: &SecretPath, format: SecretFormat) -> Vec<Secret> {
    let fields = [
        Field::AccessKeyId,
        Field::SecretAccessKey,
        Field::SessionToken,
    ];
    let mut set = Vec::new();
    if format.split() {
        set.extend(
            path.secret_names()
                .into_iter()
                .zip(fields)
                .map(|(name, field)| Secret {
                    name,
                    content: Content::Field(field),
                }),
        );
    }
    if format.json() {
        set.push(Secret {
            name: path.as_str().to_owned(),
            content: Content::Document,
        });
    }
    set
}

/// One secret of a due account, as a sink is asked to write it.
pub struct WriteRequest<'a> {
    pub secret: &'a Secret,
    pub credentials: &'a AssumedCredentials,
    pub team: &'a str,
    pub account: &'a str,
    /// This account's set was written before with this configuration, so the secret
    /// most likely exists (see [`WriteRequest::expectation`]).
    pub written_before: bool,
}

impl WriteRequest<'_> {
    /// The secret's value as a string secret.
    pub fn text(&self) -> SecretString {
        self.secret.content.text(self.credentials)
    }

    /// Whether the secret most likely exists: Secrets Manager and Parameter Store try
    /// first the call that fits (a new version or overwrite, else a create).
    pub fn expectation(&self) -> Expectation {
        match self.written_before {
            true => Expectation::Exists,
            false => Expectation::Missing,
        }
    }

    /// Every credential value of the set, to scrub from error text.
    pub fn values(&self) -> [&str; 3] {
        self.credentials.secret_values()
    }
}

/// A secret write that landed.
#[derive(Debug)]
pub struct Landed {
    pub written: Written,
    /// Something beside the value that did not work out (a parameter left untagged, Vault
    /// metadata not set, a newer set another writer stored kept in place): reported as a
    /// failed attempt of its own operation, not as a failed write.
    pub note: Option<Note>,
}

impl From<Written> for Landed {
    fn from(written: Written) -> Self {
        Landed {
            written,
            note: None,
        }
    }
}

/// What [`Landed::note`] reports.
#[derive(Debug)]
pub struct Note {
    pub operation: &'static str,
    pub error: AwsError,
}

/// One sink, as the executor sees it: the same call for every sink.
pub trait SinkWriter {
    fn sink(&self) -> Sink;

    /// How a secret's name reads in a log line about this sink.
    fn describe(&self, name: &str) -> String {
        self.sink().describe(name)
    }

    /// One attempt to write one secret; the executor retries it in the standard mode.
    fn write<'a>(
        &'a self,
        request: &'a WriteRequest<'a>,
    ) -> LocalBoxFuture<'a, Result<Landed, AwsError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::SecretPathTemplate;
    use secrecy::ExposeSecret;

    #[test]
    fn secret_sink_is_a_list_and_both_means_the_two_aws_sinks() {
        let parse = |text: &str| text.parse::<SecretSinks>().map(|s| s.sinks().to_vec());
        use Sink::*;
        assert_eq!(parse("secretsmanager"), Ok(vec![SecretsManager]));
        assert_eq!(parse(" both"), Ok(vec![SecretsManager, ParameterStore]));
        assert_eq!(parse("vault"), Ok(vec![Vault]));
        assert_eq!(
            parse("vault, secretsmanager,vault"),
            Ok(vec![SecretsManager, Vault])
        );
        assert_eq!(
            parse("both,vault"),
            Ok(vec![SecretsManager, ParameterStore, Vault])
        );
        for bad in ["", "s3", "vault,", "secretsmanager;ssm"] {
            let error = parse(bad).unwrap_err();
            assert!(error.starts_with("secret_sink"), "{bad:?}: {error}");
        }
    }

    /// The fingerprint reads the list as it read the enum before, so an upgrade rewrites
    /// nothing.
    #[test]
    fn the_list_reads_as_the_old_names() {
        let shown = |text: &str| text.parse::<SecretSinks>().unwrap().to_string();
        assert_eq!(shown("secretsmanager"), "secretsmanager");
        assert_eq!(shown("ssm"), "ssm");
        assert_eq!(shown("ssm,secretsmanager"), "both");
        assert_eq!(shown("both"), "both");
        assert_eq!(shown("vault,secretsmanager"), "secretsmanager,vault");
        assert_eq!(SecretSinks::default().to_string(), "secretsmanager");
    }

    #[test]
    fn the_set_follows_the_format() {
        let path = SecretPathTemplate::default().render("t", "a");
        let set = secret_set(&path, SecretFormat::Both);
        let names: Vec<&str> = set.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, path.names(SecretFormat::Both));
        assert_eq!(set[2].content, Content::Field(Field::SessionToken));
        assert_eq!(set[3].content, Content::Document);
        assert_eq!(secret_set(&path, SecretFormat::Json).len(), 1);
    }

    #[test]
    fn names_are_checked_by_each_sink_they_go_to() {
        let long = "a".repeat(64);
        let template: SecretPathTemplate =
            format!("/{}/{{{{.Team}}}}/{{{{.Account}}}}", "p".repeat(400))
                .parse()
                .unwrap();
        let path = template.render(&long, &long);
        let sinks = |text: &str| text.parse::<SecretSinks>().unwrap();
        let error = sinks("secretsmanager")
            .path_problem(&path, SecretFormat::Split)
            .unwrap();
        assert!(
            error.contains("longer than Secrets Manager's 512"),
            "{error}"
        );
        assert_eq!(
            sinks("ssm").path_problem(&path, SecretFormat::Split),
            None,
            "Parameter Store takes names of up to 947 characters"
        );
        assert!(sinks("both")
            .path_problem(&path, SecretFormat::Split)
            .unwrap()
            .contains("Secrets Manager's 512"));
        let awsteam: SecretPathTemplate = "/{{.Team}}/{{.Account}}".parse().unwrap();
        let error = sinks("ssm")
            .path_problem(&awsteam.render("awsteam", "a"), SecretFormat::Json)
            .unwrap();
        assert!(
            error.starts_with("parameter name \"/awsteam/a\" must not start"),
            "{error}"
        );
        let default = SecretPathTemplate::default().render("t", "a");
        assert_eq!(
            sinks("both,vault").path_problem(&default, SecretFormat::Both),
            None
        );
    }

    #[test]
    fn contents_as_text() {
        let credentials = AssumedCredentials {
            access_key_id: "ASIA".to_owned().into(),
            secret_access_key: "S".to_owned().into(),
            session_token: "T".to_owned().into(),
            expiration: chrono::DateTime::UNIX_EPOCH,
        };
        let text = |content: Content| content.text(&credentials).expose_secret().to_owned();
        assert_eq!(text(Content::Field(Field::AccessKeyId)), "ASIA");
        assert_eq!(text(Content::Field(Field::SessionToken)), "T");
        let document: serde_json::Value = serde_json::from_str(&text(Content::Document)).unwrap();
        assert_eq!(document["secret_access_key"], "S");
    }
}
