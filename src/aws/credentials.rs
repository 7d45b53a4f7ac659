//! Credential types. Their secret parts are `secrecy` values, so neither `Debug` nor a
//! careless `format!` can print them; reading one is an explicit `expose_secret()`.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// The rotator identity: the keys this service signs its own requests with.
#[derive(Clone)]
#[must_use]
pub struct RotatorCredentials {
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
}

impl fmt::Debug for RotatorCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatorCredentials")
            .field("has_session_token", &self.session_token.is_some())
            .finish_non_exhaustive()
    }
}

impl RotatorCredentials {
    /// Every secret string these credentials hold, for scrubbing text that leaves the
    /// component (AWS echoes parts of requests in some error messages).
    pub fn secret_values(&self) -> Vec<&str> {
        let mut values = vec![
            self.access_key_id.expose_secret(),
            self.secret_access_key.expose_secret(),
        ];
        values.extend(self.session_token.as_ref().map(|t| t.expose_secret()));
        values
    }
}

/// Temporary credentials returned by `AssumeRole`, on their way into Secrets Manager.
#[must_use]
pub struct AssumedCredentials {
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    pub expiration: DateTime<Utc>,
}

impl fmt::Debug for AssumedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumedCredentials")
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl AssumedCredentials {
    /// The three secret values in the Lambda's order: access key, secret key, session token.
    pub fn secret_values(&self) -> [&str; 3] {
        [
            self.access_key_id.expose_secret(),
            self.secret_access_key.expose_secret(),
            self.session_token.expose_secret(),
        ]
    }
}

impl AssumedCredentials {
    /// These credentials as the rotator's own, when it rotates as a role it assumed.
    pub fn to_rotator_credentials(&self) -> RotatorCredentials {
        RotatorCredentials {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: Some(self.session_token.clone()),
        }
    }

    /// The single-secret layout: one JSON object, so a reader can never see a mix.
    pub fn json_document(&self) -> SecretString {
        serde_json::Value::Object(self.json_object())
            .to_string()
            .into()
    }

    /// The fields of [`AssumedCredentials::json_document`], for a store that keeps
    /// fields (Vault). The values are credentials: the object is dropped once written.
    pub fn json_object(&self) -> serde_json::Map<String, serde_json::Value> {
        let [access_key_id, secret_access_key, session_token] = self.secret_values();
        // Inserted one by one: `from_iter` would bring a sort into the component.
        let mut object = serde_json::Map::new();
        object.insert("access_key_id".into(), access_key_id.into());
        object.insert("secret_access_key".into(), secret_access_key.into());
        object.insert("session_token".into(), session_token.into());
        object.insert("expiration".into(), self.expiration_text().into());
        object
    }

    /// The expiration as the secrets state it: RFC 3339, whole seconds, UTC.
    pub fn expiration_text(&self) -> String {
        self.expiration
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secret_values() {
        let rotator = RotatorCredentials {
            access_key_id: "AKIDVALUE".into(),
            secret_access_key: "SECRETVALUE".into(),
            session_token: Some("TOKENVALUE".into()),
        };
        let assumed = AssumedCredentials {
            access_key_id: "ASIAVALUE".into(),
            secret_access_key: "ASSUMEDSECRET".into(),
            session_token: "ASSUMEDTOKEN".into(),
            expiration: DateTime::UNIX_EPOCH,
        };
        let printed = format!("{rotator:?} {rotator:#?} {assumed:?} {assumed:#?}");
        for secret in [
            "AKIDVALUE",
            "SECRETVALUE",
            "TOKENVALUE",
            "ASIAVALUE",
            "ASSUMEDSECRET",
            "ASSUMEDTOKEN",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("has_session_token: true"));
        let document: serde_json::Value =
            serde_json::from_str(assumed.json_document().expose_secret()).unwrap();
        assert_eq!(document["access_key_id"], "ASIAVALUE");
        assert_eq!(document["secret_access_key"], "ASSUMEDSECRET");
        assert_eq!(document["session_token"], "ASSUMEDTOKEN");
        assert_eq!(document["expiration"], "1970-01-01T00:00:00Z");
    }
}
