//! `GET /.otpgate/certs`: the public keys of the identity assertions as a JSON Web Key Set
//! (RFC 7517), on every app host and without a session, so an app can fetch them from the
//! gateway it already talks to (docs/product.md#s4).

use http::Response;
use http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS,
};

use super::{Flow, LoginError};
use crate::body::Body;

impl Flow<'_> {
    /// The JWKS of the signing keys in service: current and recently retired ones. Cacheable
    /// for five minutes, which a rotation outlasts (retired keys stay published for an hour).
    pub(super) fn certs(&self) -> Result<Response<Body>, LoginError> {
        let jwks = self
            .site
            .config
            .identity_assertion
            .as_ref()
            .and_then(|_| self.svc.assertions.jwks())
            .ok_or(LoginError::NotFound)?;
        let mut r = Response::new(Body::full(jwks));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        // Public keys: any page may read them (a browser-side verifier, a status page).
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        Ok(r)
    }
}
