//! Token and backchannel requests, parsed from the form into their typed
//! shape before any use case sees them: which parameters each grant reads,
//! which it requires, and what their values may be. Parameters a grant
//! does not read are ignored, for every grant alike (RFC 6749 §3.1 and
//! §3.2: clients such as the MCP SDKs send ones a server may not know).
//! (Repeats are refused by the form itself, but for `resource` and
//! `audience`.) Public so that the fuzz targets (`crates/fuzz`) can drive
//! it.

use mandate_core::request::TOKEN_TYPE_ACCESS;
use mandate_core::{
    BadGrant, BcAuthorizeRequest, Error, ExchangeRequest, GrantRequest, GrantType, Malformed, TokenRequest,
};

use crate::extract::OAuthForm;

/// The token endpoint's request: `grant_type` names the grant, which
/// decides the rest. An unknown grant or bad parameters are carried to the
/// use case, which refuses them once the client has authenticated.
pub fn token_request(form: &OAuthForm, grant_type: &str, dpop: Vec<String>) -> TokenRequest {
    let grant = match GrantType::parse(grant_type) {
        None => Err(BadGrant::Unsupported(grant_type.to_owned())),
        Some(g) => grant_request(form, g).map_err(|error| BadGrant::Malformed { grant: g, error }),
    };
    TokenRequest { grant, dpop }
}

fn grant_request(form: &OAuthForm, grant: GrantType) -> Result<GrantRequest, Error> {
    Ok(match grant {
        GrantType::ClientCredentials => GrantRequest::ClientCredentials {
            scope: form.get("scope").map(str::to_owned),
            resources: form.all("resource"),
        },
        GrantType::AuthorizationCode => GrantRequest::AuthorizationCode {
            code: require(form, "code")?,
            redirect_uri: form.raw("redirect_uri").map(str::to_owned),
            code_verifier: form.raw("code_verifier").map(str::to_owned),
            resources: form.all("resource"),
        },
        GrantType::Ciba => GrantRequest::Ciba { auth_req_id: require(form, "auth_req_id")? },
        GrantType::Refresh => GrantRequest::Refresh {
            refresh_token: require(form, "refresh_token")?,
            scope: form.raw("scope").map(str::to_owned),
            resources: form.all("resource"),
        },
        GrantType::Exchange => GrantRequest::Exchange(exchange_request(form)?),
        GrantType::JwtBearer => GrantRequest::JwtBearer {
            assertion: require(form, "assertion")?,
            scope: form.raw("scope").map(str::to_owned),
            resources: form.all("resource"),
        },
    })
}

/// RFC 8693 §2.1, for the one token type Mandate exchanges.
fn exchange_request(form: &OAuthForm) -> Result<ExchangeRequest, Error> {
    // SECURITY row 21: `act` is built by Mandate from the authenticated
    // actor; a client that sends one (or `may_act`) is told so, not ignored.
    if let Some(k) = ["act", "may_act"].into_iter().find(|k| form.raw(k).is_some()) {
        return Err(Error::InvalidRequest(format!("{k} is built by Mandate and may not be sent")));
    }
    let subject_token = require(form, "subject_token")?;
    if require(form, "subject_token_type")? != TOKEN_TYPE_ACCESS {
        return Err(Error::InvalidRequest(format!("subject_token_type must be {TOKEN_TYPE_ACCESS}")));
    }
    if let Some(t) = form.raw("requested_token_type")
        && t != TOKEN_TYPE_ACCESS
    {
        return Err(Error::InvalidRequest(format!("requested_token_type must be {TOKEN_TYPE_ACCESS}")));
    }
    let actor_token = match (form.raw("actor_token"), form.raw("actor_token_type")) {
        (None, None) => None,
        (Some(t), Some(ty)) if ty == TOKEN_TYPE_ACCESS => Some(t.to_owned()),
        _ => {
            return Err(Error::InvalidRequest(format!(
                "actor_token and actor_token_type ({TOKEN_TYPE_ACCESS}) go together"
            )));
        }
    };
    Ok(ExchangeRequest {
        subject_token,
        actor_token,
        resources: form.all("resource"),
        audiences: form.all("audience"),
        scope: form.raw("scope").map(str::to_owned),
        subject_token_dpop: form.raw("subject_token_dpop").map(str::to_owned),
        authorization_details: form.raw("authorization_details").map(str::to_owned),
    })
}

/// `POST /oauth/bc-authorize`; a bad request keeps what it named, for the
/// record of its refusal.
pub fn bc_authorize_request(form: &OAuthForm) -> Result<BcAuthorizeRequest, Malformed> {
    let parsed = require(form, "login_hint");
    match parsed {
        Ok(login_hint) => Ok(BcAuthorizeRequest {
            login_hint,
            scope: form.raw("scope").map(str::to_owned),
            resources: form.all("resource"),
            binding_message: form.raw("binding_message").map(str::to_owned),
            requested_expiry: form.raw("requested_expiry").map(str::to_owned),
            allowed_actors: form.raw("allowed_actors").map(str::to_owned),
            client_notification_token: form.raw("client_notification_token").map(str::to_owned),
            authorization_details: form.raw("authorization_details").map(str::to_owned),
        }),
        Err(error) => Err(Malformed {
            error,
            resource: form.all("resource").into_iter().next(),
            scope: form.raw("scope").map(str::to_owned),
        }),
    }
}

/// A parameter that must be present and not empty.
fn require(form: &OAuthForm, key: &str) -> Result<String, Error> {
    match form.raw(key) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(Error::InvalidRequest(format!("{key} is required"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> OAuthForm {
        match OAuthForm::parse(body.as_bytes()) {
            Ok(f) => f,
            Err(e) => panic!("form {body:?}: {:?}", e.0),
        }
    }

    fn grant(body: &str) -> Result<GrantRequest, BadGrant> {
        let f = form(body);
        let grant_type = f.get("grant_type").unwrap_or_default().to_owned();
        token_request(&f, &grant_type, vec![]).grant
    }

    fn malformed(body: &str) -> (GrantType, String) {
        match grant(body) {
            Err(BadGrant::Malformed { grant, error }) => (grant, error.to_string()),
            other => panic!("{body:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn each_grant_takes_its_own_shape() {
        assert_eq!(
            grant("grant_type=client_credentials&scope=read&resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb&x=1"),
            Ok(GrantRequest::ClientCredentials {
                scope: Some("read".into()),
                resources: vec!["https://a".into(), "https://b".into()],
            })
        );
        assert_eq!(
            grant("grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Aciba&auth_req_id=r1"),
            Ok(GrantRequest::Ciba { auth_req_id: "r1".into() })
        );
        assert_eq!(
            grant("grant_type=refresh_token&refresh_token=mnd_rt_1&scope=&resource=https%3A%2F%2Fa"),
            Ok(GrantRequest::Refresh {
                refresh_token: "mnd_rt_1".into(),
                scope: Some(String::new()),
                resources: vec!["https://a".into()]
            })
        );
        // Parameters a grant does not read are ignored (RFC 6749 §3.2).
        assert_eq!(
            grant("grant_type=authorization_code&code=c&code_verifier=v&prompt=consent&resource=https%3A%2F%2Fa"),
            Ok(GrantRequest::AuthorizationCode {
                code: "c".into(),
                redirect_uri: None,
                code_verifier: Some("v".into()),
                resources: vec!["https://a".into()]
            })
        );
        let access = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";
        assert_eq!(
            grant(&format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=t\
                 &subject_token_type={access}&actor_token=a&actor_token_type={access}&audience=https%3A%2F%2Fa"
            )),
            Ok(GrantRequest::Exchange(ExchangeRequest {
                subject_token: "t".into(),
                actor_token: Some("a".into()),
                resources: vec![],
                audiences: vec!["https://a".into()],
                scope: None,
                subject_token_dpop: None,
                authorization_details: None,
            }))
        );
    }

    #[test]
    fn bad_requests_keep_their_grant_for_the_record() {
        assert_eq!(grant("grant_type=password&username=a"), Err(BadGrant::Unsupported("password".into())));
        assert_eq!(malformed("grant_type=refresh_token&refresh_token=").0, GrantType::Refresh);
        assert!(malformed("grant_type=authorization_code&code_verifier=v").1.contains("code is required"));
        let exchange = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=t";
        assert!(malformed(exchange).1.contains("subject_token_type is required"));
        let e = malformed(&format!("{exchange}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt")).1;
        assert!(e.contains("subject_token_type must be"), "{e}");
        let access = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";
        let e = malformed(&format!("{exchange}&subject_token_type={access}&actor_token=a")).1;
        assert!(e.contains("go together"), "{e}");
        let e = malformed(&format!("{exchange}&subject_token_type={access}&requested_token_type=x")).1;
        assert!(e.contains("requested_token_type must be"), "{e}");
    }

    #[test]
    fn a_bad_backchannel_request_keeps_what_it_named() {
        let ok = bc_authorize_request(&form("login_hint=usr_1&scope=read&resource=https%3A%2F%2Fa&binding_message=m"));
        assert_eq!(
            ok,
            Ok(BcAuthorizeRequest {
                login_hint: "usr_1".into(),
                scope: Some("read".into()),
                resources: vec!["https://a".into()],
                binding_message: Some("m".into()),
                requested_expiry: None,
                allowed_actors: None,
                client_notification_token: None,
                authorization_details: None,
            })
        );
        match bc_authorize_request(&form("scope=read&resource=https%3A%2F%2Fa")) {
            Err(m) => {
                assert!(m.error.to_string().contains("login_hint is required"));
                assert_eq!((m.resource.as_deref(), m.scope.as_deref()), (Some("https://a"), Some("read")));
            }
            Ok(r) => panic!("parsed {r:?}"),
        }
        assert!(bc_authorize_request(&form("login_hint=u&acr_values=x")).is_ok());
    }
}
