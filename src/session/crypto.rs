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
//! | record binding | `HMAC(secret, "tower-rampart/session/record-binding/v1")`, then per write `HMAC(that, len(store key) \|\| store key \|\| v \|\| c \|\| i \|\| x \|\| user)` (numbers as 8 bytes big-endian; user: `0`, or `1 \|\| len \|\| id`) |
//!
//! The record binding ([`SessionRecord::binding`], the Redis field `b`) makes the user id and
//! the timestamps that bound a session's life tamper-evident at rest, encrypted or not: it is
//! stored as `1.<v>.<base64url of the 32-byte MAC>`, where `v` is the version the write gives
//! the record. The last access `a` is left out (the stores' scripts refresh it on their own),
//! and so is the data, which is sealed on its own when encryption is on.
//!
//! The per-session encryption key keeps the number of random 96-bit nonces drawn under one
//! AES-GCM key tiny (one session's saves), far below the 2^32 limit, however long a secret lives.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::config::ConfigInner;
use super::error::{SessionError, ValueError};
use super::id::SessionKey;
use super::store::SessionRecord;

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
const BINDING_LABEL: &[u8] = b"tower-rampart/session/record-binding/v1";
/// The first part of a record binding, so the format can evolve.
const BINDING_FORMAT: &str = "1";
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
    binding: HmacSha256,
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
            binding: keyed(&hmac(secret, &[BINDING_LABEL])),
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

    /// The MAC of the fields of `record` that a binding covers, as stored under `store_key`
    /// at `version`.
    fn binding_mac(&self, store_key: &str, version: u64, record: &SessionRecord) -> HmacSha256 {
        let mut mac = self.binding.clone();
        // Length prefixes keep every field boundary unambiguous.
        mac.update(&(store_key.len() as u64).to_be_bytes());
        mac.update(store_key.as_bytes());
        for n in [
            version,
            record.created_micros,
            record.idle_micros,
            record.expires_micros,
        ] {
            mac.update(&n.to_be_bytes());
        }
        match &record.user_id {
            Some(user) => {
                mac.update(&[1]);
                mac.update(&(user.len() as u64).to_be_bytes());
                mac.update(user.as_bytes());
            }
            None => mac.update(&[0]),
        }
        mac
    }

    /// The binding of `record` stored under `store_key` at `version` (the version the write
    /// gives it: 1 for a create, the expected version + 1 for a save).
    pub(crate) fn bind(&self, store_key: &str, version: u64, record: &SessionRecord) -> String {
        let tag = self
            .binding_mac(store_key, version, record)
            .finalize()
            .into_bytes();
        format!("{BINDING_FORMAT}.{version}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Constant-time check of the MAC `tag` of `record` stored under `store_key` at
    /// `version`.
    fn verify_binding(
        &self,
        store_key: &str,
        version: u64,
        record: &SessionRecord,
        tag: &[u8],
    ) -> bool {
        self.binding_mac(store_key, version, record)
            .verify_slice(tag)
            .is_ok()
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

/// What a record's binding says about its user id and timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Integrity {
    /// The binding verifies under one of the configured keys, at the record's version.
    Bound,
    /// No binding this version can check: none (a record written before bindings existed),
    /// one of an unknown format (a later version's), or one written at another version (an
    /// earlier version of this crate saved the record since, leaving the field as it was).
    /// Indistinguishable from a binding removed by someone who can write to the store.
    Unbound,
    /// A binding that does not verify: the record was changed outside the session layer (or
    /// bound under a key no longer configured).
    Tampered,
}

/// Binds `record`, stored under `key` at `version` (see [`DerivedKeys::bind`]), with the
/// first configured key.
pub(super) fn bind(
    config: &ConfigInner,
    key: &SessionKey,
    version: u64,
    record: &SessionRecord,
) -> String {
    config.keys()[0].bind(key.as_str(), version, record)
}

/// Checks the binding of `record`, loaded from under `key`, against every configured key.
pub(super) fn check(config: &ConfigInner, key: &SessionKey, record: &SessionRecord) -> Integrity {
    let Some(binding) = record.binding.as_deref() else {
        return Integrity::Unbound;
    };
    let mut parts = binding.splitn(3, '.');
    if parts.next() != Some(BINDING_FORMAT) {
        return Integrity::Unbound;
    }
    let (Some(version), Some(tag)) = (parts.next(), parts.next()) else {
        return Integrity::Tampered;
    };
    // Only the canonical decimal form ("2", not "02" or "+2"): one binding, one spelling.
    let version = match version.parse::<u64>() {
        Ok(v) if v.to_string() == version => v,
        _ => return Integrity::Tampered,
    };
    if version != record.version {
        return Integrity::Unbound;
    }
    let mut raw = [0u8; 33];
    match URL_SAFE_NO_PAD.decode_slice(tag, &mut raw) {
        Ok(32) => {}
        _ => return Integrity::Tampered,
    }
    let tag = &raw[..32];
    if config
        .keys()
        .iter()
        .any(|k| k.verify_binding(key.as_str(), version, record, tag))
    {
        Integrity::Bound
    } else {
        Integrity::Tampered
    }
}

/// Why a stored record is no session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unreadable {
    /// Its binding does not verify.
    Tampered,
    /// It has no binding this version can check, and the configuration requires one.
    Unbound,
    /// Its data cannot be decoded (unknown key, corrupt, or plain while encryption is on).
    Undecodable,
}

impl Unreadable {
    /// A log line for this case: names no secret, no id, no user.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Unreadable::Tampered => {
                "session record fails its integrity check (user id or timestamps changed outside the session layer, or bound under a key no longer configured): treated as no session"
            }
            Unreadable::Unbound => {
                "session record fails its integrity check (no binding of its user id and timestamps, and bound records are required): treated as no session"
            }
            Unreadable::Undecodable => {
                "session record cannot be decoded (unknown key or corrupt): treated as no session"
            }
        }
    }
}

/// The data of a record loaded from under `key`, once its binding has been checked: a
/// tampered record, or an unbound one when bindings are required, is no session.
pub(super) fn open(
    config: &ConfigInner,
    key: &SessionKey,
    record: &SessionRecord,
) -> Result<Map<String, Value>, Unreadable> {
    match check(config, key, record) {
        Integrity::Tampered => return Err(Unreadable::Tampered),
        Integrity::Unbound if config.require_binding => return Err(Unreadable::Unbound),
        Integrity::Bound | Integrity::Unbound => {}
    }
    decode(config, key, &record.data).ok_or(Unreadable::Undecodable)
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

    fn bound_record() -> SessionRecord {
        SessionRecord {
            version: 2,
            created_micros: 1_700_000_000_000_000,
            accessed_micros: 1_700_000_020_000_000,
            idle_micros: 600_000_000,
            expires_micros: 1_700_003_600_000_000,
            user_id: Some("alice".into()),
            data: b"{}".to_vec(),
            binding: None,
        }
    }

    /// `bind("k1", 2, bound_record())` under the secret `[1; 32]` (checked against an
    /// independent implementation: Python's `hmac` and `struct`).
    const PINNED_BINDING: &str = "1.2.40LYcjeqxv5V_F2vZoeIIiyHF90YYIE9S5Aat7-BMxs";

    #[test]
    fn bindings_cover_key_version_times_and_user_and_are_pinned() {
        let a = DerivedKeys::derive(&[1u8; 32]);
        let r = bound_record();
        let binding = a.bind("k1", 2, &r);
        // Records stored by one release must verify under the next: the derivation is pinned.
        assert_eq!(binding, PINNED_BINDING);
        let tag = URL_SAFE_NO_PAD
            .decode(binding.rsplit('.').next().unwrap())
            .unwrap();
        assert!(a.verify_binding("k1", 2, &r, &tag));
        assert!(!DerivedKeys::derive(&[2u8; 32]).verify_binding("k1", 2, &r, &tag));
        assert!(!a.verify_binding("k2", 2, &r, &tag));
        assert!(!a.verify_binding("k1", 3, &r, &tag));
        let changed: [fn(&mut SessionRecord); 6] = [
            |r| r.created_micros += 1,
            |r| r.idle_micros += 1,
            |r| r.expires_micros += 1,
            |r| r.user_id = Some("mallory".into()),
            |r| r.user_id = Some("alice ".into()),
            |r| r.user_id = None,
        ];
        for (i, change) in changed.iter().enumerate() {
            let mut t = r.clone();
            change(&mut t);
            assert!(!a.verify_binding("k1", 2, &t, &tag), "change {i}");
        }
        // Not covered: the last access (refreshed by the stores), the data (sealed on its
        // own), the stored version (checked against the binding's own).
        let mut t = r.clone();
        t.accessed_micros += 1;
        t.data = b"{\"a\":1}".to_vec();
        t.version = 9;
        assert!(a.verify_binding("k1", 2, &t, &tag));
        // A user-less record differs from every user, the empty one included.
        let mut none = r.clone();
        none.user_id = None;
        let mut empty = r.clone();
        empty.user_id = Some(String::new());
        assert_ne!(a.bind("k1", 2, &none), a.bind("k1", 2, &empty));
    }

    #[test]
    fn check_tells_bound_unbound_and_tampered_records_apart() {
        let config = crate::session::SessionConfig::builder()
            .keys([[2u8; 32], [1u8; 32]])
            .build()
            .unwrap();
        let config = &config.inner;
        let key = SessionKey::parse("6b31000000000000000000000000000f").unwrap();
        let mut r = bound_record();
        let at = |r: &SessionRecord, binding: Option<&str>| {
            let mut r = r.clone();
            r.binding = binding.map(str::to_owned);
            check(config, &key, &r)
        };
        // Written with the first key, verified with any.
        let first = bind(config, &key, 2, &r);
        let second = DerivedKeys::derive(&[1u8; 32]).bind(key.as_str(), 2, &r);
        assert_eq!(at(&r, Some(&first)), Integrity::Bound);
        assert_eq!(at(&r, Some(&second)), Integrity::Bound);
        let other = DerivedKeys::derive(&[3u8; 32]).bind(key.as_str(), 2, &r);
        assert_eq!(at(&r, Some(&other)), Integrity::Tampered);
        // No binding, an unknown format, another version's: unbound.
        assert_eq!(at(&r, None), Integrity::Unbound);
        assert_eq!(at(&r, Some("2.2.anything")), Integrity::Unbound);
        r.version = 3;
        assert_eq!(at(&r, Some(&first)), Integrity::Unbound);
        r.version = 2;
        // Malformed: tampered.
        let tag = first.rsplit('.').next().unwrap();
        for bad in [
            "1",
            "1.2",
            "1.x.AAAA",
            &format!("1.2.{}", &tag[..42]),
            &format!("1.2.{tag}A"),
            &format!("1.2.{tag}.0"),
            &format!("1.02.{tag}"),
            &format!("1.+2.{tag}"),
        ] {
            assert_eq!(at(&r, Some(bad)), Integrity::Tampered, "{bad}");
        }
        r.user_id = Some("mallory".into());
        assert_eq!(at(&r, Some(&first)), Integrity::Tampered);
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
