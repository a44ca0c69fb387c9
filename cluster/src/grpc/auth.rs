//! Optional bearer-token authentication for the API.
//!
//! With tokens configured, every call to a cadre service (and to reflection) must carry
//! `authorization: Bearer <token>`, or it fails with UNAUTHENTICATED. Health checks stay open
//! so that probes work without a secret.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The tokens this node accepts; empty means no authentication.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Arc<Vec<Vec<u8>>>,
}

impl Auth {
    /// Accepts any of `tokens`; none leaves the API open.
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Self {
        Self {
            tokens: Arc::new(tokens.into_iter().map(String::into_bytes).collect()),
        }
    }

    /// Whether any token is configured, so that calls must carry one.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn accepts(&self, given: &[u8]) -> bool {
        // Compare against every token in constant time per token, so timing reveals nothing.
        self.tokens
            .iter()
            .fold(false, |ok, t| ok | constant_time_eq(t, given))
    }
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.is_enabled() {
            return Ok(request);
        }
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let token = header
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        if self.accepts(token) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &Auth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        auth.clone().call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn tokens_are_checked_only_when_configured() {
        let open = Auth::default();
        assert_eq!(call(&open, None), Ok(()));
        let auth = Auth::new(["alpha".to_string(), "beta".to_string()]);
        assert_eq!(call(&auth, Some("Bearer beta")), Ok(()));
        assert_eq!(call(&auth, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            call(&auth, Some("Bearer gamma")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(call(&auth, Some("beta")), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            call(&auth, Some("Bearer bet")),
            Err(tonic::Code::Unauthenticated)
        );
    }
}
