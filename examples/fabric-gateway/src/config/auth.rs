//! The auth section: how login tokens are validated (`TENANT_ID`, `AUTH_JWKS_URL`,
//! `AUTH_AUDIENCE`, `AUTH_ISSUER`).

use super::{Reader, check_http_url, split_list};

/// Tenant id used by the development identity when `TENANT_ID` is not set.
pub const DEV_TENANT_ID: &str = "00000000-0000-0000-0000-000000000000";
const DEFAULT_AUDIENCE: &str = "https://api.fabric.microsoft.com";

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

/// What the auth section reads: `TENANT_ID` as configured, and the validation settings.
pub(super) struct Auth {
    pub(super) tenant_id: Option<String>,
    pub(super) settings: AuthSettings,
}

/// Reads `TENANT_ID` (a GUID; required in production), then the JWKS URL, audiences and
/// issuers, whose defaults derive from the tenant.
pub(super) fn read(r: &mut Reader<'_>) -> Auth {
    let tenant_id = r.get("TENANT_ID");
    if let Some(t) = &tenant_id {
        if uuid::Uuid::try_parse(t).is_err() {
            r.problem(
                "TENANT_ID",
                format!("{t:?} is not a tenant id (a GUID like 4d4eca3f-...)"),
            );
        }
    } else if r.production {
        r.problem(
            "TENANT_ID",
            "is required when ENVIRONMENT=production".to_owned(),
        );
    }
    let effective_tenant = tenant_id
        .clone()
        .unwrap_or_else(|| DEV_TENANT_ID.to_owned())
        .to_ascii_lowercase();

    let jwks_url = match r.get("AUTH_JWKS_URL") {
        Some(url) => {
            if let Err(why) = check_http_url(&url) {
                r.problem("AUTH_JWKS_URL", why);
            }
            Some(url)
        }
        None => tenant_id
            .as_ref()
            .map(|t| format!("https://login.microsoftonline.com/{t}/discovery/v2.0/keys")),
    };
    let audiences = match r.get("AUTH_AUDIENCE") {
        None => vec![DEFAULT_AUDIENCE.to_owned()],
        Some(list) => {
            let v: Vec<String> = split_list(&list).map(str::to_owned).collect();
            if v.is_empty() {
                r.problem("AUTH_AUDIENCE", "lists no audience".to_owned());
            }
            v
        }
    };
    let issuers = match r.get("AUTH_ISSUER") {
        None => vec![
            format!("https://sts.windows.net/{effective_tenant}/"),
            format!("https://login.microsoftonline.com/{effective_tenant}/v2.0"),
        ],
        Some(list) => {
            let v: Vec<String> = split_list(&list).map(str::to_owned).collect();
            if v.is_empty() {
                r.problem("AUTH_ISSUER", "lists no issuer".to_owned());
            }
            v
        }
    };

    Auth {
        tenant_id,
        settings: AuthSettings {
            tenant_id: effective_tenant,
            jwks_url,
            audiences,
            issuers,
        },
    }
}
