//! The one error type of the console and portal, rendered as a page with
//! the status it stands for and what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// No session, or one that ended: back to the sign-in page of the side.
    #[error("sign in first")]
    SignIn(&'static str),
    #[error("the form is stale or was not sent by this site: reload the page and try again")]
    Csrf,
    #[error("{0}")]
    Forbidden(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    /// A refusal or failure of the admin API or of `apply`, as it said it.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    #[error("the change could not be made: {0}; try again in a moment")]
    Unavailable(String),
    #[error("{0}")]
    TooMany(String),
}

impl PortalError {
    pub fn status(&self) -> StatusCode {
        match self {
            PortalError::SignIn(_) => StatusCode::SEE_OTHER,
            PortalError::Csrf | PortalError::Forbidden(_) => StatusCode::FORBIDDEN,
            PortalError::NotFound(_) => StatusCode::NOT_FOUND,
            PortalError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PortalError::Refused { status, .. } => *status,
            PortalError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            PortalError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A gRPC status from the admin API, keeping what it means for a person.
    pub fn from_status(status: &tonic::Status) -> PortalError {
        let code = match status.code() {
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::Unauthenticated => return PortalError::SignIn("/console/signin"),
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => StatusCode::BAD_REQUEST,
            tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        PortalError::Refused { status: code, message: status.message().to_string() }
    }

    /// A refusal of a portal command by `apply`.
    pub fn from_propose(error: tollgate_raft::ProposeError) -> PortalError {
        PortalError::from_status(&crate::admin::status::from_propose(error))
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        if let PortalError::SignIn(to) = self {
            return Redirect::to(to).into_response();
        }
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let body = super::page::bare(
            title,
            maud::html! {
                h1 { (title) }
                p.error role="alert" { (self.to_string()) }
                p { a href="/portal" { "Portal" } " · " a href="/console" { "Console" } }
            },
        );
        (status, body).into_response()
    }
}
