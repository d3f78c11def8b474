"""Tests for oncely.auth: every scheme accepted, and each way it must refuse."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from oncely.auth import (
    AuthConfigError,
    Authenticator,
    AuthError,
    AuthRequest,
    BearerTokenVerifier,
    HmacVerifier,
    OidcVerifier,
    Principal,
    QStashVerifier,
)

NOW = 1_700_000_000.0
URL = "https://app.example.com/jobs/process"
SA = "scheduler@proj.iam.gserviceaccount.com"
TOKEN_1, TOKEN_2 = "tok-one-0123456789abcdef", "tok-two-0123456789abcdef"
HMAC_1, HMAC_2 = "hmac-secret-one-0123456789", "hmac-secret-two-0123456789"
QSTASH_CURRENT, QSTASH_NEXT = "sig_" + "c" * 28, "sig_" + "n" * 28  # Upstash keys: 32 chars
KEY_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_EVIL = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_request(
    headers: Mapping[str, str] | None = None, body: bytes = b'{"job":"x"}', now: float = NOW,
    url: str = URL,
) -> AuthRequest:
    return AuthRequest("POST", url, dict(headers or {}), body, now)


def accept(auth: Authenticator, req: AuthRequest) -> Principal:
    return asyncio.run(auth.authenticate(req))


def refuse(auth: Authenticator, req: AuthRequest) -> AuthError:
    with pytest.raises(AuthError) as info:
        asyncio.run(auth.authenticate(req))
    return info.value


# --- a real JWKS server on 127.0.0.1 -------------------------------------------------------


class Jwks:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.status = 200
        self.url = ""

    def publish(self, *pairs: tuple[str, rsa.RSAPrivateKey]) -> None:
        self.keys = [
            {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "RS256",
             "use": "sig"}
            for kid, key in pairs
        ]


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    state = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits += 1
            payload = json.dumps({"keys": state.keys}).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/oauth2/v3/certs"
    state.publish(("kid-a", KEY_A))
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def id_token(key: rsa.RSAPrivateKey = KEY_A, kid: str = "kid-a", **claims: Any) -> str:
    """An ID token shaped like the ones Cloud Scheduler sends (Google-signed, RS256)."""
    body = {"iss": "https://accounts.google.com", "aud": URL, "azp": "1234", "sub": "1234",
            "email": SA, "email_verified": True, "iat": int(NOW), "exp": int(NOW) + 3600}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def oidc_auth(jwks: Jwks, **kwargs: Any) -> tuple[Authenticator, OidcVerifier]:
    verifier = OidcVerifier(URL, [SA], jwks_url=jwks.url, **kwargs)
    return Authenticator([verifier]), verifier


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- no configuration, missing credentials, development ------------------------------------


def test_no_verifiers_refuses_everything_and_says_how_to_configure() -> None:
    error = refuse(Authenticator([]), make_request(bearer(TOKEN_1)))
    assert error.status == 401
    assert "ONCELY_TOKENS" in error.detail and "ONCELY_DEV=1" in error.detail
    assert "WWW-Authenticate" in error.headers


def test_missing_credentials_is_401_with_a_challenge_per_scheme() -> None:
    auth = Authenticator([BearerTokenVerifier([TOKEN_1]), HmacVerifier([HMAC_1])])
    error = refuse(auth, make_request({"Content-Type": "application/json"}))
    assert error.status == 401
    assert "bearer" in error.detail and "hmac" in error.detail
    challenge = error.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="oncely"') and "Oncely-HMAC" in challenge
    # "Authorization: Bearer" with nothing after it is missing credentials too
    assert refuse(auth, make_request({"Authorization": "Bearer "})).detail.startswith("Missing")


def test_development_mode_accepts_everything_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="oncely.auth"):
        auth = Authenticator.development()
    assert "DEVELOPMENT MODE" in caplog.text
    assert accept(auth, make_request()) == Principal("development", "anonymous")
    assert accept(auth, make_request(bearer("anything"))).scheme == "development"


# --- bearer tokens ---------------------------------------------------------------------------


def test_bearer_tokens_accepted_during_rotation() -> None:
    auth = Authenticator([BearerTokenVerifier([TOKEN_1, TOKEN_2])])
    assert accept(auth, make_request(bearer(TOKEN_1))) == Principal("bearer", "token#1")
    assert accept(auth, make_request({"authorization": f"bearer {TOKEN_2}"})) == Principal(
        "bearer", "token#2"
    )


def test_bearer_wrong_token_is_401_and_never_echoes_secrets() -> None:
    auth = Authenticator([BearerTokenVerifier([TOKEN_1])])
    for wrong in (TOKEN_1[:-1], TOKEN_1 + "x", "", TOKEN_2):
        error = refuse(auth, make_request(bearer(wrong or "nope")))
        assert error.status == 401 and error.scheme == "bearer"
        assert error.headers == {"WWW-Authenticate": 'Bearer realm="oncely"'}
        assert TOKEN_1 not in str(error) and (not wrong or wrong not in str(error))
    # Basic auth carries the token as its password, base64-encoded: a raw token is refused
    raw_basic = refuse(auth, make_request({"Authorization": f"Basic {TOKEN_1}"}))
    assert raw_basic.status == 401 and TOKEN_1 not in raw_basic.detail
    # another scheme in the Authorization header is not a token credential
    assert refuse(auth, make_request({"Authorization": f"Digest {TOKEN_1}"})).detail.startswith(
        "Missing"
    )


# --- HMAC ------------------------------------------------------------------------------------


def hmac_headers(secret: str, body: bytes, ts: int) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Oncely-Timestamp": str(ts), "X-Oncely-Signature": f"sha256={digest}"}


def test_hmac_accepted_with_either_secret() -> None:
    auth = Authenticator([HmacVerifier([HMAC_1, HMAC_2])])
    body = b'{"job":"nightly"}'
    req = make_request(hmac_headers(HMAC_1, body, int(NOW)), body)
    assert accept(auth, req) == Principal("hmac", "secret#1")
    req = make_request(hmac_headers(HMAC_2, body, int(NOW) - 10), body)
    assert accept(auth, req) == Principal("hmac", "secret#2")


def test_hmac_bad_signature_is_401() -> None:
    auth = Authenticator([HmacVerifier([HMAC_1])])
    body = b'{"job":"nightly"}'
    wrong_secret = make_request(hmac_headers("not-the-secret-0123456789", body, int(NOW)), body)
    tampered = make_request(hmac_headers(HMAC_1, body, int(NOW)), b'{"job":"other"}')
    headers = hmac_headers(HMAC_1, body, int(NOW))
    headers["X-Oncely-Timestamp"] = str(int(NOW) - 1)  # signature was over another timestamp
    moved = make_request(headers, body)
    for req in (wrong_secret, tampered, moved):
        error = refuse(auth, req)
        assert error.status == 401 and "does not match" in error.detail
        assert HMAC_1 not in str(error)
        assert error.headers["WWW-Authenticate"].startswith("Oncely-HMAC")


def test_hmac_malformed_headers_are_401() -> None:
    auth = Authenticator([HmacVerifier([HMAC_1])])
    good = hmac_headers(HMAC_1, b"", int(NOW))
    cases = [
        {**good, "X-Oncely-Signature": good["X-Oncely-Signature"].removeprefix("sha256=")},
        {**good, "X-Oncely-Signature": "sha256=abc"},
        {**good, "X-Oncely-Timestamp": "1e9"},
        {**good, "X-Oncely-Timestamp": "-1"},
        {"X-Oncely-Signature": good["X-Oncely-Signature"]},
    ]
    for headers in cases:
        error = refuse(auth, make_request(headers, b""))
        assert error.status == 401 and "X-Oncely-Timestamp" in error.detail


def test_hmac_stale_or_future_timestamp_is_401() -> None:
    auth = Authenticator([HmacVerifier([HMAC_1], window=300)])
    body = b"{}"
    for ts in (int(NOW) - 301, int(NOW) + 301, 0):
        error = refuse(auth, make_request(hmac_headers(HMAC_1, body, ts), body))
        assert error.status == 401 and "±300 s" in error.detail
    # the edges of the window are accepted
    for ts in (int(NOW) - 300, int(NOW) + 300):
        assert accept(auth, make_request(hmac_headers(HMAC_1, body, ts), body)).scheme == "hmac"


def test_hmac_replayed_signature_is_401() -> None:
    auth = Authenticator([HmacVerifier([HMAC_1])])
    body = b'{"job":"nightly"}'
    headers = hmac_headers(HMAC_1, body, int(NOW))
    assert accept(auth, make_request(headers, body)).scheme == "hmac"
    error = refuse(auth, make_request(headers, body, now=NOW + 5))
    assert error.status == 401 and "replay" in error.detail
    # hex case does not make a replay look new
    upper = {**headers, "X-Oncely-Signature": "sha256=" + headers["X-Oncely-Signature"][7:].upper()}
    assert "replay" in refuse(auth, make_request(upper, body, now=NOW + 6)).detail
    # a fresh signature for the same body is fine
    assert accept(auth, make_request(hmac_headers(HMAC_1, body, int(NOW) + 1), body)).scheme
    # a failed (forged) attempt is not recorded, so it cannot block the genuine request
    genuine = hmac_headers(HMAC_1, body, int(NOW) + 2)
    refuse(auth, make_request(genuine, b"forged body"))
    assert accept(auth, make_request(genuine, body)).scheme == "hmac"


def test_hmac_seen_set_is_bounded() -> None:
    auth = Authenticator([HmacVerifier([HMAC_1], max_seen=2)])
    body = b"{}"
    signed = [hmac_headers(HMAC_1, body, int(NOW) - i) for i in (3, 2, 1)]
    for headers in signed:
        accept(auth, make_request(headers, body))
    # capacity 2: the oldest entry (closest to expiry) was dropped, the newer two are remembered
    assert "replay" in refuse(auth, make_request(signed[2], body)).detail
    assert "replay" in refuse(auth, make_request(signed[1], body)).detail
    assert accept(auth, make_request(signed[0], body)).scheme == "hmac"


# --- OIDC (Google Cloud Scheduler) -----------------------------------------------------------


def test_oidc_accepted_for_both_google_issuers(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)
    for iss in ("https://accounts.google.com", "accounts.google.com"):
        assert accept(auth, make_request(bearer(id_token(iss=iss)))) == Principal("oidc", SA)
    assert jwks.hits == 1


def test_oidc_wrong_audience_is_401(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)
    error = refuse(auth, make_request(bearer(id_token(aud="https://other.example.com/"))))
    assert error.status == 401 and "audience" in error.detail and URL in error.detail
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    assert refuse(auth, make_request(bearer(id_token(aud=None)))).status == 401


def test_oidc_expired_is_401_beyond_the_leeway(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks, leeway=30)
    token = id_token(iat=int(NOW) - 3600, exp=int(NOW) - 10)
    assert accept(auth, make_request(bearer(token))).subject == SA  # within the 30 s leeway
    error = refuse(auth, make_request(bearer(token), now=NOW + 21))
    assert error.status == 401 and "expired" in error.detail
    # an ID token that is not valid yet is refused as well
    future = id_token(iat=int(NOW) + 600, exp=int(NOW) + 4200)
    assert refuse(auth, make_request(bearer(future))).status == 401


def test_oidc_wrong_issuer_is_401(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)
    error = refuse(auth, make_request(bearer(id_token(iss="https://evil.example.com"))))
    assert error.status == 401 and "issuer" in error.detail


def test_oidc_bad_signature_is_401(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)
    forged = id_token(key=KEY_EVIL, kid="kid-a")  # claims the published kid, other key
    error = refuse(auth, make_request(bearer(forged)))
    assert error.status == 401 and "signature" in error.detail
    head, payload, sig = id_token().split(".")
    tampered = ".".join([head, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"), sig])
    assert refuse(auth, make_request(bearer(tampered))).status == 401


def test_oidc_rejects_other_algorithms_without_fetching(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)
    hs = jwt.encode({"iss": "accounts.google.com", "aud": URL, "email": SA}, "k" * 32,
                    algorithm="HS256", headers={"kid": "kid-a"})
    error = refuse(auth, make_request(bearer(hs)))
    assert error.status == 401 and "RS256" in error.detail
    assert jwks.hits == 0


def test_oidc_email_not_allowed_is_403(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)
    intruder = id_token(email="intruder@evil.iam.gserviceaccount.com")
    error = refuse(auth, make_request(bearer(intruder)))
    assert error.status == 403 and "ONCELY_OIDC_EMAILS" in error.detail
    assert error.headers == {}  # 403 is not a challenge
    assert refuse(auth, make_request(bearer(id_token(email_verified=False)))).status == 403
    assert refuse(auth, make_request(bearer(id_token(email=None)))).status == 403
    # allow-list matching ignores case, as email addresses do
    assert accept(auth, make_request(bearer(id_token(email=SA.upper())))).scheme == "oidc"


def test_oidc_jwks_is_cached_until_ttl(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks, jwks_ttl=600)
    for offset in (0, 1, 599):
        accept(auth, make_request(bearer(id_token()), now=NOW + offset))
    assert jwks.hits == 1
    accept(auth, make_request(bearer(id_token()), now=NOW + 600))
    assert jwks.hits == 2


def test_oidc_unknown_kid_triggers_one_refetch(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks, refetch_cooldown=30)
    accept(auth, make_request(bearer(id_token())))
    assert jwks.hits == 1
    jwks.publish(("kid-a", KEY_A), ("kid-b", KEY_B))  # Google rotates keys
    token_b = id_token(key=KEY_B, kid="kid-b")
    assert accept(auth, make_request(bearer(token_b), now=NOW + 60)).subject == SA
    assert jwks.hits == 2
    # a kid that is still unknown after the refetch: refused, and no fetch storm
    for i in range(3):
        error = refuse(auth, make_request(bearer(id_token(kid="kid-z")), now=NOW + 61 + i))
        assert error.status == 401 and "kid-z" in error.detail
    assert jwks.hits == 2
    # once the cooldown has passed, an unknown kid may refetch again (once)
    refuse(auth, make_request(bearer(id_token(kid="kid-z")), now=NOW + 100))
    assert jwks.hits == 3


def test_oidc_concurrent_cold_start_fetches_once(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)

    async def many() -> list[Principal]:
        reqs = [make_request(bearer(id_token())) for _ in range(5)]
        return await asyncio.gather(*(auth.authenticate(r) for r in reqs))

    assert asyncio.run(many()) == [Principal("oidc", SA)] * 5
    assert jwks.hits == 1


def test_oidc_unreachable_jwks_is_503(jwks: Jwks) -> None:
    auth, _ = oidc_auth(jwks)
    jwks.status = 500
    error = refuse(auth, make_request(bearer(id_token())))
    assert error.status == 503 and jwks.url in error.detail
    jwks.status = 200
    assert accept(auth, make_request(bearer(id_token()))).scheme == "oidc"


def test_static_bearer_and_oidc_share_the_authorization_header(jwks: Jwks) -> None:
    auth = Authenticator([BearerTokenVerifier([TOKEN_1]), oidc_auth(jwks)[1]])
    assert accept(auth, make_request(bearer(TOKEN_1))) == Principal("bearer", "token#1")
    assert jwks.hits == 0  # a static token never reaches the JWKS
    assert accept(auth, make_request(bearer(id_token()))) == Principal("oidc", SA)
    # a JWT that fails OIDC reports the OIDC reason, not "unknown static token"
    error = refuse(auth, make_request(bearer(id_token(aud="https://elsewhere/"))))
    assert error.scheme == "oidc" and "audience" in error.detail
    assert refuse(auth, make_request(bearer(id_token(email="x@y.z")))).status == 403


# --- QStash ----------------------------------------------------------------------------------


def qstash_signature(key: str, url: str, raw: bytes, now: float = NOW, pad: bool = True,
                     **claims: Any) -> str:
    """An Upstash-Signature as QStash builds it.

    Format: https://upstash.com/docs/qstash/features/security ("The Upstash-Signature header":
    HS256 JWT with iss "Upstash", sub = destination URL, exp, nbf, iat, jti, and body = URL-safe
    base64 of SHA-256 of the body; their example keeps the "=" padding) and the receiver in
    upstash/qstash-py qstash/receiver.py, which strips the padding before comparing.
    """
    digest = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode()
    payload = {"iss": "Upstash", "sub": url, "exp": int(now) + 300, "nbf": int(now),
               "iat": int(now), "jti": "jwt_67kxXD6UBAk7DqU6hzuHMDdXFXfP",
               "body": digest if pad else digest.rstrip("=")}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm="HS256")


def test_qstash_accepted_with_current_or_next_key() -> None:
    auth = Authenticator([QStashVerifier(QSTASH_CURRENT, QSTASH_NEXT)])
    body = b'{"hello":"world"}'
    sig = qstash_signature(QSTASH_CURRENT, URL, body)
    assert accept(auth, make_request({"Upstash-Signature": sig}, body)) == Principal(
        "qstash", "current-key"
    )
    sig = qstash_signature(QSTASH_NEXT, URL, body, pad=False)
    assert accept(auth, make_request({"upstash-signature": sig}, body)).subject == "next-key"
    assert accept(auth, make_request({"upstash-signature": qstash_signature(
        QSTASH_CURRENT, URL, b""
    )}, b"")).scheme == "qstash"


def test_qstash_rejections_are_401() -> None:
    auth = Authenticator([QStashVerifier(QSTASH_CURRENT, QSTASH_NEXT)])
    body = b'{"hello":"world"}'
    cases = {
        "does not verify": (qstash_signature("sig_" + "x" * 28, URL, body), body),
        "body hash": (qstash_signature(QSTASH_CURRENT, URL, body), b'{"hello":"there"}'),
        "another URL": (qstash_signature(QSTASH_CURRENT, URL + "/other", body), body),
        "expired": (qstash_signature(QSTASH_CURRENT, URL, body, now=NOW - 400), body),
        "not valid yet": (qstash_signature(QSTASH_CURRENT, URL, body, now=NOW + 60), body),
        "issuer": (qstash_signature(QSTASH_CURRENT, URL, body, iss="Downstash"), body),
        "'body' claim": (qstash_signature(QSTASH_CURRENT, URL, body, body=None), body),
        "malformed": ("not-a-jwt", body),
    }
    for reason, (sig, sent) in cases.items():
        error = refuse(auth, make_request({"Upstash-Signature": sig}, sent))
        assert error.status == 401 and error.scheme == "qstash", reason
        assert reason in error.detail, (reason, error.detail)
        assert QSTASH_CURRENT not in str(error) and QSTASH_NEXT not in str(error)


def test_qstash_public_url_behind_a_proxy() -> None:
    public = "https://jobs.example.org/jobs/process?x=1"
    sig = qstash_signature(QSTASH_CURRENT, public, b"")
    internal_url = "http://10.0.0.5:8000/jobs/process?x=1"
    internal = make_request({"Upstash-Signature": sig}, b"", url=internal_url)
    assert refuse(Authenticator([QStashVerifier(QSTASH_CURRENT)]), internal).status == 401
    auth = Authenticator([QStashVerifier(QSTASH_CURRENT, public_url="https://jobs.example.org/")])
    assert accept(auth, internal).scheme == "qstash"


# --- from_env ----------------------------------------------------------------------------------


def test_from_env_builds_every_scheme(jwks: Jwks) -> None:
    auth = Authenticator.from_env({
        "ONCELY_TOKENS": f" {TOKEN_1} , {TOKEN_2} ",
        "ONCELY_HMAC_SECRETS": HMAC_1,
        "ONCELY_OIDC_AUDIENCE": URL,
        "ONCELY_OIDC_EMAILS": f"{SA}, other@proj.iam.gserviceaccount.com",
        "ONCELY_OIDC_JWKS_URL": jwks.url,
        "QSTASH_CURRENT_SIGNING_KEY": QSTASH_CURRENT,
        "QSTASH_NEXT_SIGNING_KEY": QSTASH_NEXT,
    })
    assert [v.scheme for v in auth.verifiers] == ["bearer", "oidc", "hmac", "qstash"]
    assert not auth.development_mode
    assert accept(auth, make_request(bearer(TOKEN_2))).subject == "token#2"
    assert accept(auth, make_request(bearer(id_token()))) == Principal("oidc", SA)
    assert accept(auth, make_request(hmac_headers(HMAC_1, b"", int(NOW)), b"")).scheme == "hmac"
    sig = qstash_signature(QSTASH_NEXT, URL, b"")
    assert accept(auth, make_request({"Upstash-Signature": sig}, b"")).subject == "next-key"
    assert jwks.hits == 1


def test_from_env_defaults() -> None:
    auth = Authenticator.from_env({"ONCELY_OIDC_AUDIENCE": URL, "ONCELY_OIDC_EMAILS": SA})
    (verifier,) = auth.verifiers
    assert isinstance(verifier, OidcVerifier)
    assert verifier.jwks_url == "https://www.googleapis.com/oauth2/v3/certs"
    assert verifier.issuers == ("https://accounts.google.com", "accounts.google.com")
    assert Authenticator.from_env({}).verifiers == ()
    assert Authenticator.from_env({"ONCELY_DEV": "1"}).development_mode
    assert not Authenticator.from_env({"ONCELY_DEV": "0"}).development_mode


@pytest.mark.parametrize(
    ("environ", "key", "shown"),
    [
        ({"ONCELY_DEV": "maybe"}, "ONCELY_DEV", "maybe"),
        ({"ONCELY_TOKENS": f"{TOKEN_1},short"}, "ONCELY_TOKENS", None),
        ({"ONCELY_HMAC_SECRETS": "tiny"}, "ONCELY_HMAC_SECRETS", None),
        ({"QSTASH_CURRENT_SIGNING_KEY": "sig_abc"}, "QSTASH_CURRENT_SIGNING_KEY", None),
        ({"QSTASH_NEXT_SIGNING_KEY": QSTASH_NEXT}, "QSTASH_CURRENT_SIGNING_KEY", None),
        ({"ONCELY_OIDC_AUDIENCE": URL}, "ONCELY_OIDC_EMAILS", None),
        ({"ONCELY_OIDC_EMAILS": SA}, "ONCELY_OIDC_AUDIENCE", None),
        ({"ONCELY_OIDC_AUDIENCE": URL, "ONCELY_OIDC_EMAILS": "nobody"}, "ONCELY_OIDC_EMAILS",
         "nobody"),
        ({"ONCELY_OIDC_AUDIENCE": URL, "ONCELY_OIDC_EMAILS": SA,
          "ONCELY_OIDC_JWKS_URL": "http://keys.example.com/certs"}, "ONCELY_OIDC_JWKS_URL",
         "http://keys.example.com/certs"),
        ({"QSTASH_CURRENT_SIGNING_KEY": QSTASH_CURRENT, "ONCELY_PUBLIC_URL": "jobs.example.org"},
         "ONCELY_PUBLIC_URL", "jobs.example.org"),
    ],
)
def test_from_env_bad_values_name_the_key_but_never_a_secret(
    environ: dict[str, str], key: str, shown: str | None
) -> None:
    with pytest.raises(AuthConfigError) as info:
        Authenticator.from_env(environ)
    assert isinstance(info.value, ValueError)
    assert info.value.key == key and str(info.value).startswith(key)
    if shown is not None:
        assert shown in str(info.value)
    for secret_key in ("ONCELY_TOKENS", "ONCELY_HMAC_SECRETS", "QSTASH_CURRENT_SIGNING_KEY",
                       "QSTASH_NEXT_SIGNING_KEY"):
        for secret in environ.get(secret_key, "").split(","):
            assert not secret or secret not in str(info.value)


def test_request_headers_are_case_insensitive() -> None:
    req = AuthRequest("POST", URL, {"AUTHORIZATION": f"Bearer {TOKEN_1}"}, b"", NOW)
    assert req.headers == {"authorization": f"Bearer {TOKEN_1}"}
    assert accept(Authenticator([BearerTokenVerifier([TOKEN_1])]), req).scheme == "bearer"


def test_static_tokens_are_accepted_as_the_basic_auth_password_as_sns_sends_them() -> None:
    import base64 as b64

    auth = Authenticator([BearerTokenVerifier(["a-very-long-token-0001"])])

    def basic(user_password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + b64.b64encode(user_password.encode()).decode()}

    assert accept(auth, make_request(headers=basic("sns:a-very-long-token-0001"))).scheme \
        == "bearer"
    assert refuse(auth, make_request(headers=basic("sns:wrong-token-000000000"))).status == 401
    assert refuse(auth, make_request(headers={"Authorization": "Basic !!!"})).status == 401
