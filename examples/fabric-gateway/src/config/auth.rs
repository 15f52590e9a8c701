//! The auth section: how login tokens are validated (`TENANT_ID`, `AUTH_JWKS_URL`,
//! `AUTH_AUDIENCE`, `AUTH_ISSUER`).

/// Tenant id used by the development identity when `TENANT_ID` is not set.
pub const DEV_TENANT_ID: &str = "00000000-0000-0000-0000-000000000000";
pub(super) const DEFAULT_AUDIENCE: &str = "https://api.fabric.microsoft.com";

/// How tokens presented at login are validated.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// The tenant tokens must carry as `tid` (`TENANT_ID`, or [`DEV_TENANT_ID`] in
    /// development when unset).
    pub tenant_id: String,
    /// Where signing keys are fetched (`AUTH_JWKS_URL`; by default Microsoft's keys of
    /// `TENANT_ID`). `None` in development without `TENANT_ID`: only the built-in dev
    /// identity's key is trusted then.
    pub jwks_url: Option<String>,
    /// Accepted `aud` values (`AUTH_AUDIENCE`).
    pub audiences: Vec<String>,
    /// Accepted `iss` values (`AUTH_ISSUER`).
    pub issuers: Vec<String>,
}
