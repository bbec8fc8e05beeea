//! Where a request's token is found, and whether its origin may open a
//! browser socket: one extractor for REST, SSE and WebSocket, so the
//! transports cannot drift apart.
//!
//! A token comes from (first found wins):
//! - the `access_token.<jwt>` WebSocket subprotocol (browsers cannot set
//!   headers on a WebSocket; the server echoes the subprotocol back);
//! - `Authorization: Bearer <jwt>`;
//! - `?token=<jwt>`, a last resort for clients that can set neither (a
//!   browser's `EventSource`); REST does not take it, since query strings
//!   end up in logs.
//!
//! The Origin rule is described at [`Credentials::origin_allowed`].

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::Deserialize;

use crate::auth::{AuthError, Principal};
use crate::state::AppState;

/// The subprotocol prefix that carries a token from browsers.
const TOKEN_PROTOCOL: &str = "access_token.";

/// A request's credentials, as found (not yet verified).
#[derive(Debug, Default)]
pub struct Credentials {
    /// The whole `access_token.<jwt>` subprotocol, to echo back.
    protocol: Option<String>,
    bearer: Option<String>,
    query: Option<String>,
    origin_allowed: bool,
}

impl FromRequestParts<AppState> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        #[derive(Deserialize)]
        struct TokenQuery {
            token: Option<String>,
        }
        let headers = &parts.headers;
        let query = Query::<TokenQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|Query(q)| q.token);
        Ok(Credentials {
            protocol: token_protocol(headers),
            bearer: bearer(headers),
            query,
            origin_allowed: origin_allowed(headers, &state.config.allowed_origins),
        })
    }
}

impl Credentials {
    /// The REST caller: a bearer token only.
    ///
    /// # Errors
    /// [`AuthError`] for a missing, invalid or expired token.
    pub fn rest(&self, state: &AppState) -> Result<Principal, AuthError> {
        state.auth.verify(self.bearer.as_deref())
    }

    /// An SSE stream's caller: a bearer token, else `?token=`.
    ///
    /// # Errors
    /// [`AuthError`] for a missing, invalid or expired token.
    pub fn stream(&self, state: &AppState) -> Result<Principal, AuthError> {
        state
            .auth
            .verify(self.bearer.as_deref().or(self.query.as_deref()))
    }

    /// A WebSocket's caller: the subprotocol, else a bearer token, else
    /// `?token=`.
    ///
    /// # Errors
    /// [`AuthError`] for a missing, invalid or expired token.
    pub fn socket(&self, state: &AppState) -> Result<Principal, AuthError> {
        let token = self
            .protocol
            .as_deref()
            .and_then(|p| p.strip_prefix(TOKEN_PROTOCOL))
            .or(self.bearer.as_deref())
            .or(self.query.as_deref());
        state.auth.verify(token)
    }

    /// The token subprotocol to echo on the upgrade (browsers fail the
    /// handshake otherwise).
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Whether a browser may open a socket from the request's `Origin`: it
    /// must be in `JOBWIRE_ALLOWED_ORIGINS` (exact scheme, host and port),
    /// or, when none are configured, be the page's own origin on a host
    /// that cannot be rebound: an IP address or `localhost`. A DNS name is
    /// refused then, because a page of any site can make its own name
    /// resolve to this server (DNS rebinding) and would pass a plain
    /// Origin = Host check; deployments under a name list it. Requests
    /// without an `Origin` (not browsers) are not restricted.
    pub fn origin_allowed(&self) -> bool {
        self.origin_allowed
    }
}

fn token_protocol(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with(TOKEN_PROTOCOL))
        .map(str::to_owned)
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get("origin").and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    if !allowed.is_empty() {
        return false;
    }
    let Some(host) = headers.get("host").and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let same = origin.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host)
    });
    let fixed = same && not_rebindable(host);
    if same && !fixed {
        tracing::warn!(%origin, "a browser socket from a DNS-named origin was refused: list it in JOBWIRE_ALLOWED_ORIGINS");
    }
    fixed
}

/// `localhost` or an IP address (with an optional port).
fn not_rebindable(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}
