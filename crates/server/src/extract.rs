//! Request parsing at the edge: strict JSON for the admin API, strict forms
//! for OAuth endpoints, bearer and client credentials.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use mandate_core::{ClientCredentials, Error};
use serde::de::DeserializeOwned;

use crate::error::{OAuthError, Problem};

pub use mandate_model::json::{MAX_JSON_DEPTH, check_json_shape};

/// A JSON body parsed strictly into `T`: `application/json`, depth ≤ 64,
/// no duplicate keys, no unknown fields (on the types that deny them).
pub struct StrictJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let is_json =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
                ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_problem)?;
        check_json_shape(&bytes).map_err(|e| Problem::bad_input(format!("malformed JSON: {e}")))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| Problem::bad_input(format!("invalid body: {e}")))?;
        Ok(StrictJson(value))
    }
}

/// A JSON body like [`StrictJson`], or `T::default()` when the body is empty
/// (for calls whose every field is optional).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let empty = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) == Some("0")
            || (req.headers().get(header::CONTENT_LENGTH).is_none()
                && req.headers().get(header::TRANSFER_ENCODING).is_none());
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        let StrictJson(v) = StrictJson::from_request(req, state).await?;
        Ok(OptionalJson(v))
    }
}

fn body_problem(e: axum::extract::rejection::BytesRejection) -> Problem {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            "the body is larger than allowed",
        )
    } else {
        Problem::bad_input(e.body_text())
    }
}

/// An `application/x-www-form-urlencoded` body where every parameter
/// appears at most once (RFC 6749 §3.1), except those listed as repeatable.
pub struct OAuthForm {
    params: BTreeMap<String, Vec<String>>,
}

const REPEATABLE: &[&str] = &["resource", "audience"];

impl OAuthForm {
    pub fn parse(bytes: &[u8]) -> Result<Self, OAuthError> {
        if std::str::from_utf8(bytes).is_err() {
            return Err(Error::InvalidRequest("the body is not UTF-8".into()).into());
        }
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            let entry = params.entry(k.clone().into_owned()).or_default();
            if !entry.is_empty() && !REPEATABLE.contains(&k.as_ref()) {
                return Err(Error::InvalidRequest(format!("parameter {k} is repeated")).into());
            }
            entry.push(v.into_owned());
        }
        Ok(Self { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(|v| v.first()).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.params.get(name).cloned().unwrap_or_default()
    }

    /// The first value of `name` as sent, empty or not.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(|v| v.first()).map(String::as_str)
    }

    /// Every parameter, in name order, repeats kept.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.params.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone()))).collect()
    }

    /// The names of the parameters sent.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.keys().map(String::as_str)
    }
}

impl<S: Send + Sync> FromRequest<S> for OAuthForm {
    type Rejection = OAuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthError> {
        let is_form = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        });
        if !is_form {
            return Err(Error::InvalidRequest("send application/x-www-form-urlencoded".into()).into());
        }
        let bytes =
            Bytes::from_request(req, state).await.map_err(|e| OAuthError(Error::InvalidRequest(e.body_text())))?;
        Self::parse(&bytes)
    }
}

/// The `Authorization: Bearer` token, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

/// The access token of `Authorization: DPoP …` with its `DPoP` proof
/// header (RFC 9449 §7.1); `None` for any other scheme.
pub fn dpop_token(headers: &HeaderMap) -> Option<(&str, Option<&str>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("dpop") || token.is_empty() {
        return None;
    }
    let mut proofs = headers.get_all("dpop").iter();
    let proof = proofs.next().and_then(|p| p.to_str().ok());
    // Two proofs are as bad as none.
    Some((token, if proofs.next().is_some() { None } else { proof }))
}

/// The client's credentials, from the form (`private_key_jwt`) or the
/// `Authorization: Basic` header (`client_secret_basic`). Using both at once
/// is refused (RFC 6749 §2.3).
pub fn client_credentials(headers: &HeaderMap, form: &OAuthForm) -> Result<ClientCredentials, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, creds)| creds.trim().to_owned());
    let assertion = form.get("client_assertion");
    if form.get("client_secret").is_some() {
        return Err(Error::InvalidClient("client_secret_post is not supported".into()).into());
    }
    match (basic, assertion) {
        (Some(_), Some(_)) => Err(Error::InvalidRequest("use one client authentication method".into()).into()),
        (Some(b64), None) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| OAuthError(Error::InvalidClient("malformed Basic credentials".into())))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| OAuthError(Error::InvalidClient("malformed Basic credentials".into())))?;
            // RFC 6749 §2.3.1: both halves are form-urlencoded.
            let dec = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Ok(ClientCredentials::Secret { client_id: dec(id), secret: dec(secret) })
        }
        (None, Some(a)) => Ok(ClientCredentials::Assertion {
            assertion_type: form.get("client_assertion_type").unwrap_or_default().to_owned(),
            assertion: a.to_owned(),
            client_id: form.get("client_id").map(str::to_owned),
        }),
        // A public client names itself and proves nothing (RFC 6749 §2.3).
        (None, None) => Ok(match form.get("client_id") {
            Some(id) => ClientCredentials::Public { client_id: id.to_owned() },
            None => ClientCredentials::None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        assert!(check_json_shape(br#"{"a":[1,{"b":2}]}"#).is_ok());
        assert!(check_json_shape(br#"{"a":1,"a":2}"#).is_err());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check_json_shape(deep.as_bytes()).is_err());
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(check_json_shape(ok.as_bytes()).is_ok());
        assert!(check_json_shape(b"{} x").is_err());
    }

    #[test]
    fn forms_refuse_repeats() {
        assert!(OAuthForm::parse(b"scope=a&scope=b").is_err());
        let f = OAuthForm::parse(b"resource=a&resource=b&scope=x").ok().unwrap();
        assert_eq!(f.all("resource").len(), 2);
        assert!(OAuthForm::parse(&[b's', b'=', 0xff]).is_err());
    }
}
