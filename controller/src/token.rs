//! Per-VMI tokens for the controller ↔ launcher channel: HMAC-SHA256 of the VMI's UID under a
//! key only the controller reads (a Secret in its namespace, made on first start). The
//! launcher gets its token in its launch Secret; the controller never stores or reads tokens.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::Client;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;
use tracing::info;

/// The Secret (in the controller's namespace) holding the token key.
pub const KEY_SECRET: &str = "kiln-controller-token-key";

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("the token key Secret {0}: {1}")]
    Api(String, kube::Error),
    #[error("the token key Secret {0} has no 32-byte key")]
    Malformed(String),
    #[error("no random source for a new token key")]
    Random,
}

pub struct TokenKey(hmac::Key);

impl TokenKey {
    pub fn from_bytes(key: &[u8]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// Reads the key Secret, creating it with a fresh random key the first time (two
    /// replicas starting at once: one creates, the other reads what it created).
    pub async fn load_or_create(client: Client, namespace: &str) -> Result<TokenKey, TokenError> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let name = format!("{namespace}/{KEY_SECRET}");
        let read = |s: Secret| -> Result<TokenKey, TokenError> {
            let key = s
                .data
                .and_then(|d| d.get("key").cloned())
                .filter(|k| k.0.len() == 32)
                .ok_or_else(|| TokenError::Malformed(name.clone()))?;
            Ok(TokenKey::from_bytes(&key.0))
        };
        if let Some(s) = api
            .get_opt(KEY_SECRET)
            .await
            .map_err(|e| TokenError::Api(name.clone(), e))?
        {
            return read(s);
        }
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| TokenError::Random)?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(KEY_SECRET.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "key".to_string(),
                ByteString(key.to_vec()),
            )])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!("made a new launcher token key in {name}");
                Ok(TokenKey::from_bytes(&key))
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let s = api
                    .get(KEY_SECRET)
                    .await
                    .map_err(|e| TokenError::Api(name.clone(), e))?;
                read(s)
            }
            Err(e) => Err(TokenError::Api(name, e)),
        }
    }

    /// The token of the VMI with `uid` (64 hex digits).
    pub fn token(&self, uid: &str) -> String {
        hmac::sign(&self.0, uid.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::TokenKey;

    #[test]
    fn tokens_differ_per_vmi_and_per_key_and_are_stable() {
        let a = TokenKey::from_bytes(&[1; 32]);
        let b = TokenKey::from_bytes(&[2; 32]);
        assert_eq!(a.token("uid-1"), a.token("uid-1"));
        assert_ne!(a.token("uid-1"), a.token("uid-2"));
        assert_ne!(a.token("uid-1"), b.token("uid-1"));
        assert_eq!(a.token("uid-1").len(), 64);
    }
}
