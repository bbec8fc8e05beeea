//! The web UI and the JavaScript client, compiled into the binary: `/`
//! (web/index.html), `/app.js`, `/style.css`, `/favicon.svg` (also served
//! as `/favicon.ico`, which browsers ask for by themselves) and
//! `/jobwire.js` (clients/js/jobwire.js). No build step: they are plain
//! files.

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

const INDEX: &str = include_str!("../../../web/index.html");
const APP: &str = include_str!("../../../web/app.js");
const STYLE: &str = include_str!("../../../web/style.css");
const ICON: &str = include_str!("../../../web/favicon.svg");
const CLIENT: &str = include_str!("../../../clients/js/jobwire.js");

/// Scripts and styles from this server only; sockets and requests to it
/// (`'self'` covers its own `ws:`/`wss:` URLs; `ws: wss:` would allow any host).
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/favicon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .route(
            "/jobwire.js",
            get(|| async {
                // A public script, no secret in it: pages of the app's own
                // origin import it as a module (which needs CORS).
                let mut response = asset("text/javascript; charset=utf-8", CLIENT);
                response.headers_mut().insert(
                    ACCESS_CONTROL_ALLOW_ORIGIN,
                    axum::http::HeaderValue::from_static("*"),
                );
                response
            }),
        )
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // Small files that change with the binary: always revalidate.
            (CACHE_CONTROL, "no-cache"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}
