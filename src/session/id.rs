//! Session ids and the hash-derived [`SessionKey`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use super::crypto::random_bytes;
use crate::digest::sha256_hex128;

/// Bytes of randomness in a session id (128 bits).
pub(crate) const ID_LEN: usize = 16;
/// Hex characters in a [`SessionKey`] (128 bits of a SHA-256).
const KEY_HEX_LEN: usize = 32;
const KEY_LABEL: &[u8] = b"tower-rampart/session/store-key/v1:";

/// A session id: 128 bits from the operating system's CSPRNG.
///
/// Never printed: `Debug` shows the derived [`SessionKey`] only.
#[derive(Clone)]
pub(crate) struct SessionId {
    pub(super) bytes: [u8; ID_LEN],
    /// Derived on first use: requests that never touch their session skip the hash.
    key: OnceLock<SessionKey>,
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SessionId {}

impl SessionId {
    pub(crate) fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; ID_LEN];
        random_bytes(&mut bytes)?;
        Ok(Self::from_bytes(bytes))
    }

    pub(super) fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        Self {
            bytes,
            key: OnceLock::new(),
        }
    }

    /// The hash-derived key this session is stored under.
    pub(crate) fn key(&self) -> &SessionKey {
        self.key.get_or_init(|| SessionKey::derive(&self.bytes))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionId").field(self.key()).finish()
    }
}

/// A session's public name: the first 128 bits of a domain-separated SHA-256 of its id, in
/// lowercase hex (32 characters).
///
/// Safe to log, to put in metrics, and to use as part of a Redis key: the id (and so the
/// cookie) cannot be recovered from it. Stores keep sessions under this key, so a dump of the
/// store holds no usable cookie value. It is not keyed by the signing secret on purpose: the
/// id is 128 random bits (a keyed hash would add nothing), and the key must not change when
/// signing keys are rotated.
///
/// ```
/// use tower_rampart::session::SessionKey;
///
/// let key = SessionKey::parse("0123456789abcdef0123456789abcdef").unwrap();
/// assert_eq!(key.as_str().len(), 32);
/// assert_eq!(key.to_string(), "0123456789abcdef0123456789abcdef");
/// assert!(SessionKey::parse("not a key").is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(Arc<str>);

impl SessionKey {
    fn derive(id: &[u8; ID_LEN]) -> Self {
        Self(sha256_hex128(&[KEY_LABEL, id]).into())
    }

    /// Parses the text form (32 lowercase hex characters), e.g. when a store lists its keys.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == KEY_HEX_LEN && text.bytes().all(|b| HEX.contains(&b)))
            .then(|| Self(text.into()))
    }

    /// The key as 32 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionKey").field(&&*self.0).finish()
    }
}

impl AsRef<str> for SessionKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn session_key_is_hex_and_hides_the_id() {
        let id = SessionId::generate().unwrap();
        let key = id.key().as_str();
        assert_eq!(key.len(), KEY_HEX_LEN);
        assert!(SessionKey::parse(key).is_some());
        let id_b64 = URL_SAFE_NO_PAD.encode(id.bytes);
        assert!(!format!("{id:?}").contains(&id_b64));
        assert!(SessionKey::parse("0123456789ABCDEF0123456789abcdef").is_none());
    }

    #[test]
    fn session_key_derivation_is_pinned() {
        // Stores keep sessions under this name: it must never change.
        // SHA-256("tower-rampart/session/store-key/v1:" || 00 01 .. 0f), first 16 bytes.
        let id: [u8; ID_LEN] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            SessionId::from_bytes(id).key().as_str(),
            "f6de64fb70782095580adb0884b56eac"
        );
    }
}
