//! The API's error type: every failure becomes `{"error":{"code","message"}}`
//! with a fitting status, and server-side causes are logged, not leaked.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jobwire_core::BackendError;
use serde_json::json;

use crate::auth::AuthError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Fields a client acts on, beside the message: a refused publish's
    /// job `status` and current `attempt`.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.details;
        error.insert("code".to_owned(), json!(self.code));
        error.insert("message".to_owned(), json!(self.message));
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> ApiError {
        let code = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid",
        };
        // Malformed JSON (400 in axum) is reported as 422 like every other
        // unusable body, so clients have one status to handle.
        let status = match e.status() {
            StatusCode::BAD_REQUEST => StatusCode::UNPROCESSABLE_ENTITY,
            other => other,
        };
        ApiError::new(status, code, without_type_names(&e.body_text()))
    }
}

/// serde names the Rust type it expected ("expected struct CreateJob with
/// 11 elements"): says "an object" instead, which is what the client must
/// send. An array where an object belongs is said to be one, instead of
/// "invalid length".
fn without_type_names(text: &str) -> String {
    // The last one: a string the client sent, quoted earlier in the
    // message, may hold these words too.
    const STRUCT: &str = ", expected struct ";
    let Some(comma) = text.rfind(STRUCT) else {
        return text.to_owned();
    };
    let at = comma + ", ".len();
    let rest = &text[comma + STRUCT.len()..];
    if rest.starts_with("variant ") {
        return text.to_owned();
    }
    let mut tail = &rest[rest.find(' ').unwrap_or(rest.len())..];
    if let Some(count) = tail.strip_prefix(" with ") {
        if let Some(end) = count.find(" elements") {
            tail = &count[end + " elements".len()..];
        }
    }
    // "invalid length N" right before: serde read an array as the struct.
    const LENGTH: &str = "invalid length ";
    let array = text[..comma].rfind(LENGTH).filter(|&start| {
        text[start + LENGTH.len()..comma]
            .bytes()
            .all(|b| b.is_ascii_digit())
    });
    match array {
        Some(start) => format!("{}an array, expected an object{tail}", &text[..start]),
        None => format!("{}expected an object{tail}", &text[..at]),
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> ApiError {
        match &e {
            BackendError::NotFound(job) => ApiError::not_found(format!("no job {job}")),
            BackendError::AlreadyExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            BackendError::Fenced { current, .. } => {
                let mut error = ApiError::new(StatusCode::CONFLICT, "stale_attempt", e.to_string());
                error.details.insert("attempt".to_owned(), json!(current));
                error
            }
            BackendError::Rejected { source, .. } => match source {
                jobwire_core::reducer::ReduceError::InvalidData(_) => {
                    ApiError::unprocessable(e.to_string())
                }
                jobwire_core::reducer::ReduceError::IllegalTransition { from, .. } => {
                    let mut error = ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string());
                    error.details.insert("status".to_owned(), json!(from));
                    error
                }
                _ => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            },
            BackendError::Unavailable(_) => {
                tracing::warn!(error = %e, "backend unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the job store is unreachable; retry shortly",
                )
            }
            BackendError::Invalid(message) => ApiError::unprocessable(message.clone()),
            BackendError::Data(_) => {
                tracing::error!(error = %e, "backend data error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// Gives every error the JSON shape: responses with an error status that
/// are not JSON already (axum's own rejections of a bad query or path, 404
/// for an unknown route, 405, a body limit …) get their text as the
/// message, truncated.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => jobwire_core::protocol::truncated(text, 200),
    };
    let mut rebuilt = ApiError::new(status, code, message).into_response();
    // Keep headers such as `Allow` (405) and `Connection: close`.
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}

#[cfg(test)]
mod tests {
    use super::without_type_names;

    #[test]
    fn body_errors_name_json_shapes_not_rust_types() {
        let cases = [
            (
                "Failed to deserialize the JSON body into the target type: invalid length 0, expected struct CreateJob with 11 elements at line 1 column 2",
                "Failed to deserialize the JSON body into the target type: an array, expected an object at line 1 column 2",
            ),
            (
                "Failed to deserialize the JSON body into the target type: invalid type: string \"x\", expected struct CreateJob at line 1 column 3",
                "Failed to deserialize the JSON body into the target type: invalid type: string \"x\", expected an object at line 1 column 3",
            ),
            (
                "backoff: invalid type: integer `5`, expected struct RetryBackoff",
                "backoff: invalid type: integer `5`, expected an object",
            ),
            ("missing field `kind`", "missing field `kind`"),
            (
                "backoff: invalid type: string \"expected struct x\", expected struct RetryBackoff",
                "backoff: invalid type: string \"expected struct x\", expected an object",
            ),
            (
                "invalid type: unit variant, expected struct variant E::V",
                "invalid type: unit variant, expected struct variant E::V",
            ),
        ];
        for (axum, ours) in cases {
            assert_eq!(without_type_names(axum), ours);
        }
    }
}
