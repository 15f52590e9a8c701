//! The clients section: which browser origins may call with credentials (`ALLOWED_ORIGINS`)
//! and whose forwarded headers name the client (`TRUSTED_PROXIES`).

pub(super) fn parse_origin(entry: &str) -> Result<String, &'static str> {
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
