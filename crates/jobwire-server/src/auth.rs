//! JWT authentication (docs/protocol.md): HS256 with a shared secret and/or RS256 /
//! ES256 with a public key; `sub` is the user, `scope` (a space-separated
//! string or an array) holds `jobs:read`, `jobs:write`, `worker`, `admin`,
//! and `exp` is always enforced. Auth can be switched off only explicitly
//! (`JOBWIRE_AUTH=disabled`), for local use.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

/// A permission a token can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read one's own jobs and watch them.
    JobsRead,
    /// Create, cancel and delete one's own jobs.
    JobsWrite,
    /// Publish events for any job (workers, external programs).
    Worker,
    /// Everything, on everyone's jobs.
    Admin,
}

impl Scope {
    /// The scope as written in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::JobsRead => "jobs:read",
            Scope::JobsWrite => "jobs:write",
            Scope::Worker => "worker",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name; unknown names are ignored by token parsing.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "jobs:read" => Some(Scope::JobsRead),
            "jobs:write" => Some(Scope::JobsWrite),
            "worker" => Some(Scope::Worker),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, as established from their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The JWT `sub`.
    pub user: String,
    pub scopes: Vec<Scope>,
    /// Unix seconds at which the token expires (`None` with auth disabled).
    pub expires_at: Option<u64>,
}

impl Principal {
    /// Whether the caller holds `scope` (admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the caller may see jobs owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.user == owner || self.scopes.contains(&Scope::Admin)
    }

    /// Time left before the token expires.
    pub fn time_left(&self) -> Option<Duration> {
        let exp = self.expires_at?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Duration::from_secs(exp.saturating_sub(now)))
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <jwt>, the access_token.<jwt> WebSocket subprotocol, or ?token=")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    /// Said in words, never the JWT library's own (verbose) text.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

impl AuthError {
    /// Why a token was refused, in words.
    fn of(e: &jsonwebtoken::errors::Error) -> AuthError {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => {
                AuthError::Invalid("the token's signature does not match the server's key")
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::Invalid(
                "the token is signed with an algorithm this server does not accept",
            ),
            ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
                AuthError::Invalid("the token has no exp (expiry) claim")
            }
            ErrorKind::MissingRequiredClaim(_) => {
                AuthError::Invalid("the token has no sub (user) claim")
            }
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                AuthError::Invalid("not a JWT (three base64url parts separated by dots)")
            }
            ErrorKind::Json(_) => AuthError::Invalid(
                "the token's claims are malformed (sub must be a string, exp and nbf numbers)",
            ),
            _ => AuthError::Invalid("the token was refused"),
        }
    }
}

/// Why the auth configuration is unusable.
#[derive(Debug, Error)]
pub enum AuthConfigError {
    #[error("JOBWIRE_JWT_SECRET or JOBWIRE_JWT_PUBLIC_KEY is required (or JOBWIRE_AUTH=disabled for local use)")]
    NoKey,
    #[error("JOBWIRE_JWT_SECRET must be at least 16 bytes")]
    WeakSecret,
    #[error("JOBWIRE_JWT_PUBLIC_KEY is neither an RSA nor an EC public key in PEM: {0}")]
    BadPublicKey(String),
}

/// How tokens are checked.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// RS256 or ES256 public key, PEM.
    pub public_key_pem: Option<Vec<u8>>,
    /// Accept every request as an all-powerful local user.
    pub disabled: bool,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(|_| "<pem>"),
            )
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// Verifies tokens.
#[derive(Clone)]
pub struct Auth {
    verifiers: Vec<(DecodingKey, Validation)>,
    disabled: bool,
    /// Tokens that verified, with their caller: a worker sends the same
    /// token with every publish, and checking a signature costs more than
    /// the rest of a small request. A hit still checks `exp`. Only
    /// successes are kept, and the whole map is dropped when full.
    verified: Arc<Mutex<HashMap<String, Principal>>>,
}

/// Verified tokens kept at most.
const VERIFIED_CAPACITY: usize = 4096;

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("verifiers", &self.verifiers.len())
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// The user every request acts as when auth is disabled.
pub const LOCAL_USER: &str = "local";

/// Seconds of clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 5;

impl Auth {
    /// Builds the verifiers for the configured keys.
    ///
    /// # Errors
    /// [`AuthConfigError`] when no key is configured (and auth is not
    /// disabled), the secret is too short or the public key does not parse.
    pub fn new(config: &AuthConfig) -> Result<Auth, AuthConfigError> {
        if config.disabled {
            return Ok(Auth {
                verifiers: Vec::new(),
                disabled: true,
                verified: Arc::default(),
            });
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = LEEWAY_SECS;
            v.set_required_spec_claims(&["exp", "sub"]);
            v.validate_nbf = true;
            v.validate_aud = false;
            v
        };
        let mut verifiers = Vec::new();
        if let Some(secret) = &config.secret {
            if secret.len() < 16 {
                return Err(AuthConfigError::WeakSecret);
            }
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| AuthConfigError::BadPublicKey(e.to_string()))?;
            verifiers.push((key, validation(Algorithm::HS256)));
        }
        if let Some(pem) = &config.public_key_pem {
            let verifier = match DecodingKey::from_rsa_pem(pem) {
                Ok(key) => (key, validation(Algorithm::RS256)),
                Err(rsa) => match DecodingKey::from_ec_pem(pem) {
                    Ok(key) => (key, validation(Algorithm::ES256)),
                    Err(ec) => {
                        return Err(AuthConfigError::BadPublicKey(format!(
                            "as RSA: {rsa}; as EC: {ec}"
                        )))
                    }
                },
            };
            verifiers.push(verifier);
        }
        if verifiers.is_empty() {
            return Err(AuthConfigError::NoKey);
        }
        Ok(Auth {
            verifiers,
            disabled: false,
            verified: Arc::default(),
        })
    }

    /// Whether auth is switched off.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Checks a token (if any) and returns who it belongs to.
    ///
    /// # Errors
    /// [`AuthError`]: missing, expired or otherwise invalid. Never falls back
    /// to an anonymous caller.
    pub fn verify(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        if self.disabled {
            return Ok(Principal {
                user: LOCAL_USER.to_owned(),
                scopes: vec![Scope::Admin],
                expires_at: None,
            });
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        if let Some(known) = self.cached(token) {
            return known;
        }
        let mut last = AuthError::Invalid("no key accepted it");
        for (key, validation) in &self.verifiers {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => {
                    let verified = principal(data.claims)?;
                    let mut cache = self.verified_tokens();
                    if cache.len() >= VERIFIED_CAPACITY {
                        cache.clear();
                    }
                    cache.insert(token.to_owned(), verified.clone());
                    return Ok(verified);
                }
                Err(e) => {
                    last = AuthError::of(&e);
                    if matches!(last, AuthError::Expired | AuthError::NotYetValid) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

impl Auth {
    /// A token verified before: its caller while it has not expired (with
    /// the same leeway as a full check; its `nbf` had passed already).
    fn cached(&self, token: &str) -> Option<Result<Principal, AuthError>> {
        let mut cache = self.verified_tokens();
        let known = cache.get(token)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if known
            .expires_at
            .is_some_and(|exp| exp.saturating_add(LEEWAY_SECS) < now)
        {
            cache.remove(token);
            return Some(Err(AuthError::Expired));
        }
        Some(Ok(known.clone()))
    }

    fn verified_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Principal>> {
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `sub` can name a user: what [`mint_token`]'s callers check
/// before signing a token the server would refuse.
///
/// # Errors
/// Why not, in words for the person who chose it.
pub fn check_user(sub: &str) -> Result<(), &'static str> {
    if sub.trim().is_empty() {
        return Err("the token's sub (user) is empty");
    }
    if sub.len() > 256 || sub.chars().any(char::is_control) {
        return Err(
            "the token's sub (user) must be at most 256 characters, without control characters",
        );
    }
    Ok(())
}

/// The caller of a verified token. `sub` names the user in listings, keys
/// and logs: it must be non-empty and free of control characters (a newline
/// would forge log lines).
fn principal(claims: Claims) -> Result<Principal, AuthError> {
    check_user(&claims.sub).map_err(AuthError::Invalid)?;
    Ok(Principal {
        user: claims.sub,
        scopes: claims.scope.0,
        expires_at: Some(claims.exp),
    })
}

/// Mints an HS256 token (for `jobwire token`, `jobwire dev` and tests).
///
/// # Errors
/// When the secret cannot be used as a key.
pub fn mint_token(
    secret: &str,
    user: &str,
    scopes: &[Scope],
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = MintClaims {
        sub: user,
        scope: scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        iat: now,
        exp: now + ttl.as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes())?,
    )
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    scope: Scopes,
}

#[derive(Default)]
struct Scopes(Vec<Scope>);

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            List(Vec<String>),
        }
        let names = match Raw::deserialize(d)? {
            Raw::Text(s) => s.split_whitespace().map(str::to_owned).collect(),
            Raw::List(v) => v,
        };
        Ok(Scopes(
            names.iter().filter_map(|n| Scope::parse(n)).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-some-length";

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        })
        .expect("valid config")
    }

    #[test]
    fn a_minted_token_verifies_with_its_scopes() {
        let token = mint_token(
            SECRET,
            "alice",
            &[Scope::JobsRead, Scope::JobsWrite],
            Duration::from_secs(60),
        )
        .expect("mint");
        let p = auth().verify(Some(&token)).expect("valid");
        assert_eq!(p.user, "alice");
        assert!(p.has(Scope::JobsRead) && p.has(Scope::JobsWrite) && !p.has(Scope::Worker));
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let auth = auth();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = |exp: u64| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({"sub": "alice", "scope": "jobs:read", "exp": exp}),
                &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
            )
            .expect("encode")
        };
        let token = claims(now + 60);
        let first = auth.verify(Some(&token)).expect("valid");
        assert_eq!(auth.verify(Some(&token)), Ok(first));
        assert_eq!(auth.verified_tokens().len(), 1);
        // A remembered token whose exp has passed (leeway included) is
        // refused as expired, and forgotten.
        auth.verified_tokens().insert(
            "stale".to_owned(),
            Principal {
                user: "alice".to_owned(),
                scopes: vec![Scope::JobsRead],
                expires_at: Some(now - LEEWAY_SECS - 10),
            },
        );
        assert_eq!(auth.verify(Some("stale")), Err(AuthError::Expired));
        assert_eq!(auth.verified_tokens().len(), 1);
        // Failures are not remembered.
        assert!(auth.verify(Some("garbage")).is_err());
        assert_eq!(auth.verified_tokens().len(), 1);
    }

    #[test]
    fn wrong_secret_missing_and_garbage_are_refused() {
        let other = mint_token(
            "another-secret-entirely",
            "alice",
            &[],
            Duration::from_secs(60),
        )
        .expect("mint");
        // Said in words, not as jsonwebtoken's `InvalidSignature`.
        assert_eq!(
            auth().verify(Some(&other)),
            Err(AuthError::Invalid(
                "the token's signature does not match the server's key"
            ))
        );
        assert_eq!(auth().verify(None), Err(AuthError::Missing));
        assert!(matches!(
            auth().verify(Some("not.a.jwt")),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = MintClaims {
            sub: "alice",
            scope: "jobs:read".into(),
            iat: now - 600,
            exp: now - 300,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
        )
        .expect("encode");
        assert_eq!(auth().verify(Some(&token)), Err(AuthError::Expired));
    }

    #[test]
    fn scope_may_be_an_array() {
        #[derive(Serialize)]
        struct ArrayClaims {
            sub: &'static str,
            exp: u64,
            scope: Vec<&'static str>,
        }
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 60;
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &ArrayClaims {
                sub: "w",
                exp,
                scope: vec!["worker", "unknown:thing"],
            },
            &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
        )
        .expect("encode");
        assert_eq!(
            auth().verify(Some(&token)).expect("valid").scopes,
            vec![Scope::Worker]
        );
    }

    #[test]
    fn configuration_errors_are_clear() {
        assert!(matches!(
            Auth::new(&AuthConfig::default()),
            Err(AuthConfigError::NoKey)
        ));
        let short = AuthConfig {
            secret: Some("short".into()),
            ..AuthConfig::default()
        };
        assert!(matches!(
            Auth::new(&short),
            Err(AuthConfigError::WeakSecret)
        ));
        let bad = AuthConfig {
            public_key_pem: Some(b"nonsense".to_vec()),
            ..AuthConfig::default()
        };
        assert!(matches!(
            Auth::new(&bad),
            Err(AuthConfigError::BadPublicKey(_))
        ));
    }
}

#[cfg(test)]
mod public_key_tests {
    use super::*;

    fn token(alg: Algorithm, private_pem: &[u8], sub: &str) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem),
            _ => EncodingKey::from_ec_pem(private_pem),
        }
        .expect("test key");
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 60;
        jsonwebtoken::encode(
            &Header::new(alg),
            &MintClaims {
                sub,
                scope: "jobs:read".into(),
                iat: exp - 60,
                exp,
            },
            &key,
        )
        .expect("encode")
    }

    fn auth(public: &[u8]) -> Auth {
        Auth::new(&AuthConfig {
            public_key_pem: Some(public.to_vec()),
            ..AuthConfig::default()
        })
        .expect("public key accepted")
    }

    #[test]
    fn rs256_and_es256_tokens_verify_against_their_public_keys() {
        let rsa = auth(include_bytes!("../tests/fixtures/rsa-public.pem"));
        let ec = auth(include_bytes!("../tests/fixtures/ec-public.pem"));
        let rs_token = token(
            Algorithm::RS256,
            include_bytes!("../tests/fixtures/rsa-private.pem"),
            "alice",
        );
        let es_token = token(
            Algorithm::ES256,
            include_bytes!("../tests/fixtures/ec-private.pem"),
            "bob",
        );
        assert_eq!(rsa.verify(Some(&rs_token)).expect("rs256").user, "alice");
        assert_eq!(ec.verify(Some(&es_token)).expect("es256").user, "bob");
        // Each key accepts only its own algorithm and signer.
        assert!(rsa.verify(Some(&es_token)).is_err());
        assert!(ec.verify(Some(&rs_token)).is_err());
        // An HS256 token cannot pass as RS256 (algorithm confusion).
        let hs = mint_token(
            "a-test-secret-of-some-length",
            "mallory",
            &[Scope::Admin],
            Duration::from_secs(60),
        )
        .expect("mint");
        assert!(rsa.verify(Some(&hs)).is_err());
    }
}
