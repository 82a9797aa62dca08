//! SMART Backend Services authentication (SMART App Launch 2.x, "Backend
//! Services"; RFC 7523 JWT client authentication; RFC 6749 §4.4 client
//! credentials grant, §5.2 error responses):
//!
//! * the client sends a `client_assertion` JWT signed with its private key
//!   (`private_key_jwt`, RS384 or ES384) whose public key is registered as a
//!   JWKS in the gateway's config;
//! * checks: signature (key by `kid`, else every key of the JWKS), `iss` =
//!   `sub` = client id, `aud` = the token endpoint URL, `exp` present and at
//!   most 5 minutes ahead, `nbf`/`iat` within the clock-skew limit, `jti`
//!   never seen before for this client (stored durably in `auth_jti`, so a
//!   restart or a second replica sharing the database still rejects a
//!   replay; expired entries are pruned);
//! * granted scopes = requested ∩ registered ∩ role policy; a requested
//!   scope beyond the registered ones (escalation) fails with
//!   `invalid_scope`;
//! * the gateway answers with a short-lived access token (ES256 JWT signed
//!   with its own key) carrying client, member and scopes.
//!
//! Invariant: a bearer token is accepted only when its signature verifies
//! with the gateway key, it has not expired, and its client is still
//! registered; member and member type always come from the current config,
//! never from the token alone.

use super::policy::RolePolicy;
use super::scope::{self, Scope};
use super::{Caller, MemberType};
use crate::store::{Sql, Store, StoreError};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// `client_assertion_type` of `private_key_jwt`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The furthest an assertion's `exp` may lie in the future (SMART: 5 minutes).
pub const MAX_ASSERTION_LIFETIME: i64 = 300;

/// Token endpoint errors (RFC 6749 §5.2 `error` codes); the HTTP status is
/// decided in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::InvalidRequest(_) => "invalid_request",
            TokenError::InvalidClient(_) => "invalid_client",
            TokenError::UnsupportedGrantType(_) => "unsupported_grant_type",
            TokenError::InvalidScope(_) => "invalid_scope",
            TokenError::Store(_) => "server_error",
        }
    }
}

/// Why a bearer token was not accepted (401 at the FHIR endpoints).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("an access token is required (Authorization: Bearer …; see /.well-known/smart-configuration)")]
    Missing,
    #[error("invalid access token: {0}")]
    Invalid(String),
}

/// A registered client (`[[auth.client]]`).
#[derive(Debug, Clone)]
pub struct ClientReg {
    pub client_id: String,
    /// the member Organization's logical id
    pub member: String,
    pub member_type: MemberType,
    pub jwks: JwkSet,
    pub scopes: Vec<Scope>,
    /// per-client overrides
    pub rate: Option<super::ratelimit::RateSpec>,
    pub max_body_bytes: Option<usize>,
    /// SHA-256 fingerprints (lower-case hex) of the member's client
    /// certificates; when non-empty, requests must come over TLS with one of them
    pub client_cert_sha256: Vec<String>,
}

/// The SHA-256 fingerprint (lower-case hex, what `client_cert_sha256`
/// lists) of the first certificate a TLS peer presented, if any.
pub fn peer_fingerprint(conn: &rustls::ServerConnection) -> Option<String> {
    use sha2::Digest;
    let cert = conn.peer_certificates()?.first()?;
    Some(sha2::Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02x}")).collect())
}

/// The gateway's access-token signing key (ES256).
pub struct GatewayKey {
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// the public key as a JWK (published at `/.well-known/jwks.json`)
    pub jwk: Value,
    /// generated at start (development): tokens die with the process
    pub ephemeral: bool,
}

use serde_json::Value;

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey").field("kid", &self.kid).field("ephemeral", &self.ephemeral).finish()
    }
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl GatewayKey {
    /// From a PKCS#8 PEM EC P-256 private key.
    pub fn from_pem(pem: &[u8]) -> Result<GatewayKey, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "signing key is not PEM text".to_owned())?;
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
        let der = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| format!("signing key PEM: {e}"))?;
        Self::from_pkcs8(&der, false)
    }

    /// A fresh key (development: no `[auth] signing_key` configured).
    pub fn generate() -> GatewayKey {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key generation");
        let der = kp.to_pkcs8v1().expect("PKCS#8 export");
        Self::from_pkcs8(der.as_ref(), true).expect("a generated key is valid")
    }

    fn from_pkcs8(der: &[u8], ephemeral: bool) -> Result<GatewayKey, String> {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| format!("signing key must be a PKCS#8 EC P-256 private key: {e}"))?;
        let public = kp.public_key().as_ref().to_vec();
        if public.len() != 65 || public[0] != 4 {
            return Err("signing key: unexpected public key encoding".into());
        }
        let (x, y) = (b64url(&public[1..33]), b64url(&public[33..65]));
        use sha2::Digest;
        let kid = b64url(&sha2::Sha256::digest(&public)[..12]);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y});
        Ok(GatewayKey { kid, encoding: EncodingKey::from_ec_der(der), decoding: DecodingKey::from_ec_der(&public), jwk, ephemeral })
    }
}

/// Everything the authenticator needs (built from `[auth]` in the config).
#[derive(Debug)]
pub struct AuthSettings {
    pub clients: HashMap<String, ClientReg>,
    /// the network's members (`[[auth.member]]`): Organization id → type
    pub members: HashMap<String, MemberType>,
    pub policy: RolePolicy,
    /// the token endpoint URL client assertions must name in `aud`
    /// (default: `{base}/auth/token` of the request's base URL)
    pub token_url: Option<String>,
    /// `iss` (and `aud`) of the gateway's access tokens
    pub issuer: String,
    /// access token lifetime in seconds
    pub token_lifetime: i64,
    /// tolerated clock difference in seconds (assertion `exp`/`nbf`/`iat`)
    pub clock_skew: i64,
    pub key: GatewayKey,
    /// default rate limit for every client
    pub rate: Option<super::ratelimit::RateSpec>,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    jti: Option<String>,
    exp: i64,
    iat: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    iat: i64,
    jti: String,
    scope: String,
}

/// The token endpoint's success answer.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
}

/// Verified bearer tokens, so that the signature is checked once per token,
/// not once per request (bounded; entries die with their token).
#[derive(Default)]
struct Verified {
    map: HashMap<String, (i64, String, Vec<String>)>,
}

const VERIFIED_MAX: usize = 10_000;

/// Authentication at run time: token issuing and bearer verification.
pub struct Authenticator {
    pub settings: AuthSettings,
    verified: Mutex<Verified>,
    pub limiter: super::ratelimit::RateLimiter,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("clients", &self.settings.clients.len()).finish()
    }
}

fn now_secs() -> i64 {
    crate::fhir::datetime::now_micros() / 1_000_000
}

fn form<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

impl Authenticator {
    pub fn new(settings: AuthSettings) -> Authenticator {
        Authenticator { settings, verified: Mutex::new(Verified::default()), limiter: Default::default() }
    }

    pub fn client(&self, id: &str) -> Option<&ClientReg> {
        self.settings.clients.get(id)
    }

    /// The type of a configured member (`[[auth.member]]`, or a client's).
    pub fn member_type(&self, member: &str) -> Option<MemberType> {
        self.settings.members.get(member).copied().or_else(|| self.settings.clients.values().find(|c| c.member == member).map(|c| c.member_type))
    }

    /// The registered client whose TLS client certificate has this SHA-256
    /// fingerprint (lower-case hex); the first by client id when a member's
    /// clients share certificates.
    pub fn client_by_cert(&self, fingerprint: &str) -> Option<&ClientReg> {
        let mut found: Vec<&ClientReg> = self.settings.clients.values().filter(|c| c.client_cert_sha256.iter().any(|f| f == fingerprint)).collect();
        found.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        found.into_iter().next()
    }

    /// The token URL for a request whose base URL is `base`.
    pub fn token_url(&self, base: &str) -> String {
        self.settings.token_url.clone().unwrap_or_else(|| format!("{}/auth/token", base.trim_end_matches('/')))
    }

    /// The client credentials grant with a `private_key_jwt` assertion.
    pub async fn token(&self, store: &dyn Store, f: &[(String, String)], token_url: &str) -> Result<TokenResponse, TokenError> {
        let now = now_secs();
        match form(f, "grant_type") {
            None => return Err(TokenError::InvalidRequest("grant_type is required".into())),
            Some("client_credentials") => {}
            Some(g) => return Err(TokenError::UnsupportedGrantType(format!("grant_type '{g}' is not supported (client_credentials only)"))),
        }
        match form(f, "client_assertion_type") {
            None => return Err(TokenError::InvalidRequest("client_assertion_type is required".into())),
            Some(ASSERTION_TYPE) => {}
            Some(t) => return Err(TokenError::InvalidClient(format!("client_assertion_type '{t}' is not supported"))),
        }
        let assertion = form(f, "client_assertion").ok_or_else(|| TokenError::InvalidRequest("client_assertion is required".into()))?;
        let header = jsonwebtoken::decode_header(assertion).map_err(|e| TokenError::InvalidClient(format!("client_assertion is not a JWT: {e}")))?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(TokenError::InvalidClient(format!("client_assertion alg {:?} is not supported (RS384, ES384)", header.alg)));
        }
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
            .map_err(|e| TokenError::InvalidClient(format!("client_assertion claims: {e}")))?;
        let iss = unverified.get("iss").and_then(Value::as_str).ok_or_else(|| TokenError::InvalidClient("client_assertion has no iss".into()))?;
        let client = self.client(iss).ok_or_else(|| TokenError::InvalidClient("unknown client".into()))?;
        let keys: Vec<&Jwk> = match &header.kid {
            Some(kid) => client.jwks.find(kid).into_iter().collect(),
            None => client.jwks.keys.iter().collect(),
        };
        if keys.is_empty() {
            return Err(TokenError::InvalidClient("no registered key matches the assertion's kid".into()));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.settings.clock_skew.max(0) as u64;
        v.set_audience(&[token_url]);
        v.set_issuer(&[client.client_id.as_str()]);
        v.sub = Some(client.client_id.clone());
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        v.validate_nbf = true;
        let mut last = TokenError::InvalidClient("no registered key verifies the assertion".into());
        let mut claims = None;
        for k in keys {
            let Ok(dk) = DecodingKey::from_jwk(k) else { continue };
            match jsonwebtoken::decode::<AssertionClaims>(assertion, &dk, &v) {
                Ok(d) => {
                    claims = Some(d.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = TokenError::InvalidClient(match e.kind() {
                        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidAlgorithm => "client_assertion signature does not verify with the registered keys".into(),
                        K::ExpiredSignature => "client_assertion has expired".into(),
                        K::ImmatureSignature => "client_assertion is not valid yet (nbf)".into(),
                        K::InvalidAudience => format!("client_assertion aud must be the token endpoint {token_url}"),
                        K::InvalidIssuer | K::InvalidSubject => "client_assertion iss and sub must both be the client_id".into(),
                        K::MissingRequiredClaim(c) => format!("client_assertion lacks the claim '{c}'"),
                        _ => format!("client_assertion rejected: {e}"),
                    });
                    // only a signature mismatch is worth trying the next key for
                    if !matches!(e.kind(), K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidAlgorithm) {
                        return Err(last);
                    }
                }
            }
        }
        let claims = claims.ok_or(last)?;
        if claims.exp > now + MAX_ASSERTION_LIFETIME + self.settings.clock_skew {
            return Err(TokenError::InvalidClient("client_assertion exp lies more than 5 minutes ahead".into()));
        }
        if claims.iat.is_some_and(|iat| iat > now + self.settings.clock_skew) {
            return Err(TokenError::InvalidClient("client_assertion iat lies in the future".into()));
        }
        let jti = claims.jti.filter(|j| !j.is_empty()).ok_or_else(|| TokenError::InvalidClient("client_assertion has no jti".into()))?;
        if jti.len() > 255 {
            return Err(TokenError::InvalidClient("client_assertion jti is longer than 255 characters".into()));
        }
        let granted = self.grant(client, form(f, "scope"))?;
        // replay protection last: a rejected assertion does not use up its jti
        if !remember_jti(store, &client.client_id, &jti, claims.exp + self.settings.clock_skew, now).await? {
            return Err(TokenError::InvalidClient("client_assertion jti was used before (replay)".into()));
        }
        let scope = granted.iter().map(Scope::to_string_v2).collect::<Vec<_>>().join(" ");
        let lifetime = self.settings.token_lifetime;
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: client.client_id.clone(),
            aud: self.settings.issuer.clone(),
            exp: now + lifetime,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: scope.clone(),
        };
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.settings.key.kid.clone());
        let access_token = jsonwebtoken::encode(&h, &claims, &self.settings.key.encoding)
            .map_err(|e| TokenError::Store(StoreError::Backend(format!("signing the access token: {e}"))))?;
        tracing::info!(client = %client.client_id, scopes = %scope, "access token issued");
        Ok(TokenResponse { access_token, token_type: "bearer", expires_in: lifetime, scope })
    }

    /// Granted = requested ∩ registered ∩ role policy; any escalation fails.
    fn grant(&self, client: &ClientReg, requested: Option<&str>) -> Result<Vec<Scope>, TokenError> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty()).ok_or_else(|| TokenError::InvalidScope("scope is required".into()))?;
        let mut out: Vec<Scope> = vec![];
        for s in requested.split_ascii_whitespace() {
            let sc = Scope::parse(s).map_err(TokenError::InvalidScope)?;
            if !scope::covered(&sc, &client.scopes) {
                return Err(TokenError::InvalidScope(format!("scope '{s}' exceeds the scopes registered for this client")));
            }
            if !self.settings.policy.any_on_type(client.member_type, &sc.rtype) {
                return Err(TokenError::InvalidScope(format!(
                    "scope '{s}': the role policy gives member type '{}' no access to {}",
                    client.member_type.as_str(),
                    sc.rtype
                )));
            }
            if !out.contains(&sc) {
                out.push(sc);
            }
        }
        Ok(out)
    }

    /// Check a bearer token; the caller with the current config's member.
    pub fn verify(&self, token: &str, purpose_of_use: Option<String>) -> Result<Caller, BearerError> {
        let now = now_secs();
        let cached = {
            let m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            m.map.get(token).filter(|(exp, _, _)| *exp > now).map(|(_, c, s)| (c.clone(), s.clone()))
        };
        let (client_id, scopes) = match cached {
            Some(x) => x,
            None => {
                let mut v = Validation::new(Algorithm::ES256);
                v.leeway = 0;
                v.set_issuer(&[self.settings.issuer.as_str()]);
                v.set_audience(&[self.settings.issuer.as_str()]);
                v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
                let d = jsonwebtoken::decode::<AccessClaims>(token, &self.settings.key.decoding, &v).map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind as K;
                    BearerError::Invalid(match e.kind() {
                        K::ExpiredSignature => "the access token has expired".into(),
                        K::InvalidSignature => "the access token's signature does not verify".into(),
                        _ => format!("{e}"),
                    })
                })?;
                let scopes: Vec<String> = d.claims.scope.split_ascii_whitespace().map(str::to_owned).collect();
                let mut m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                if m.map.len() >= VERIFIED_MAX {
                    m.map.retain(|_, (exp, _, _)| *exp > now);
                    if m.map.len() >= VERIFIED_MAX {
                        m.map.clear();
                    }
                }
                m.map.insert(token.to_owned(), (d.claims.exp, d.claims.sub.clone(), scopes.clone()));
                (d.claims.sub, scopes)
            }
        };
        let client = self.client(&client_id).ok_or_else(|| BearerError::Invalid("the token's client is no longer registered".into()))?;
        Ok(Caller {
            client_id,
            member: Some(client.member.clone()),
            member_type: client.member_type,
            scopes,
            purpose_of_use,
        })
    }

    /// The SMART configuration document (`/.well-known/smart-configuration`).
    pub fn smart_configuration(&self, base: &str) -> Value {
        serde_json::json!({
            "issuer": self.settings.issuer,
            "token_endpoint": self.token_url(base),
            "jwks_uri": format!("{}/.well-known/jwks.json", base.trim_end_matches('/')),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": ["system/*.cruds", "system/*.rs"],
            "capabilities": ["client-confidential-asymmetric", "permission-v2"],
        })
    }

    /// The gateway's public key set (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> Value {
        serde_json::json!({"keys": [self.settings.key.jwk]})
    }
}

/// Record a client's `jti` until `exp`; false when it was seen before.
/// Durable (table `auth_jti`): replicas sharing a database agree.
async fn remember_jti(store: &dyn Store, client: &str, jti: &str, exp: i64, now: i64) -> Result<bool, StoreError> {
    let mut tx = store.begin().await?;
    let mut prune = Sql::new("DELETE FROM auth_jti WHERE exp < ");
    prune.int_param(now);
    tx.execute(prune).await?;
    let mut ins = Sql::new("INSERT INTO auth_jti (client_id, jti, exp) VALUES (");
    ins.text_param(client).push(", ").text_param(jti).push(", ").int_param(exp).push(") ON CONFLICT DO NOTHING");
    let n = tx.execute(ins).await?;
    tx.commit().await?;
    Ok(n == 1)
}
