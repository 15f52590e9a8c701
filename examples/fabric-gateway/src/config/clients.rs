//! The clients section: which browser origins may call with credentials (`ALLOWED_ORIGINS`)
//! and whose forwarded headers name the client (`TRUSTED_PROXIES`).

use tower_rampart::net::TrustedProxies;

use super::{Reader, split_list};

/// What the clients section reads.
pub(super) struct Clients {
    pub(super) allowed_origins: Vec<String>,
    pub(super) trusted_proxies: TrustedProxies,
}

/// Reads `ALLOWED_ORIGINS` (each entry an origin only, never `*`; required in production)
/// and `TRUSTED_PROXIES` (a warning in production when empty).
pub(super) fn read(r: &mut Reader<'_>) -> Clients {
    let allowed_origins = match r.get("ALLOWED_ORIGINS") {
        // The development default would be a wrong guess in production: name it.
        None if r.production => {
            r.problem(
                "ALLOWED_ORIGINS",
                "is required when ENVIRONMENT=production: the browser app's origin(s), e.g. \
                 https://app.example.com"
                    .to_owned(),
            );
            Vec::new()
        }
        None => vec!["http://localhost:4200".to_owned()],
        Some(list) => {
            let mut origins = Vec::new();
            for entry in split_list(&list) {
                match parse_origin(entry) {
                    Ok(o) => origins.push(o),
                    Err(why) => r.problem("ALLOWED_ORIGINS", format!("{entry:?} {why}")),
                }
            }
            origins
        }
    };

    let trusted_proxies = match r.get("TRUSTED_PROXIES") {
        None => {
            if r.production {
                r.warn(
                    "TRUSTED_PROXIES is empty: every client is taken to be its TCP peer; behind \
                     a load balancer or App Service's front end, all clients then share the \
                     per-IP quotas of the balancer's addresses: set TRUSTED_PROXIES to them"
                        .to_owned(),
                );
            }
            TrustedProxies::none()
        }
        Some(list) => TrustedProxies::parse(&list).unwrap_or_else(|e| {
            r.problem("TRUSTED_PROXIES", e.to_string());
            TrustedProxies::none()
        }),
    };

    Clients {
        allowed_origins,
        trusted_proxies,
    }
}

fn parse_origin(entry: &str) -> Result<String, &'static str> {
    if entry == "*" {
        return Err("is not allowed: credentials need explicit origins");
    }
    let url =
        reqwest::Url::parse(entry).map_err(|_| "is not an origin like https://app.example.com")?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("is not an http(s) origin");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("must be an origin only (no path, query or fragment)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials");
    }
    Ok(url.origin().ascii_serialization())
}
