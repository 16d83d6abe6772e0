"""Authlib, unmodified, against a real `mandate serve`.

Run by ../test/authlib.test.mjs, one case per process:

    python authlib_client.py <case>

The context (issuer, agent id, private keys as JWKs, resource, redirect URI)
comes as JSON in MANDATE_CLIENT_CONTEXT. A case checks what it gets with
plain asserts and exits non-zero on the first failure, printing the request
and the answer Mandate gave. It prints `RESULT <json>` for the node test to
check again. The code flow prints `AUTHORIZE <url>` and reads the URL the
browser was sent back to on stdin: the node side clicks the consent page in
Chromium.

Cases:
  metadata        RFC 8414 document validated by authlib's own rules (+ RFC 9207)
  cc-ed25519      OAuth2Session (requests), client_credentials, private_key_jwt (EdDSA)
  cc-es256        the same with a P-256 key (ES256)
  cc-async        AsyncOAuth2Client (httpx), client_credentials, private_key_jwt
  code-flow       authorization code + PKCE + resource + offline_access, refresh,
                  introspection and revocation, with one OAuth2Session
  refresh-offline the code flow, then authlib's refresh as it comes (it sends
                  scope "read offline_access" again)
"""

import asyncio
import json
import os
import sys
import time

# A loopback http:// issuer in the tests: authlib refuses http without this
# (its documented switch for local development).
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

import requests  # noqa: E402
from authlib.integrations.httpx_client import AsyncOAuth2Client  # noqa: E402
from authlib.integrations.requests_client import OAuth2Session  # noqa: E402
from authlib.oauth2.rfc7523 import PrivateKeyJWT  # noqa: E402
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata  # noqa: E402
from authlib.oauth2.rfc9207 import AuthorizationServerMetadata as IssMetadata  # noqa: E402
from joserfc.jwk import ECKey, OKPKey  # noqa: E402

CTX = json.loads(os.environ["MANDATE_CLIENT_CONTEXT"])
ISSUER = CTX["issuer"]
RESOURCE = CTX["resource"]
CLIENT_ID = CTX["client_id"]


def claims(jwt):
    import base64

    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def metadata():
    r = requests.get(f"{ISSUER}/.well-known/oauth-authorization-server", timeout=10)
    assert r.status_code == 200, f"metadata: {r.status_code} {r.text}"
    return r.json()


def key(which):
    jwk = CTX["keys"][which]
    return OKPKey.import_key(jwk) if jwk["kty"] == "OKP" else ECKey.import_key(jwk)


def alg(which):
    return "EdDSA" if CTX["keys"][which]["kty"] == "OKP" else "ES256"


EXCHANGES = []


def record(resp, *args, **kwargs):
    """A requests hook: keeps every exchange, printed when a case fails."""
    EXCHANGES.append(shown(resp))


def shown(resp):
    """The request a library sent and Mandate's answer, for a failure message."""
    req = resp.request
    body = req.body.decode() if isinstance(req.body, bytes) else req.body
    return f"> {req.method} {req.url}\n> {body}\n< {resp.status_code} {resp.text}"


def expect_error(fn, error):
    """`fn()` must raise authlib's OAuthError with this `error`."""
    from authlib.integrations.base_client.errors import OAuthError

    try:
        got = fn()
    except OAuthError as e:
        assert e.error == error, f"expected {error}, got {e.error}: {e.description}"
        return e
    raise AssertionError(f"expected {error}, got a token: {got}")


def case_metadata():
    m = AuthorizationServerMetadata(metadata())
    # Raises on the first rule the document breaks (RFC 8414 §2, RFC 9207 §3).
    m.validate(metadata_classes=[IssMetadata])
    assert m["issuer"] == ISSUER
    assert m["authorization_response_iss_parameter_supported"] is True
    return {"issuer": m["issuer"], "grant_types_supported": m["grant_types_supported"]}


def session(which, **kw):
    s = OAuth2Session(
        CLIENT_ID,
        key(which),
        token_endpoint_auth_method="private_key_jwt",
        # authlib's default for revocation is client_secret_basic whenever a
        # "secret" (here the key) is set: name the method.
        revocation_endpoint_auth_method="private_key_jwt",
        **kw,
    )
    s.register_client_auth_method(PrivateKeyJWT(f"{ISSUER}/oauth/token", alg=alg(which)))
    s.hooks["response"].append(record)
    return s


def case_cc(which):
    m = metadata()
    s = session(which, scope="read")
    token = s.fetch_token(m["token_endpoint"], grant_type="client_credentials", resource=RESOURCE)
    c = claims(token["access_token"])
    assert token["token_type"].lower() == "bearer", token
    assert token["scope"] == "read", token
    assert c["sub"] == CLIENT_ID and c["aud"] == RESOURCE, c
    # The session's token is used as a Bearer token; the assertion authlib
    # signed lives an hour (its default), as Mandate's limit allows.
    assert s.token["access_token"] == token["access_token"]
    # Without scope: every scope of the resource policy lets the agent hold.
    bare = session(which)
    t2 = bare.fetch_token(m["token_endpoint"], grant_type="client_credentials", resource=RESOURCE)
    assert t2["scope"] == "read write", t2
    # Without resource: invalid_target.
    expect_error(
        lambda: session(which, scope="read").fetch_token(m["token_endpoint"], grant_type="client_credentials"),
        "invalid_target",
    )
    return {"sub": c["sub"], "alg": alg(which)}


async def case_cc_async():
    m = metadata()
    async def hook(resp):
        await resp.aread()
        EXCHANGES.append(f"> {resp.request.method} {resp.request.url}\n> {resp.request.content.decode()}\n< {resp.status_code} {resp.text}")

    async with AsyncOAuth2Client(
        CLIENT_ID,
        key("ed25519"),
        token_endpoint_auth_method="private_key_jwt",
        revocation_endpoint_auth_method="private_key_jwt",
        scope="read",
        event_hooks={"response": [hook]},
    ) as client:
        client.register_client_auth_method(PrivateKeyJWT(m["token_endpoint"], alg="EdDSA"))
        token = await client.fetch_token(m["token_endpoint"], grant_type="client_credentials", resource=RESOURCE)
        assert token["scope"] == "read", token
        c = claims(token["access_token"])
        assert c["sub"] == CLIENT_ID and c["aud"] == RESOURCE, c
        # Introspection and revocation through the async client.
        r = await client.introspect_token(m["introspection_endpoint"], token=token["access_token"])
        assert r.status_code == 200 and r.json()["active"] is True, r.text
        r = await client.revoke_token(m["revocation_endpoint"], token=token["access_token"])
        assert r.status_code == 200, r.text
        r = await client.introspect_token(m["introspection_endpoint"], token=token["access_token"])
        assert r.json()["active"] is False, r.text
        return {"sub": c["sub"]}


def authorize(scope):
    """The code flow up to the tokens: the consent is clicked by the node side."""
    m = metadata()
    s = session(
        "ed25519",
        scope=scope,
        redirect_uri=CTX["redirect_uri"],
        code_challenge_method="S256",
    )
    from urllib.parse import parse_qs, urlparse

    from authlib.common.security import generate_token

    verifier = generate_token(48)
    url, state = s.create_authorization_url(m["authorization_endpoint"], code_verifier=verifier, resource=RESOURCE)
    print(f"AUTHORIZE {url}", flush=True)
    callback = sys.stdin.readline().strip()
    assert callback, "no callback URL on stdin"
    q = parse_qs(urlparse(callback).query)
    # RFC 9207: authlib's client does not check iss itself; the case does.
    assert q.get("iss") == [ISSUER], q
    token = s.fetch_token(
        m["token_endpoint"],
        authorization_response=callback,
        code_verifier=verifier,
        resource=RESOURCE,
    )
    return m, s, token


def case_code_flow():
    m, s, token = authorize("read offline_access")
    assert token.get("refresh_token"), token
    c = claims(token["access_token"])
    assert c["sub"] == CTX["user_id"] and c["act"]["sub"] == CLIENT_ID and c["aud"] == RESOURCE, c

    # Refresh with the scope the token response said was granted, and the
    # resource (see case refresh-offline for authlib's default).
    t2 = s.refresh_token(m["token_endpoint"], refresh_token=token["refresh_token"], scope=token["scope"], resource=RESOURCE)
    assert t2["access_token"] != token["access_token"]
    assert t2["refresh_token"] != token["refresh_token"], "the refresh token did not rotate"
    assert claims(t2["access_token"])["sub"] == CTX["user_id"]

    r = s.introspect_token(m["introspection_endpoint"], token=t2["access_token"])
    assert r.status_code == 200, shown(r)
    info = r.json()
    assert info["active"] is True and info["sub"] == CTX["user_id"], info
    r = s.revoke_token(m["revocation_endpoint"], token=t2["refresh_token"], token_type_hint="refresh_token")
    assert r.status_code == 200, shown(r)
    expect_error(
        lambda: s.refresh_token(m["token_endpoint"], refresh_token=t2["refresh_token"], scope="read"),
        "invalid_grant",
    )
    return {"sub": c["sub"], "act": c["act"]["sub"], "scope": token.get("scope")}


def case_refresh_offline():
    """authlib's refresh as it comes: it sends the session's scope again,
    offline_access included (RFC 6749 §6 allows any scope the person granted)."""
    m, s, token = authorize("read offline_access")
    t2 = s.refresh_token(m["token_endpoint"], refresh_token=token["refresh_token"])
    assert t2.get("access_token"), t2
    return {"scope": t2.get("scope")}


def main():
    case = sys.argv[1]
    started = time.monotonic()
    try:
        result = run(case)
    except BaseException:
        for e in EXCHANGES[-3:]:
            print(e, file=sys.stderr)
        raise
    result["seconds"] = round(time.monotonic() - started, 2)
    print(f"RESULT {json.dumps(result)}", flush=True)


def run(case):
    if case == "metadata":
        result = case_metadata()
    elif case == "cc-ed25519":
        result = case_cc("ed25519")
    elif case == "cc-es256":
        result = case_cc("es256")
    elif case == "cc-async":
        result = asyncio.run(case_cc_async())
    elif case == "code-flow":
        result = case_code_flow()
    elif case == "refresh-offline":
        result = case_refresh_offline()
    else:
        raise SystemExit(f"unknown case {case}")
    return result


if __name__ == "__main__":
    main()
