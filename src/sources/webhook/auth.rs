//! Request authentication: p2-inc HMAC signatures and static bearer tokens.
//!
//! The HMAC is computed over the raw body bytes exactly as received (p2-inc signs the same string it
//! sends), compared in constant time by `hmac`'s `verify_slice`. Hex case is irrelevant (`hex` decodes
//! both); a `sha256=`-style prefix is tolerated. Bearer tokens are compared as SHA-256 digests with
//! `subtle`, so neither the content nor the length of the secret leaks through timing.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{AuthMode, AuthOptions, HmacAlgorithm};

/// Authentication with its secret loaded.
#[derive(Clone)]
pub enum ResolvedAuth {
    None,
    Bearer { token_digest: [u8; 32] },
    Hmac { secret: Vec<u8>, algorithms: Vec<HmacAlgorithm>, header: String },
}

impl std::fmt::Debug for ResolvedAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolvedAuth::None => f.write_str("None"),
            ResolvedAuth::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
            ResolvedAuth::Hmac { algorithms, header, .. } => write!(f, "Hmac({algorithms:?}, header {header}, <redacted>)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: missing {0} header")]
    MissingSignature(String),
    #[error("authentication failed: the {0} header is not a hex HMAC")]
    MalformedSignature(String),
    #[error("authentication failed: the signature does not match the body (wrong secret, or the body was altered)")]
    BadSignature,
    #[error("authentication failed: missing bearer token")]
    MissingToken,
    #[error("authentication failed: wrong bearer token")]
    BadToken,
}

impl ResolvedAuth {
    pub fn resolve(opts: &AuthOptions) -> Result<Self, String> {
        Ok(match opts.mode {
            AuthMode::None => ResolvedAuth::None,
            AuthMode::Bearer => ResolvedAuth::Bearer { token_digest: Sha256::digest(opts.secret()?).into() },
            AuthMode::Hmac => ResolvedAuth::Hmac { secret: opts.secret()?, algorithms: opts.hmac_algorithms.clone(), header: opts.signature_header.clone() },
        })
    }

    /// Check a request. `header` looks a header up case-insensitively. `bodies` are the byte strings a
    /// signature may cover: the body as received and, for a compressed body, the decompressed bytes.
    pub fn verify<'h>(&self, header: impl Fn(&str) -> Option<&'h str>, bodies: &[&[u8]]) -> Result<(), AuthError> {
        match self {
            ResolvedAuth::None => Ok(()),
            ResolvedAuth::Bearer { token_digest } => {
                let value = header("authorization").ok_or(AuthError::MissingToken)?.trim();
                let token = value
                    .get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| value[7..].trim())
                    .ok_or(AuthError::MissingToken)?;
                let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                if bool::from(got.ct_eq(token_digest)) {
                    Ok(())
                } else {
                    Err(AuthError::BadToken)
                }
            }
            ResolvedAuth::Hmac { secret, algorithms, header: name } => {
                let raw = header(name).ok_or_else(|| AuthError::MissingSignature(name.clone()))?.trim();
                let hex_part = raw.split_once('=').filter(|(p, _)| p.starts_with("sha")).map(|(_, h)| h).unwrap_or(raw);
                let sig = hex::decode(hex_part).map_err(|_| AuthError::MalformedSignature(name.clone()))?;
                for alg in algorithms {
                    for body in bodies {
                        let ok = match alg {
                            HmacAlgorithm::Sha256 => Hmac::<Sha256>::new_from_slice(secret).map(|mut m| {
                                m.update(body);
                                m.verify_slice(&sig).is_ok()
                            }),
                            HmacAlgorithm::Sha1 => Hmac::<sha1::Sha1>::new_from_slice(secret).map(|mut m| {
                                m.update(body);
                                m.verify_slice(&sig).is_ok()
                            }),
                        };
                        if ok.unwrap_or(false) {
                            return Ok(());
                        }
                    }
                }
                Err(AuthError::BadSignature)
            }
        }
    }
}

/// Lowercase hex HMAC-SHA256 of `body`, as p2-inc sends it (used by tests and the load tool).
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_sig<'a>(v: &'a str) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |n: &str| n.eq_ignore_ascii_case("x-keycloak-signature").then_some(v)
    }

    fn hmac(algs: Vec<HmacAlgorithm>) -> ResolvedAuth {
        ResolvedAuth::Hmac { secret: b"s3cret".to_vec(), algorithms: algs, header: "X-Keycloak-Signature".into() }
    }

    #[test]
    fn hmac_accepts_either_hex_case_and_rejects_tampering() {
        let a = hmac(vec![HmacAlgorithm::Sha256]);
        let body = br#"{"id":"1"}"#;
        let sig = sign_sha256(b"s3cret", body);
        let upper = sig.to_uppercase();
        let prefixed = format!("sha256={sig}");
        assert_eq!(a.verify(with_sig(&sig), &[body]), Ok(()));
        assert_eq!(a.verify(with_sig(&upper), &[body]), Ok(()));
        assert_eq!(a.verify(with_sig(&prefixed), &[body]), Ok(()));
        assert_eq!(a.verify(with_sig(&sig), &[br#"{"id":"2"}"#]), Err(AuthError::BadSignature));
        assert!(matches!(a.verify(with_sig("zz"), &[body]), Err(AuthError::MalformedSignature(_))));
        assert!(matches!(a.verify(|_| None, &[body]), Err(AuthError::MissingSignature(_))));
    }

    #[test]
    fn sha1_only_when_configured() {
        let body = b"x";
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        m.update(body);
        let sig = hex::encode(m.finalize().into_bytes());
        assert_eq!(hmac(vec![HmacAlgorithm::Sha256]).verify(with_sig(&sig), &[body]), Err(AuthError::BadSignature));
        assert_eq!(hmac(vec![HmacAlgorithm::Sha256, HmacAlgorithm::Sha1]).verify(with_sig(&sig), &[body]), Ok(()));
    }

    #[test]
    fn bearer_tokens() {
        let a = ResolvedAuth::Bearer { token_digest: Sha256::digest(b"tok").into() };
        assert_eq!(a.verify(|n| (n == "authorization").then_some("Bearer tok"), &[]), Ok(()));
        assert_eq!(a.verify(|n| (n == "authorization").then_some("bearer tok"), &[]), Ok(()));
        assert_eq!(a.verify(|n| (n == "authorization").then_some("Bearer nope"), &[]), Err(AuthError::BadToken));
        assert_eq!(a.verify(|n| (n == "authorization").then_some("Basic tok"), &[]), Err(AuthError::MissingToken));
        assert_eq!(a.verify(|_| None, &[]), Err(AuthError::MissingToken));
    }
}
