//! Access-token validation against a JWKS, and the development identity.
//!
//! [`TokenValidator`] checks a token the way Entra ID tokens must be checked: RS256 only
//! (`alg: none` and HMAC-with-the-public-key confusion are refused before any key is
//! used), signature against the key named by `kid`, `exp`/`nbf` with 60 s leeway, `aud`
//! and `iss` against lists, and `tid` equal to the tenant. Signing keys come from the
//! JWKS URL, are cached, and are fetched again when a token names an unknown `kid`, but at
//! most once per [`TokenValidatorBuilder::min_refetch_interval`] (30 s by default), so a
//! stream of tokens with made-up `kid`s cannot make the service fetch per request.
//!
//! Each failed check is its own [`TokenError`] variant: 401 with a message saying which
//! check failed (never echoing the token), or 503 when the keys cannot be fetched.
//!
//! [`dev::DevIdentity`] is the development stand-in for Entra ID: a key pair generated at
//! start, its JWKS, and tokens minted with the configured audience, issuer and tenant.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use fabric_gateway::auth::{dev::DevIdentity, TokenValidator};
//! use fabric_gateway::config::Config;
//!
//! let config = Config::from_lookup(|_| None).unwrap(); // development defaults
//! let identity = DevIdentity::generate(&config.auth).unwrap();
//! let validator = TokenValidator::builder(config.auth.clone())
//!     .trust_key_set(identity.jwks())
//!     .build();
//! let token = identity.mint("ada@example.com", "Ada Lovelace").unwrap();
//! let validated = validator.validate(&token).await.unwrap();
//! assert_eq!(validated.user.email, "ada@example.com");
//! assert_eq!(validated.user.given_name.as_deref(), Some("Ada"));
//! # }
//! ```

pub mod dev;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::TokenMetrics;
use crate::outbound::HttpClient;
use tower_rampart::clock::{Clock, SystemClock};

use crate::config::AuthSettings;

/// Leeway for `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(60);
/// Tokens longer than this are refused without parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The signed-in user, read from the validated token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// `upn`, else `preferred_username`, else `unique_name`.
    pub email: String,
    /// `name`, else the email.
    pub display_name: String,
    /// `given_name`.
    pub given_name: Option<String>,
    /// `family_name`.
    pub surname: Option<String>,
    /// `oid`.
    pub id: Option<String>,
}

/// A token that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedToken {
    /// Who the token is for.
    pub user: User,
    /// The token's `exp` (unix seconds): after it, Fabric refuses the token.
    pub expires_at: u64,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT (three base64url parts with a JSON header and payload).
    Malformed,
    /// The header's `alg` is not RS256 (e.g. `none`, `HS256`).
    UnsupportedAlgorithm(String),
    /// The header names no `kid`.
    MissingKeyId,
    /// No signing key with the token's `kid` (after the allowed refetch).
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is more than 60 s in the past.
    Expired,
    /// `nbf` is more than 60 s in the future.
    NotYetValid,
    /// `aud` is none of the accepted audiences.
    WrongAudience,
    /// `iss` is none of the accepted issuers.
    WrongIssuer,
    /// `tid` is not the configured tenant.
    WrongTenant,
    /// A required claim is missing.
    MissingClaim(&'static str),
    /// The signing keys cannot be fetched: the token may be fine (answer 503).
    KeysUnavailable,
}

impl TokenError {
    /// `true` for [`TokenError::KeysUnavailable`] (503), `false` for refusals (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::KeysUnavailable)
    }

    /// The HTTP status to answer with: 503 when keys are unavailable, else 401.
    pub fn status(&self) -> http::StatusCode {
        if self.is_unavailable() {
            http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            http::StatusCode::UNAUTHORIZED
        }
    }

    /// A short message for the response's `detail`, naming the failed check.
    pub fn detail(&self) -> String {
        match self {
            Self::Malformed => "Invalid token: not a well-formed JWT".to_owned(),
            Self::UnsupportedAlgorithm(alg) => {
                format!("Invalid token: algorithm {alg:?} is not accepted (RS256 only)")
            }
            Self::MissingKeyId => "Invalid token: no key id (kid) in the header".to_owned(),
            Self::UnknownKey => "Invalid token: signed by an unknown key".to_owned(),
            Self::BadSignature => "Invalid token: signature verification failed".to_owned(),
            Self::Expired => "Invalid token: the token has expired".to_owned(),
            Self::NotYetValid => "Invalid token: the token is not valid yet (nbf)".to_owned(),
            Self::WrongAudience => "Invalid token: wrong audience (aud)".to_owned(),
            Self::WrongIssuer => "Invalid token: wrong issuer (iss)".to_owned(),
            Self::WrongTenant => "Invalid token: wrong tenant (tid)".to_owned(),
            Self::MissingClaim(c) => format!("Invalid token: the {c} claim is missing"),
            Self::KeysUnavailable => {
                "Token signing keys are unavailable; please try again shortly".to_owned()
            }
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail())
    }
}

impl std::error::Error for TokenError {}

/// Validates access tokens. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct TokenValidator {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AuthSettings,
    static_keys: HashMap<String, DecodingKey>,
    cache: RwLock<KeyCache>,
    fetch_lock: tokio::sync::Mutex<()>,
    http: HttpClient,
    clock: Arc<dyn Clock>,
    min_refetch_interval: Duration,
    failure_backoff: Duration,
    max_key_age: Duration,
    fetches: AtomicU64,
    metrics: TokenMetrics,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValidator")
            .field("settings", &self.settings)
            .field("static_keys", &self.static_keys.len())
            .field("min_refetch_interval", &self.min_refetch_interval)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    loaded_at: Option<u64>,
    last_attempt: Option<u64>,
    last_failed: bool,
}

/// Builds a [`TokenValidator`].
pub struct TokenValidatorBuilder {
    settings: AuthSettings,
    static_keys: HashMap<String, DecodingKey>,
    clock: Arc<dyn Clock>,
    min_refetch_interval: Duration,
    failure_backoff: Duration,
    max_key_age: Duration,
    fetch_timeout: Duration,
}

impl fmt::Debug for TokenValidatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValidatorBuilder")
            .field("settings", &self.settings)
            .field("static_keys", &self.static_keys.len())
            .finish_non_exhaustive()
    }
}

impl TokenValidatorBuilder {
    /// Also trusts the RSA keys of this JWKS document (e.g. the development identity's),
    /// without fetching.
    pub fn trust_key_set(mut self, jwks: &Value) -> Self {
        self.static_keys.extend(parse_jwks(jwks));
        self
    }

    /// The clock for `exp`/`nbf` and the refetch interval (tests use a manual clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The least time between two JWKS fetches caused by unknown `kid`s (default 30 s).
    pub fn min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch_interval = interval;
        self
    }

    /// The least time between fetches after a failed one (default 5 s).
    pub fn failure_backoff(mut self, backoff: Duration) -> Self {
        self.failure_backoff = backoff;
        self
    }

    /// Time allowed for one JWKS fetch (default 5 s).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Builds the validator. Nothing is fetched until the first token arrives. Its
    /// instrument comes from the global meter provider installed now.
    pub fn build(self) -> TokenValidator {
        let http = reqwest::Client::builder()
            .timeout(self.fetch_timeout)
            .connect_timeout(self.fetch_timeout)
            .user_agent(concat!("fabric-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let http = HttpClient::new(http);
        TokenValidator {
            inner: Arc::new(Inner {
                settings: self.settings,
                static_keys: self.static_keys,
                cache: RwLock::new(KeyCache::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
                http,
                clock: self.clock,
                min_refetch_interval: self.min_refetch_interval,
                failure_backoff: self.failure_backoff,
                max_key_age: self.max_key_age,
                fetches: AtomicU64::new(0),
                metrics: TokenMetrics::new(),
            }),
        }
    }
}

impl TokenValidator {
    /// A validator with the defaults (system clock, refetch at most every 30 s).
    pub fn new(settings: AuthSettings) -> Self {
        Self::builder(settings).build()
    }

    /// A builder for a validator checking tokens against `settings`.
    pub fn builder(settings: AuthSettings) -> TokenValidatorBuilder {
        TokenValidatorBuilder {
            settings,
            static_keys: HashMap::new(),
            clock: Arc::new(SystemClock),
            min_refetch_interval: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(5),
            max_key_age: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(5),
        }
    }

    /// How many times the JWKS was fetched (for tests and metrics).
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Validates `token`; see the module docs for the checks. A refusal is counted by
    /// reason (`fabric_gateway.token.validation_failures`, see [`metrics`](crate::metrics)).
    pub async fn validate(&self, token: &str) -> Result<ValidatedToken, TokenError> {
        let result = self.check(token).await;
        if let Err(e) = &result {
            self.inner.metrics.record(e);
        }
        result
    }

    /// The checks of [`validate`](Self::validate).
    async fn check(&self, token: &str) -> Result<ValidatedToken, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        let header = token.split('.').next().unwrap_or("");
        let header: Value = URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg != "RS256" {
            let shown: String = alg
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(16)
                .collect();
            return Err(TokenError::UnsupportedAlgorithm(shown));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or(TokenError::MissingKeyId)?;
        let key = self.key(kid).await?;

        let s = &self.inner.settings;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false; // checked below against the injectable clock
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.set_audience(&s.audiences);
        validation.set_issuer(&s.issuers);
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => TokenError::BadSignature,
                    K::InvalidAudience => TokenError::WrongAudience,
                    K::InvalidIssuer => TokenError::WrongIssuer,
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::MissingRequiredClaim(c) => TokenError::MissingClaim(match c.as_str() {
                        "exp" => "exp",
                        "aud" => "aud",
                        _ => "iss",
                    }),
                    K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                        TokenError::UnsupportedAlgorithm("RS256".to_owned())
                    }
                    _ => TokenError::Malformed,
                }
            })?;
        let claims = data.claims;

        let now = self.inner.clock.now_micros() / 1_000_000;
        let leeway = LEEWAY.as_secs();
        let exp = number(&claims, "exp").ok_or(TokenError::MissingClaim("exp"))?;
        if now > exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = number(&claims, "nbf")
            && nbf > now.saturating_add(leeway)
        {
            return Err(TokenError::NotYetValid);
        }
        let tid = text(&claims, "tid").ok_or(TokenError::MissingClaim("tid"))?;
        if !tid.eq_ignore_ascii_case(&s.tenant_id) {
            return Err(TokenError::WrongTenant);
        }
        let email = ["upn", "preferred_username", "unique_name"]
            .iter()
            .find_map(|c| text(&claims, c))
            .ok_or(TokenError::MissingClaim("upn"))?;
        let user = User {
            display_name: text(&claims, "name").unwrap_or_else(|| email.clone()),
            given_name: text(&claims, "given_name"),
            surname: text(&claims, "family_name"),
            id: text(&claims, "oid"),
            email,
        };
        Ok(ValidatedToken {
            user,
            expires_at: exp,
        })
    }

    /// The key for `kid`: trusted static keys, the cache, or (bounded) a fresh fetch.
    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let inner = &self.inner;
        if let Some(key) = inner.static_keys.get(kid) {
            return Ok(key.clone());
        }
        let Some(url) = inner.settings.jwks_url.as_deref() else {
            return Err(TokenError::UnknownKey);
        };
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        // One fetch at a time; callers waiting here see its result.
        let _guard = inner.fetch_lock.lock().await;
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let now = inner.clock.now_micros();
        let allowed = {
            let cache = inner.cache.read().unwrap_or_else(|p| p.into_inner());
            let wait = if cache.last_failed {
                inner.failure_backoff
            } else {
                inner.min_refetch_interval
            };
            cache
                .last_attempt
                .is_none_or(|t| now.saturating_sub(t) >= wait.as_micros() as u64)
        };
        if !allowed {
            let cache = inner.cache.read().unwrap_or_else(|p| p.into_inner());
            return match cache.keys.get(kid) {
                Some(stale) => Ok(stale.clone()),
                None if cache.loaded_at.is_none() || cache.last_failed => {
                    Err(TokenError::KeysUnavailable)
                }
                None => Err(TokenError::UnknownKey),
            };
        }
        inner.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = self.fetch(url).await;
        let mut cache = inner.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.last_attempt = Some(now);
        match fetched {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "token signing keys fetched");
                cache.keys = keys;
                cache.loaded_at = Some(now);
                cache.last_failed = false;
                cache.keys.get(kid).cloned().ok_or(TokenError::UnknownKey)
            }
            Err(reason) => {
                tracing::warn!(reason, "cannot fetch the token signing keys");
                cache.last_failed = true;
                // A key we already had (merely stale) still verifies.
                cache
                    .keys
                    .get(kid)
                    .cloned()
                    .ok_or(TokenError::KeysUnavailable)
            }
        }
    }

    /// The cached key for `kid` if present and not too old.
    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        let inner = &self.inner;
        let cache = inner.cache.read().unwrap_or_else(|p| p.into_inner());
        let key = cache.keys.get(kid)?;
        let age = inner
            .clock
            .now_micros()
            .saturating_sub(cache.loaded_at.unwrap_or(0));
        (age < inner.max_key_age.as_micros() as u64).then(|| key.clone())
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, DecodingKey>, &'static str> {
        let http = &self.inner.http;
        let resp = http
            .send(
                http.reqwest()
                    .get(url)
                    .header(http::header::ACCEPT, "application/json"),
            )
            .await
            .map_err(|_| "the JWKS URL cannot be reached")?;
        if !resp.status().is_success() {
            return Err("the JWKS URL answered with an error status");
        }
        let body = read_limited(resp, MAX_JWKS_BYTES).await?;
        let body: Value = serde_json::from_slice(&body).map_err(|_| "the JWKS is not JSON")?;
        if body.get("keys").and_then(Value::as_array).is_none() {
            return Err("the JWKS has no keys array");
        }
        Ok(parse_jwks(&body))
    }
}

/// The largest JWKS document read (Entra ID's is a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The whole body of `resp`, refused (without reading further) once it exceeds `limit` bytes:
/// an endpoint that streams without end costs at most `limit` bytes of memory.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, &'static str> {
    const TOO_LARGE: &str = "the JWKS is larger than 1 MiB";
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(TOO_LARGE);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| "the JWKS could not be read")?
    {
        if body.len() + chunk.len() > limit {
            return Err(TOO_LARGE);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The usable RS256 signing keys of a JWKS document, by `kid`.
fn parse_jwks(jwks: &Value) -> HashMap<String, DecodingKey> {
    let mut keys = HashMap::new();
    for jwk in jwks
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let field = |n: &str| jwk.get(n).and_then(Value::as_str);
        if field("kty") != Some("RSA")
            || field("use").is_some_and(|u| u != "sig")
            || field("alg").is_some_and(|a| a != "RS256")
        {
            continue;
        }
        let (Some(kid), Some(n), Some(e)) = (field("kid"), field("n"), field("e")) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_rsa_components(n, e) {
            keys.insert(kid.to_owned(), key);
        }
    }
    keys
}

fn number(claims: &HashMap<String, Value>, name: &str) -> Option<u64> {
    let v = claims.get(name)?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

fn text(claims: &HashMap<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}
