//! Key derivation, cookie signatures and encryption of records at rest.
//!
//! Every key used by the session layer is derived from the configured secret material with a
//! domain-separated HMAC-SHA256, so one secret can safely serve several purposes:
//!
//! | purpose | derivation |
//! |---|---|
//! | cookie signature | `HMAC(secret, "tower-rampart/session/cookie-signing/v1")` |
//! | signature of a cookie carrying a user tag | `HMAC(secret, "tower-rampart/session/cookie-signing-user-tag/v1")` |
//! | user tag | `HMAC(secret, "tower-rampart/session/user-tag/v1")`, then per user `HMAC(that, user id)`, first 16 bytes |
//! | record encryption | `HMAC(secret, "tower-rampart/session/record-encryption/v1")`, then per session `HMAC(that, store key)` |
//! | session handles | `HMAC(secret, "tower-rampart/session/handle/v1")`, then per session `HMAC(that, len(user) \|\| user \|\| store key)` |
//!
//! The per-session encryption key keeps the number of random 96-bit nonces drawn under one
//! AES-GCM key tiny (one session's saves), far below the 2^32 limit, however long a secret lives.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::config::ConfigInner;
use super::error::{SessionError, ValueError};
use super::id::SessionKey;

type HmacSha256 = Hmac<Sha256>;

const SIGNING_LABEL: &[u8] = b"tower-rampart/session/cookie-signing/v1";
const TAGGED_SIGNING_LABEL: &[u8] = b"tower-rampart/session/cookie-signing-user-tag/v1";
const USER_TAG_LABEL: &[u8] = b"tower-rampart/session/user-tag/v1";
/// Bytes of a user tag (a truncated HMAC-SHA256 of the user id).
pub(crate) const USER_TAG_LEN: usize = 16;
const ENCRYPTION_LABEL: &[u8] = b"tower-rampart/session/record-encryption/v1";
const HANDLE_LABEL: &[u8] = b"tower-rampart/session/handle/v1";
/// Bytes of a session handle (128 bits of an HMAC-SHA256).
pub(crate) const HANDLE_LEN: usize = 16;
const RECORD_AAD_LABEL: &[u8] = b"tower-rampart/session/record/v1:";
/// First byte of an encrypted record, so the format can evolve.
const ENCRYPTED_FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;

/// HMAC-SHA256 of `parts` (concatenated) under `key`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// The keys derived from one configured secret, kept as keyed HMAC states (cloning one skips
/// the two key-setup compressions of every use).
#[derive(Clone)]
pub(crate) struct DerivedKeys {
    signing: HmacSha256,
    /// Signs cookies that carry a user tag: a key of its own, so a signature of one form is
    /// never valid for the other.
    tagged_signing: HmacSha256,
    user_tag: HmacSha256,
    encryption: HmacSha256,
    handles: HmacSha256,
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

impl DerivedKeys {
    pub(crate) fn derive(secret: &[u8]) -> Self {
        Self {
            signing: keyed(&hmac(secret, &[SIGNING_LABEL])),
            tagged_signing: keyed(&hmac(secret, &[TAGGED_SIGNING_LABEL])),
            user_tag: keyed(&hmac(secret, &[USER_TAG_LABEL])),
            encryption: keyed(&hmac(secret, &[ENCRYPTION_LABEL])),
            handles: keyed(&hmac(secret, &[HANDLE_LABEL])),
        }
    }

    /// The handle of the session stored under `store_key` as its user `user` sees it: not
    /// the id, the cookie nor the store key, and not reversible to them; another user's
    /// handle of the same key differs.
    pub(crate) fn handle(&self, user: &str, store_key: &str) -> [u8; HANDLE_LEN] {
        let mut mac = self.handles.clone();
        // The length prefix keeps (user, key) pairs unambiguous.
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(store_key.as_bytes());
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        let mut handle = [0u8; HANDLE_LEN];
        handle.copy_from_slice(&full[..HANDLE_LEN]);
        handle
    }

    fn cookie_mac(base: &HmacSha256, name: &str, parts: &[&[u8]]) -> HmacSha256 {
        // The length prefix keeps (name, id) pairs unambiguous.
        let mut mac = base.clone();
        mac.update(&(name.len() as u64).to_be_bytes());
        mac.update(name.as_bytes());
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// The cookie tag of `id` for a cookie called `name`.
    pub(crate) fn sign(&self, name: &str, id: &[u8]) -> [u8; 32] {
        Self::cookie_mac(&self.signing, name, &[id])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Constant-time check of a cookie tag.
    pub(crate) fn verify(&self, name: &str, id: &[u8], tag: &[u8]) -> bool {
        Self::cookie_mac(&self.signing, name, &[id])
            .verify_slice(tag)
            .is_ok()
    }

    /// The signature of a cookie carrying `id` and the user tag `user` (both fixed-length).
    pub(crate) fn sign_tagged(&self, name: &str, id: &[u8], user: &[u8]) -> [u8; 32] {
        Self::cookie_mac(&self.tagged_signing, name, &[id, user])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Constant-time check of the signature of a cookie carrying a user tag.
    pub(crate) fn verify_tagged(&self, name: &str, id: &[u8], user: &[u8], tag: &[u8]) -> bool {
        Self::cookie_mac(&self.tagged_signing, name, &[id, user])
            .verify_slice(tag)
            .is_ok()
    }

    /// The user tag of `user_id`: an opaque, stable identifier of the user that only the
    /// holders of this secret can compute (the user id cannot be recovered from it).
    pub(crate) fn user_tag(&self, user_id: &str) -> [u8; USER_TAG_LEN] {
        let mut mac = self.user_tag.clone();
        mac.update(user_id.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; USER_TAG_LEN];
        tag.copy_from_slice(&full[..USER_TAG_LEN]);
        tag
    }

    fn record_cipher(&self, store_key: &str) -> Aes256Gcm {
        let mut mac = self.encryption.clone();
        mac.update(store_key.as_bytes());
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        Aes256Gcm::new(&key.into())
    }

    /// `format || nonce || ciphertext+tag`, authenticated with the store key as AAD so a record
    /// cannot be moved to another session.
    pub(crate) fn encrypt(
        &self,
        store_key: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, getrandom::Error> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let aad = [RECORD_AAD_LABEL, store_key.as_bytes()].concat();
        let ciphertext = self
            .record_cipher(store_key)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // AES-GCM encryption only fails for plaintexts of more than 64 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(ENCRYPTED_FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// The plaintext, or `None` when the record was not encrypted by this key for this store key.
    pub(crate) fn decrypt(&self, store_key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&format, rest) = sealed.split_first()?;
        if format != ENCRYPTED_FORMAT || rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let aad = [RECORD_AAD_LABEL, store_key.as_bytes()].concat();
        self.record_cipher(store_key)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()
    }
}

impl std::fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKeys(<redacted>)")
    }
}

/// Bytes that sealing adds to the JSON: the format byte, the nonce and the GCM tag.
pub(super) const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// The stored size of data whose JSON is `json_len` bytes long.
pub(super) fn encoded_len(config: &ConfigInner, json_len: usize) -> usize {
    if config.encrypt {
        json_len + SEAL_OVERHEAD
    } else {
        json_len
    }
}

/// The stored form of session data: JSON, sealed with the first key unless encryption at
/// rest is off. Data larger than the configured limit is refused, never truncated.
pub(super) fn encode(
    config: &ConfigInner,
    key: &SessionKey,
    data: &Map<String, Value>,
) -> Result<Vec<u8>, SessionError> {
    let json =
        serde_json::to_vec(data).map_err(|_| SessionError::Serialize(ValueError::default()))?;
    let size = encoded_len(config, json.len());
    if size > config.max_record_bytes {
        return Err(SessionError::TooLarge {
            size,
            limit: config.max_record_bytes,
        });
    }
    if !config.encrypt {
        return Ok(json);
    }
    config.keys()[0]
        .encrypt(key.as_str(), &json)
        .map_err(|_| SessionError::Random)
}

/// The data of a record: decrypted with any configured key, or plain JSON when encryption is
/// off (so turning it off keeps encrypted sessions readable, and turning it on does not
/// trust records it did not seal).
pub(super) fn decode(
    config: &ConfigInner,
    key: &SessionKey,
    bytes: &[u8],
) -> Option<Map<String, Value>> {
    if bytes.first() == Some(&b'{') {
        return if config.encrypt {
            None
        } else {
            serde_json::from_slice(bytes).ok()
        };
    }
    config
        .keys()
        .iter()
        .find_map(|k| k.decrypt(key.as_str(), bytes))
        .and_then(|plain| serde_json::from_slice(&plain).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `handle("alice", "k1")` under the secret `[1; 32]`.
    const PINNED_HANDLE: &str = "763e45b93e13217594617a051a001d3e";

    #[test]
    fn sign_and_verify_are_bound_to_key_name_and_id() {
        let a = DerivedKeys::derive(&[1u8; 32]);
        let b = DerivedKeys::derive(&[2u8; 32]);
        let tag = a.sign("session", b"0123456789abcdef");
        assert!(a.verify("session", b"0123456789abcdef", &tag));
        assert!(!b.verify("session", b"0123456789abcdef", &tag));
        assert!(!a.verify("other", b"0123456789abcdef", &tag));
        assert!(!a.verify("session", b"0123456789abcdeF", &tag));
        assert!(!a.verify("session", b"0123456789abcdef", &tag[..31]));
    }

    #[test]
    fn tagged_signatures_are_bound_to_id_and_user_tag_and_separate_from_untagged_ones() {
        let a = DerivedKeys::derive(&[1u8; 32]);
        let b = DerivedKeys::derive(&[2u8; 32]);
        let id = b"0123456789abcdef";
        let user = a.user_tag("alice");
        let sig = a.sign_tagged("session", id, &user);
        assert!(a.verify_tagged("session", id, &user, &sig));
        assert!(!b.verify_tagged("session", id, &user, &sig));
        assert!(!a.verify_tagged("other", id, &user, &sig));
        assert!(!a.verify_tagged("session", b"0123456789abcdeF", &user, &sig));
        assert!(!a.verify_tagged("session", id, &a.user_tag("bob"), &sig));
        // Domain separation: the untagged signature of `id || user` is not a tagged one, and
        // the other way round.
        let concatenated = [id.as_slice(), user.as_slice()].concat();
        let untagged = a.sign("session", &concatenated);
        assert!(!a.verify_tagged("session", id, &user, &untagged));
        assert!(!a.verify("session", &concatenated, &sig));
    }

    #[test]
    fn user_tags_are_keyed_stable_and_distinct() {
        let a = DerivedKeys::derive(&[1u8; 32]);
        let b = DerivedKeys::derive(&[2u8; 32]);
        assert_eq!(a.user_tag("alice"), a.user_tag("alice"));
        assert_ne!(a.user_tag("alice"), a.user_tag("alice "));
        assert_ne!(a.user_tag("alice"), b.user_tag("alice"));
        assert!(!a.user_tag("alice").windows(5).any(|w| w == b"alice"));
    }

    #[test]
    fn handles_are_bound_to_secret_user_and_key_and_pinned() {
        let a = DerivedKeys::derive(&[1u8; 32]);
        let b = DerivedKeys::derive(&[2u8; 32]);
        let h = a.handle("alice", "k1");
        assert_eq!(h, a.handle("alice", "k1"));
        assert_ne!(h, b.handle("alice", "k1"));
        assert_ne!(h, a.handle("bob", "k1"));
        assert_ne!(h, a.handle("alice", "k2"));
        // The length prefix: ("ab", "c..") and ("a", "bc..") differ.
        assert_ne!(a.handle("ab", "c"), a.handle("a", "bc"));
        // Handles handed out must stay valid across releases: the derivation is pinned.
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED_HANDLE);
    }

    #[test]
    fn encryption_round_trips_and_is_bound_to_the_store_key() {
        let keys = DerivedKeys::derive(&[7u8; 32]);
        let sealed = keys.encrypt("k1", b"secret token").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(keys.decrypt("k1", &sealed).unwrap(), b"secret token");
        assert!(keys.decrypt("k2", &sealed).is_none());
        assert!(
            DerivedKeys::derive(&[8u8; 32])
                .decrypt("k1", &sealed)
                .is_none()
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(keys.decrypt("k1", &tampered).is_none());
        // Two encryptions of the same plaintext differ (random nonce).
        assert_ne!(sealed, keys.encrypt("k1", b"secret token").unwrap());
    }
}
