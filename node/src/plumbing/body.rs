//! The body type every response on the request path has, whoever built it.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use super::client::BoxError;

/// A response body: the upstream's stream, a cached copy, or an error or
/// AI answer built by the gateway. Boxed once so phases and backends can
/// hand any of them back.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> GatewayBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: Bytes) -> GatewayBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}
