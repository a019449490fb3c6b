//! Bearer-token check for `--api-key`.

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// Whether the request carries `Authorization: Bearer <key>`. The comparison takes the same
/// time whatever the presented token is (its length included), so timing does not reveal
/// how much of a guess was right.
pub fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    // The scheme is case-insensitive (RFC 9110); the token is not.
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => return false,
    };
    ct_eq(token, key.as_bytes())
}

fn ct_eq(given: &[u8], key: &[u8]) -> bool {
    // Compare a key-sized copy so the loop length depends only on the key, then fold in
    // whether the lengths agreed.
    let mut padded = vec![0u8; key.len()];
    let n = given.len().min(key.len());
    padded[..n].copy_from_slice(&given[..n]);
    let same_len = (given.len() as u64).ct_eq(&(key.len() as u64));
    (padded.ct_eq(key) & same_len).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(auth: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(auth).unwrap(),
        );
        h
    }

    #[test]
    fn accepts_only_the_exact_bearer_token() {
        assert!(authorized(&with(b"Bearer s3cret"), "s3cret"));
        assert!(authorized(&with(b"bearer s3cret"), "s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
        assert!(!authorized(&with(b"Bearer s3cre"), "s3cret"));
        assert!(!authorized(&with(b"Bearer s3cret2"), "s3cret"));
        assert!(!authorized(&with(b"Bearer S3cret"), "s3cret"));
        assert!(!authorized(&with(b"Basic s3cret"), "s3cret"));
        assert!(!authorized(&with(b"s3cret"), "s3cret"));
        assert!(!authorized(&with(b"Bearer "), "s3cret"));
        // A prefix padded with zero bytes must not pass for the key.
        assert!(!authorized(&with(b"Bearer "), "\0"));
        assert!(!authorized(&with(b"Bearer \xff"), "s3cret"));
    }
}
