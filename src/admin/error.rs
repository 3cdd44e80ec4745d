//! The admin API's error type, answered as `application/problem+json`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An admin API error.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong bearer token (401).
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The principal may not do this (403): a read-only key writing.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// A field is invalid (400).
    #[error("{field}: {detail}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// Not found (404).
    #[error("{0}")]
    NotFound(String),
    /// Already exists or taken (409).
    #[error("{field}: {detail}")]
    Conflict {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Refused for a reason of its own (409), logged where it is raised:
    /// a tenant file manages what the request would change
    /// (`tenant.file_owned`, `connection.file_declared`), or the tenant is
    /// being deleted (`tenant.deletion_in_progress`). The answer carries
    /// the stable reason code as `reason`.
    #[error("{reason}: {detail}")]
    ConflictReason {
        /// The stable reason code.
        reason: &'static str,
        /// What is refused, and what to do instead.
        detail: String,
    },
    /// Over a tenant admin's budget of costly calls (429, with
    /// `Retry-After`), logged where it is raised; the answer carries the
    /// stable reason code as `reason`.
    #[error("{reason}: {detail}")]
    TooMany {
        /// The stable reason code.
        reason: &'static str,
        /// What is refused, and when to try again.
        detail: String,
        /// Seconds until one more call is allowed (at least 1).
        retry_after_secs: u64,
    },
    /// The request was understood but what it depends on refused it (422),
    /// e.g. an IdP's metadata that was fetched and not taken.
    #[error("{field}: {detail}")]
    Unprocessable {
        /// The field at fault.
        field: String,
        /// What is wrong, and what still holds.
        detail: String,
    },
    /// Our failure (500): logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
    /// The store could not be reached (503): logged, never sent; retrying
    /// later may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::store::StoreError> for AdminError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(d) => Self::Unavailable(d),
            crate::store::StoreError::Corrupt(d) => Self::Internal(format!("stored value is corrupt: {d}")),
        }
    }
}

impl AdminError {
    /// An invalid field.
    pub fn field(field: &str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// The most characters of `detail` a problem+json answer repeats.
pub const MAX_DETAIL_CHARS: usize = 200;
/// The most characters of `field` (an unknown field's name comes from the body).
pub const MAX_FIELD_CHARS: usize = 64;

/// `text` cut to at most `max` characters, on a character boundary, with an
/// ellipsis when something was cut.
fn clip(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => {
            let mut cut = text;
            cut.truncate(at);
            cut.push('…');
            cut
        }
        None => text,
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, title, detail, field) = match &self {
            Self::Unauthorized(d) => (StatusCode::UNAUTHORIZED, "Unauthorized", d.to_string(), None),
            Self::Forbidden(d) => (StatusCode::FORBIDDEN, "Forbidden", d.to_string(), None),
            Self::Invalid { field, detail } => (
                StatusCode::BAD_REQUEST,
                "Invalid request",
                detail.clone(),
                Some(field.clone()),
            ),
            Self::NotFound(d) => (StatusCode::NOT_FOUND, "Not found", d.clone(), None),
            Self::Conflict { field, detail } => (
                StatusCode::CONFLICT,
                "Conflict",
                detail.clone(),
                Some(field.to_string()),
            ),
            Self::ConflictReason { detail, .. } => (StatusCode::CONFLICT, "Conflict", detail.clone(), None),
            Self::TooMany { detail, .. } => (StatusCode::TOO_MANY_REQUESTS, "Too many requests", detail.clone(), None),
            Self::Unprocessable { field, detail } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not taken",
                detail.clone(),
                Some(field.clone()),
            ),
            Self::Internal(d) => {
                tracing::error!(reason = "admin.internal", detail = %d, "admin request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "The request could not be completed.".into(),
                    None,
                )
            }
            Self::Unavailable(d) => {
                tracing::error!(reason = "store.unavailable", detail = %d, "admin request failed: store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "The service could not reach its storage. Please try again in a moment.".into(),
                    None,
                )
            }
        };
        // serde and parse errors quote the input: repeat only a little of it,
        // so a huge bad body never comes back (or into the log) whole.
        let detail = clip(detail, MAX_DETAIL_CHARS);
        let field = field.map(|f| clip(f, MAX_FIELD_CHARS));
        // A refusal with a reason of its own is logged where it is raised,
        // with its tenant (and connection) and that reason code.
        if !matches!(
            self,
            Self::Internal(_) | Self::Unavailable(_) | Self::ConflictReason { .. } | Self::TooMany { .. }
        ) {
            tracing::info!(
                reason = "admin.refused",
                status = status.as_u16(),
                field = field.as_deref().unwrap_or(""),
                "{detail}"
            );
        }
        let mut body = json!({
            "type": "about:blank",
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        if let Some(f) = field {
            if let Some(o) = body.as_object_mut() {
                o.insert("field".into(), json!(f));
            }
        }
        if let (Self::ConflictReason { reason, .. } | Self::TooMany { reason, .. }, Some(o)) =
            (&self, body.as_object_mut())
        {
            o.insert("reason".into(), json!(reason));
        }
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if let Self::TooMany { retry_after_secs, .. } = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(*retry_after_secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
