//! The endpoints of the gateway's README (`examples/fabric-gateway/README.md`, section
//! "Endpoints"). Shapes and texts are the browser app's contract.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tower_rampart::correlation::CorrelationId;
use tower_rampart::session::{Session, SessionInfo};
use tracing::Instrument;

use super::errors::{ApiError, JsonBody};
use super::state::AppState;
use crate::auth::User;
use crate::fabric::{Answer, ChatMessage};

/// Session keys.
const USER: &str = "user";
const FABRIC_TOKEN: &str = "fabric_token";
const TOKEN_EXPIRES_AT: &str = "token_expires_at";

/// Longest accepted question, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;

const NOT_AUTHENTICATED: &str = "Not authenticated. Please login first.";
const SESSION_EXPIRED: &str = "Session expired or invalid. Please login again.";

/// `GET /`: name, version and endpoints.
pub(crate) async fn root(State(state): State<AppState>) -> Json<Value> {
    let mut endpoints = vec![
        endpoint("GET", "/", "this list"),
        endpoint("GET", "/health", "service health"),
        endpoint(
            "POST",
            "/auth/client-login",
            "sign in with an access token; sets the session cookie",
        ),
        endpoint("GET", "/auth/status", "whether the session is signed in"),
        endpoint("GET", "/auth/user", "the signed-in user"),
        endpoint(
            "POST",
            "/auth/logout",
            "end the session (?everywhere=true: every session of the user)",
        ),
        endpoint(
            "GET",
            "/auth/sessions",
            "the signed-in user's sessions, with opaque handles",
        ),
        endpoint(
            "DELETE",
            "/auth/sessions/{id}",
            "end one session of the signed-in user by its handle",
        ),
        endpoint("POST", "/query", "ask the data agent a question"),
        endpoint(
            "POST",
            "/query/detailed",
            "ask, with run details (SQL, data preview)",
        ),
    ];
    if state.dev_routes {
        endpoints.push(endpoint(
            "POST",
            "/dev/token",
            "development only: mint a test access token",
        ));
        endpoints.push(endpoint(
            "GET",
            "/dev/jwks",
            "development only: the test tokens' signing keys",
        ));
    }
    Json(json!({
        "name": "fabric-gateway",
        "description": "Sign-in and natural-language questions to a Microsoft Fabric Data Agent",
        "version": env!("CARGO_PKG_VERSION"),
        "environment": state.config.environment.as_str(),
        "endpoints": endpoints,
    }))
}

fn endpoint(method: &str, path: &str, description: &str) -> Value {
    json!({ "method": method, "path": path, "description": description })
}

/// `GET /health`: never rate limited, never touches the session. With Redis it also says
/// which topology it sees (`redis_topology`: `"single"`, `"cluster"`, `"sentinel"`, or
/// `null` before the first connection) and how many of the nodes it needs answer
/// (`redis_nodes`: on a cluster the masters serving slots, behind Sentinel the current
/// primary; `null` while not even that is known). The Redis check goes through the
/// circuit breaker: while it is open, `/health` answers degraded at once without calling
/// Redis, so a flood of it cannot reach a struggling Redis.
pub(crate) async fn health(State(state): State<AppState>) -> Json<Value> {
    let report = match &state.redis {
        None => None,
        Some(conn) => Some(conn.guarded_health_report().await),
    };
    let redis_connected = report.as_ref().map(|r| r.health.is_connected());
    let status = if redis_connected == Some(false) {
        "degraded"
    } else {
        "healthy"
    };
    let mut body = json!({
        "status": status,
        "environment": state.config.environment.as_str(),
        "redis_connected": redis_connected,
        "fabric_client_initialized": true,
        "session_store": if state.redis.is_some() { "redis" } else { "memory" },
        "version": env!("CARGO_PKG_VERSION"),
        "tenant_id": state.config.masked_tenant_id(),
    });
    if let Some(report) = report {
        body["redis_topology"] = json!(report.topology.map(|t| t.as_str()));
        body["redis_nodes"] = match report.nodes {
            Some(nodes) => json!({ "expected": nodes.expected, "reachable": nodes.reachable }),
            None => Value::Null,
        };
    }
    Json(body)
}

/// Body of `POST /auth/client-login`. Its `Debug` never shows the tokens.
#[derive(Deserialize)]
pub(crate) struct LoginRequest {
    access_token: String,
    #[serde(default)]
    fabric_token: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("access_token", &"<redacted>")
            .field(
                "fabric_token",
                &self.fabric_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `POST /auth/client-login`: validates the token that will be sent to Fabric and starts a
/// fresh session holding the user and that token.
pub(crate) async fn client_login(
    State(state): State<AppState>,
    session: Session,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Result<Json<Value>, ApiError> {
    // The token Fabric will receive is the one to check (a Graph access token cannot be
    // verified by third parties).
    let token = body
        .fabric_token
        .filter(|t| !t.trim().is_empty())
        .unwrap_or(body.access_token);
    let token = token.trim().to_owned();
    let validated = match state.validator.validate(&token).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(reason = %e, "login refused");
            return Err(ApiError::new(e.status(), e.detail()));
        }
    };
    let user = validated.user;
    // A fresh session, whatever the request carried: the old one (if any) is deleted and
    // the data goes under a new id, so an id planted before the login is worthless.
    session.delete().await?;
    session.insert(USER, &user).await?;
    session.insert(FABRIC_TOKEN, &token).await?;
    session
        .insert(TOKEN_EXPIRES_AT, validated.expires_at)
        .await?;
    if let Some(oid) = &user.id {
        session.set_user_id(oid.clone()).await?;
    }
    tracing::info!(user_id = user.id.as_deref().unwrap_or("-"), "signed in");
    Ok(Json(json!({
        "success": true,
        "message": format!("Logged in as {}", user.display_name),
        "user": user,
        "session_id": null,
    })))
}

/// What a request's session says about its user.
enum SignIn {
    /// No session, or one without a user.
    Anonymous,
    /// The stored Fabric token has expired: the session was ended.
    Expired,
    /// Signed in, with a token Fabric still accepts.
    User { user: User, token: String },
}

/// Reads the session's user and token; ends the session when the token has expired (its
/// `exp`, no leeway: Fabric would refuse it) or the stored data is unreadable.
async fn sign_in_state(state: &AppState, session: &Session) -> Result<SignIn, ApiError> {
    let user = session.get_value(USER).await?;
    let token = session.get_value(FABRIC_TOKEN).await?;
    let expires_at = session.get_value(TOKEN_EXPIRES_AT).await?;
    let (Some(user), Some(token), Some(expires_at)) = (user, token, expires_at) else {
        return Ok(SignIn::Anonymous);
    };
    let parsed = (
        serde_json::from_value::<User>(user),
        serde_json::from_value::<String>(token),
        serde_json::from_value::<u64>(expires_at),
    );
    let (Ok(user), Ok(token), Ok(expires_at)) = parsed else {
        tracing::warn!("session data unreadable: ending the session");
        session.delete().await?;
        return Ok(SignIn::Expired);
    };
    if state.now_secs() >= expires_at {
        tracing::info!(
            user_id = user.id.as_deref().unwrap_or("-"),
            "stored Fabric token expired: session ended"
        );
        session.delete().await?;
        return Ok(SignIn::Expired);
    }
    Ok(SignIn::User { user, token })
}

/// `GET /auth/status`.
pub(crate) async fn auth_status(
    State(state): State<AppState>,
    session: Session,
) -> Result<Json<Value>, ApiError> {
    let user = match sign_in_state(&state, &session).await? {
        SignIn::User { user, .. } => Some(user),
        SignIn::Anonymous | SignIn::Expired => None,
    };
    Ok(Json(json!({
        "authenticated": user.is_some(),
        "user": user,
        "session_id": null,
    })))
}

/// `GET /auth/user`: 401 without a signed-in session.
pub(crate) async fn auth_user(
    State(state): State<AppState>,
    session: Session,
) -> Result<Json<Value>, ApiError> {
    match sign_in_state(&state, &session).await? {
        SignIn::User { user, .. } => Ok(Json(json!({
            "success": true,
            "user": user,
            "error": null,
        }))),
        SignIn::Anonymous => Err(ApiError::unauthorized(NOT_AUTHENTICATED)),
        SignIn::Expired => Err(ApiError::unauthorized(SESSION_EXPIRED)),
    }
}

/// `POST /auth/logout`: deletes the session in the store (every instance sees it gone; a
/// concurrent request cannot bring it back) and expires the cookie. With
/// `?everywhere=true` it first ends every session of the same user, on every instance.
/// Never rate limited.
pub(crate) async fn logout(
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let everywhere = everywhere(query.as_deref())?;
    let mut message = "Logged out successfully";
    if everywhere && let Some(user_id) = session.user_id().await? {
        let ended = session.delete_user_sessions(&user_id).await?;
        tracing::info!(user_id = %user_id, ended, "signed out everywhere");
        message = "Logged out of every session";
    }
    session.delete().await?;
    Ok(Json(json!({
        "success": true,
        "message": message,
        "user": null,
        "session_id": null,
    })))
}

/// The `everywhere` parameter of `POST /auth/logout`: `true`/`1` or `false`/`0`, absent
/// meaning `false`. Any other value is refused (422) rather than guessed.
fn everywhere(query: Option<&str>) -> Result<bool, ApiError> {
    let mut everywhere = false;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "everywhere" {
            continue;
        }
        everywhere = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::unprocessable("everywhere must be true or false"));
            }
        };
    }
    Ok(everywhere)
}

/// `GET /auth/sessions`: the signed-in user's live sessions (this one marked `current`),
/// each under an opaque handle that only this user can use; 401 without a sign-in.
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    session: Session,
) -> Result<Json<Value>, ApiError> {
    signed_in(&state, &session).await?;
    let sessions: Vec<Value> = session
        .user_sessions()
        .await?
        .iter()
        .map(session_json)
        .collect();
    Ok(Json(json!({ "sessions": sessions })))
}

fn session_json(info: &SessionInfo) -> Value {
    json!({
        "id": info.handle,
        "current": info.current,
        "created_at": rfc3339(info.created_micros),
        "last_seen_at": rfc3339(info.last_seen_micros),
        "expires_at": rfc3339(info.expires_micros),
    })
}

/// `DELETE /auth/sessions/{id}`: ends one session of the signed-in user by its handle
/// (this one included: then the cookie is expired too); 404 for a handle that names no
/// live session of this user (another user's, ended, made up); 401 without a sign-in.
pub(crate) async fn end_session(
    State(state): State<AppState>,
    session: Session,
    Path(handle): Path<String>,
) -> Result<Json<Value>, ApiError> {
    signed_in(&state, &session).await?;
    if session.end_user_session(&handle).await? {
        Ok(Json(json!({ "success": true })))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "Session not found"))
    }
}

/// `Ok` when the request's session is signed in, else the 401 `/auth/user` answers.
async fn signed_in(state: &AppState, session: &Session) -> Result<(), ApiError> {
    match sign_in_state(state, session).await? {
        SignIn::User { .. } => Ok(()),
        SignIn::Anonymous => Err(ApiError::unauthorized(NOT_AUTHENTICATED)),
        SignIn::Expired => Err(ApiError::unauthorized(SESSION_EXPIRED)),
    }
}

/// Unix microseconds as an RFC 3339 UTC timestamp with whole seconds
/// (`2023-11-14T22:13:20Z`).
fn rfc3339(micros: u64) -> String {
    crate::utc::rfc3339(micros / 1_000_000, None)
}

/// Body of `POST /query` and `POST /query/detailed`.
#[derive(Debug, Deserialize)]
pub(crate) struct QueryRequest {
    query: String,
    #[serde(default)]
    include_details: bool,
    #[serde(default)]
    conversation_history: Option<Vec<ChatMessage>>,
}

/// `POST /query`.
pub(crate) async fn query(
    State(state): State<AppState>,
    session: Session,
    JsonBody(body): JsonBody<QueryRequest>,
) -> Result<Json<Value>, ApiError> {
    let detailed = body.include_details;
    ask(state, session, body, detailed).await
}

/// `POST /query/detailed`.
pub(crate) async fn query_detailed(
    State(state): State<AppState>,
    session: Session,
    JsonBody(body): JsonBody<QueryRequest>,
) -> Result<Json<Value>, ApiError> {
    ask(state, session, body, true).await
}

async fn ask(
    state: AppState,
    session: Session,
    body: QueryRequest,
    detailed: bool,
) -> Result<Json<Value>, ApiError> {
    // Sign-in first: an anonymous client learns it must log in, whatever it sent.
    let (user, token) = match sign_in_state(&state, &session).await? {
        SignIn::User { user, token } => (user, token),
        SignIn::Anonymous => return Err(ApiError::unauthorized(NOT_AUTHENTICATED)),
        SignIn::Expired => return Err(ApiError::unauthorized(SESSION_EXPIRED)),
    };
    let chars = body.query.chars().count();
    if body.query.trim().is_empty() || chars > MAX_QUERY_CHARS {
        return Err(ApiError::unprocessable(format!(
            "query must be between 1 and {MAX_QUERY_CHARS} characters (got {chars})"
        )));
    }
    let correlation_id = CorrelationId::current().unwrap_or_else(CorrelationId::new_v7);
    let history = body.conversation_history.unwrap_or_default();
    // Everything logged from here on (the data agent client's lines too) carries the user id.
    let span = tracing::info_span!("user", user_id = user.id.as_deref().unwrap_or("-"));
    let result = state
        .agent
        .ask(
            &body.query,
            &history,
            &token,
            correlation_id.as_str(),
            detailed,
        )
        .instrument(span.clone())
        .await;
    let mut response = match &result {
        Ok(answer) => json!({
            "success": true,
            "response": answer.text,
            "query": body.query,
            "error": null,
        }),
        Err(e) => json!({
            "success": false,
            "response": e.user_message(),
            "query": body.query,
            "error": e.error_string(),
        }),
    };
    if detailed {
        add_details(&mut response, result.as_ref().ok());
    }
    span.in_scope(|| match &result {
        Ok(_) => tracing::info!(detailed, "question answered"),
        Err(e) => tracing::info!(
            detailed,
            category = e.category().as_str(),
            "question not answered"
        ),
    });
    Ok(Json(response))
}

/// The fields `/query/detailed` adds (nulls and zeros when the question failed).
fn add_details(response: &mut Value, answer: Option<&Answer>) {
    let Value::Object(map) = response else { return };
    let details = match answer {
        Some(a) => json!({
            "run_status": a.run_status,
            "steps_count": a.steps_count,
            "messages_count": a.messages_count,
            "sql_query": a.sql_query,
            "data_preview": a.data_preview,
        }),
        None => json!({
            "run_status": null,
            "steps_count": 0,
            "messages_count": 0,
            "sql_query": null,
            "data_preview": null,
        }),
    };
    if let Value::Object(details) = details {
        map.extend(details);
    }
}

/// The router's fallback: `{"detail": "Not Found"}`.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not Found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20Z");
        // A leap day, and the last second of a year.
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599_000_000), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn everywhere_is_true_false_or_refused() {
        assert!(!everywhere(None).unwrap());
        assert!(!everywhere(Some("")).unwrap());
        assert!(everywhere(Some("everywhere=true")).unwrap());
        assert!(everywhere(Some("x=1&everywhere=1")).unwrap());
        assert!(!everywhere(Some("everywhere=false")).unwrap());
        assert!(everywhere(Some("everywhere=yes")).is_err());
        assert!(everywhere(Some("everywhere")).is_err());
    }
}
