//! Bearer-token authentication for every RPC, streaming ones included (a tonic interceptor
//! runs on the request headers before the service sees the call).

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The accepted tokens; empty accepts every call.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Arc<[Vec<u8>]>,
}

impl Auth {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// True when `presented` equals one of the tokens. Every token is compared in constant
    /// time (the comparison's duration does not depend on where bytes differ), and all of
    /// them are always compared, so timing reveals neither a token nor which one matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.tokens
            .iter()
            .fold(subtle::Choice::from(0), |ok, t| {
                ok | t.as_slice().ct_eq(presented)
            })
            .into()
    }

    /// The interceptor: UNAUTHENTICATED without `authorization: Bearer <token>` or with a
    /// token that is not accepted.
    /// Whether an HTTP request may go ahead: auth is off, or it carries an accepted
    /// `Authorization: Bearer <token>` header.
    pub fn allows(&self, headers: &axum::http::HeaderMap) -> bool {
        !self.enabled()
            || headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .is_some_and(|t| self.accepts(t))
    }

    pub fn check<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        if !self.enabled() {
            return Ok(req);
        }
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header.as_bytes().strip_prefix(b"Bearer ").ok_or_else(|| {
            Status::unauthenticated("authorization metadata must be `Bearer <token>`")
        })?;
        if self.accepts(token) {
            Ok(req)
        } else {
            tracing::warn!("rejected a call with an unknown API token");
            Err(Status::unauthenticated("invalid API token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let auth = Auth::new(&["first-token-0123456".into(), "second-token-abcdef".into()]);
        assert!(auth.accepts(b"first-token-0123456"));
        assert!(auth.accepts(b"second-token-abcdef"));
        assert!(!auth.accepts(b"first-token-012345"));
        assert!(!auth.accepts(b"first-token-01234567"));
        assert!(!auth.accepts(b""));
        let mut req = Request::new(());
        req.metadata_mut().insert(
            "authorization",
            "Bearer second-token-abcdef".parse().unwrap(),
        );
        assert!(auth.check(req).is_ok());
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "second-token-abcdef".parse().unwrap());
        assert_eq!(
            auth.check(req).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.check(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(Auth::default().check(Request::new(())).is_ok());
    }
}
