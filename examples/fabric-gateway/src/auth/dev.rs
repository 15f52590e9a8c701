//! The development identity: a stand-in for Entra ID in local mode.
//!
//! An RSA key pair is generated when the service starts; [`DevIdentity::jwks`] publishes
//! its public half (served at `GET /dev/jwks`) and [`DevIdentity::mint`] signs tokens with
//! the configured audience, issuer and tenant (served at `POST /dev/token`), so the whole
//! flow works without a Microsoft account. Development mode only: production must not
//! mount [`DevIdentity::routes`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::{Value, json};
use tower_rampart::clock::{Clock, SystemClock};

use crate::config::AuthSettings;

/// Lifetime of minted tokens.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
const KEY_BITS: usize = 2048;

/// The key pair and claims of the development identity.
pub struct DevIdentity {
    encoding_key: EncodingKey,
    kid: String,
    jwks: Value,
    tenant_id: String,
    audience: String,
    issuer: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DevIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdentity")
            .field("kid", &self.kid)
            .field("tenant_id", &self.tenant_id)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The development identity could not be created or could not sign.
#[derive(Debug)]
pub struct DevIdentityError(String);

impl std::fmt::Display for DevIdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "development identity: {}", self.0)
    }
}

impl std::error::Error for DevIdentityError {}

impl DevIdentity {
    /// Generates a fresh 2048-bit RSA key pair; tokens get the first configured audience
    /// and issuer and the configured tenant (the development tenant when none is set).
    pub fn generate(settings: &AuthSettings) -> Result<Self, DevIdentityError> {
        let mut rng = rsa::rand_core::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut rng, KEY_BITS)
            .map_err(|e| DevIdentityError(format!("key generation failed: {e}")))?;
        let der = private
            .to_pkcs1_der()
            .map_err(|e| DevIdentityError(format!("key encoding failed: {e}")))?;
        let encoding_key = EncodingKey::from_rsa_der(der.as_bytes());
        let n = URL_SAFE_NO_PAD.encode(private.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(private.e().to_bytes_be());
        let kid = format!("dev-{}", uuid::Uuid::new_v4().simple());
        let jwks = json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e,
        }]});
        Ok(Self {
            encoding_key,
            kid,
            jwks,
            tenant_id: settings.tenant_id.clone(),
            audience: settings
                .audiences
                .first()
                .cloned()
                .unwrap_or_else(|| "https://api.fabric.microsoft.com".to_owned()),
            issuer: settings
                .issuers
                .first()
                .cloned()
                .unwrap_or_else(|| format!("https://sts.windows.net/{}/", settings.tenant_id)),
            clock: Arc::new(SystemClock),
        })
    }

    /// Uses `clock` for `iat`/`nbf`/`exp` of minted tokens.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key id in minted tokens' headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document of the public key (for `GET /dev/jwks` and
    /// [`TokenValidatorBuilder::trust_key_set`](super::TokenValidatorBuilder::trust_key_set)).
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The claims [`DevIdentity::mint`] signs for `email` and `name`.
    pub fn claims(&self, email: &str, name: &str) -> Value {
        let now = self.clock.now_micros() / 1_000_000;
        let oid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, email.to_lowercase().as_bytes());
        let (given, family) = match name.trim().split_once(' ') {
            Some((g, f)) => (g.trim(), f.trim()),
            None => (name.trim(), ""),
        };
        let mut claims = json!({
            "aud": self.audience,
            "iss": self.issuer,
            "tid": self.tenant_id,
            "oid": oid.to_string(),
            "sub": oid.to_string(),
            "upn": email,
            "preferred_username": email,
            "unique_name": email,
            "name": name,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "ver": "1.0",
            "scp": "user_impersonation",
        });
        if !given.is_empty() {
            claims["given_name"] = json!(given);
        }
        if !family.is_empty() {
            claims["family_name"] = json!(family);
        }
        claims
    }

    /// A token for `email` / `name`, valid for [`TOKEN_LIFETIME`].
    pub fn mint(&self, email: &str, name: &str) -> Result<String, DevIdentityError> {
        self.sign(&self.claims(email, name))
    }

    /// Signs arbitrary `claims` with the identity's key (RS256, its `kid`); tests use it
    /// to build tokens that fail one check.
    pub fn sign(&self, claims: &Value) -> Result<String, DevIdentityError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding_key)
            .map_err(|e| DevIdentityError(format!("signing failed: {e}")))
    }

    /// `POST /dev/token` (`{"email", "name"}` → `{"access_token"}`) and `GET /dev/jwks`,
    /// for any router state. Development mode only.
    pub fn routes<S>(self: Arc<Self>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let minting = Arc::clone(&self);
        Router::new()
            .route(
                "/dev/token",
                post(move |body: Result<Json<DevTokenRequest>, JsonRejection>| {
                    let identity = Arc::clone(&minting);
                    async move { dev_token(&identity, body) }
                }),
            )
            .route(
                "/dev/jwks",
                get(move || {
                    let identity = Arc::clone(&self);
                    async move { Json(identity.jwks().clone()) }
                }),
            )
    }
}

/// The body of `POST /dev/token`.
#[derive(Debug, Deserialize)]
pub struct DevTokenRequest {
    /// The user's email (becomes `upn`/`preferred_username`).
    pub email: String,
    /// The display name (default: the email).
    #[serde(default)]
    pub name: Option<String>,
}

fn detail(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"detail": message}))).into_response()
}

/// Handles `POST /dev/token`.
fn dev_token(
    identity: &DevIdentity,
    body: Result<Json<DevTokenRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(rejection) => return detail(rejection.status(), &rejection.body_text()),
    };
    let email = request.email.trim();
    let valid_email = (3..=254).contains(&email.len())
        && email.contains('@')
        && !email.chars().any(|c| c.is_control() || c.is_whitespace());
    if !valid_email {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "email must be an email address",
        );
    }
    let name = request
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(email);
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name is too long or has control characters",
        );
    }
    match identity.mint(email, name) {
        Ok(token) => Json(json!({"access_token": token})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot mint a development token");
            detail(StatusCode::INTERNAL_SERVER_ERROR, "cannot mint a token")
        }
    }
}
