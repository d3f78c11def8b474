"""Authentication for trigger endpoints: one verifier per scheme, one place (Authenticator) that
picks.  Secrets are compared in constant time and never logged or put in error messages.
Verifiers never read a clock: the caller passes ``AuthRequest.now``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt

log = logging.getLogger(__name__)

GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_HOW_TO_CONFIGURE = (
    "set ONCELY_TOKENS, ONCELY_HMAC_SECRETS, ONCELY_OIDC_AUDIENCE with ONCELY_OIDC_EMAILS, or "
    "QSTASH_CURRENT_SIGNING_KEY (or ONCELY_DEV=1 on a development machine only)"
)


@dataclass(frozen=True)
class Principal:
    """Who called: ``("bearer", "token#1")``, ``("oidc", "sa@p.iam.gserviceaccount.com")``."""

    scheme: str
    subject: str  # never a secret


class AuthError(Exception):
    """401: credentials missing or invalid; 403: valid but not allowed; 503: keys unavailable."""

    def __init__(self, status: int, detail: str, scheme: str, challenge: str = "") -> None:
        super().__init__(detail)
        self.status, self.detail, self.scheme, self.challenge = status, detail, scheme, challenge

    @property
    def headers(self) -> dict[str, str]:
        """Response headers to send, i.e. the ``WWW-Authenticate`` hint on a 401."""
        return {"WWW-Authenticate": self.challenge} if self.status == 401 and self.challenge else {}


class AuthConfigError(ValueError):
    """A bad auth setting; names the key, and the value only when it is not a secret."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class AuthRequest:
    method: str
    url: str  # the full URL as requested, e.g. "https://app.example.com/jobs/process"
    headers: Mapping[str, str]  # normalised to lower-case keys
    body: bytes
    now: float  # unix time

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", {k.lower(): v for k, v in self.headers.items()})


class Verifier(Protocol):
    scheme: str
    challenge: str  # WWW-Authenticate challenge for this scheme

    def applies(self, headers: Mapping[str, str]) -> bool: ...
    async def verify(self, request: AuthRequest) -> Principal: ...


def _deny(v: Verifier, detail: str, status: int = 401) -> AuthError:
    return AuthError(status, detail, v.scheme, v.challenge)


def _bearer(headers: Mapping[str, str]) -> str | None:
    kind, _, value = headers.get("authorization", "").strip().partition(" ")
    return (value.strip() or None) if kind.lower() == "bearer" else None


def _basic_password(headers: Mapping[str, str]) -> str | None:
    """The password of ``Authorization: Basic base64(user:password)``, or None."""
    kind, _, value = headers.get("authorization", "").strip().partition(" ")
    if kind.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def _first_match(given: bytes, candidates: Sequence[bytes]) -> int:
    """1-based index of the candidate equal to ``given``, 0 if none; checks all in constant time."""
    found = 0
    for i, candidate in enumerate(candidates, 1):
        if hmac.compare_digest(given, candidate) and not found:
            found = i
    return found


def _options(*require: str) -> Any:  # a jwt.types.Options
    # Time claims are checked against AuthRequest.now by _check_times, not PyJWT's own clock.
    return {"require": list(require), "verify_exp": False, "verify_nbf": False,
            "verify_iat": False}


def _explain(exc: jwt.PyJWTError, issuers: str) -> str:
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"The token's issuer (iss) is not {issuers}."
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"The token lacks the required {exc.claim!r} claim."
    if isinstance(exc, jwt.InvalidSignatureError):
        return "The token's signature does not verify."
    return "The token is malformed or invalid."


def _check_times(v: Verifier, claims: Mapping[str, Any], now: float, leeway: float) -> None:
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if not isinstance(exp, int | float) or now > exp + leeway:
        raise _deny(v, "The token has expired; the sender must issue a fresh one.")
    if isinstance(nbf, int | float) and now < nbf - leeway:
        raise _deny(v, "The token is not valid yet (nbf); check the clocks of sender and server.")
    if isinstance(iat, int | float) and now < iat - leeway:
        raise _deny(v, "The token was issued in the future (iat); check the clocks.")


class BearerTokenVerifier:
    """``Authorization: Bearer <token>`` against several static tokens (for rotation).

    The same tokens are accepted as the password of HTTP Basic auth (any user name), for
    senders that can only put credentials in the URL, such as Amazon SNS
    (``https://oncely:<token>@app.example/jobs/events``)."""

    scheme = "bearer"
    challenge = 'Bearer realm="oncely"'

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens or not all(tokens):
            raise ValueError("BearerTokenVerifier needs at least one non-empty token")
        # Comparing digests keeps even the token length out of the timing.
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    def applies(self, headers: Mapping[str, str]) -> bool:
        return _bearer(headers) is not None or _basic_password(headers) is not None

    async def verify(self, request: AuthRequest) -> Principal:
        token = _bearer(request.headers) or _basic_password(request.headers) or ""
        presented = hashlib.sha256(token.encode()).digest()
        index = _first_match(presented, self._digests)
        if not index:
            raise _deny(self, "The token (bearer, or Basic auth password) is not one of the "
                        "configured ONCELY_TOKENS.")
        return Principal(self.scheme, f"token#{index}")


class HmacVerifier:
    """``X-Oncely-Signature: sha256=<hex>`` = HMAC-SHA256(secret, f"{ts}.".encode() + body),
    with ``X-Oncely-Timestamp: <unix seconds>``.

    Timestamps more than ``window`` seconds from ``now`` are refused, and so is a (timestamp,
    signature) pair already accepted within the window.  The seen-set is per verifier, in memory,
    bounded by ``max_seen`` (when full, the entry closest to expiry is dropped).  It does not
    span replicas: across replicas, replay protection additionally comes from trigger
    identities, which make a re-delivered trigger a no-op.
    """

    scheme = "hmac"
    challenge = 'Oncely-HMAC realm="oncely", headers="X-Oncely-Timestamp X-Oncely-Signature"'

    def __init__(
        self, secrets: Sequence[str | bytes], *, window: int = 300, max_seen: int = 100_000
    ) -> None:
        if not secrets or not all(secrets):
            raise ValueError("HmacVerifier needs at least one non-empty secret")
        if window <= 0 or max_seen <= 0:
            raise ValueError("HmacVerifier window and max_seen must be positive")
        self._secrets = [s.encode() if isinstance(s, str) else bytes(s) for s in secrets]
        self.window, self.max_seen = window, max_seen
        self._expiry: list[tuple[int, bytes]] = []  # heap ordered by timestamp
        self._seen: set[tuple[int, bytes]] = set()
        self._lock = threading.Lock()

    def applies(self, headers: Mapping[str, str]) -> bool:
        return "x-oncely-signature" in headers

    async def verify(self, request: AuthRequest) -> Principal:
        raw_ts = request.headers.get("x-oncely-timestamp", "").strip()
        sig = _SIGNATURE.fullmatch(request.headers.get("x-oncely-signature", "").strip())
        if not _TIMESTAMP.fullmatch(raw_ts) or sig is None:
            raise _deny(self, "Send X-Oncely-Timestamp (unix seconds) and "
                        "X-Oncely-Signature: sha256=<64 hex digits>.")
        ts, given = int(raw_ts), bytes.fromhex(sig.group(1))
        if abs(request.now - ts) > self.window:
            raise _deny(self, f"X-Oncely-Timestamp is {abs(int(request.now) - ts)} s away from "
                        f"server time (limit ±{self.window} s); sign with the current time.")
        signed = f"{ts}.".encode() + request.body
        index = _first_match(
            given, [hmac.new(s, signed, hashlib.sha256).digest() for s in self._secrets]
        )
        if not index:
            raise _deny(self, "The signature does not match timestamp and body under any of "
                        "ONCELY_HMAC_SECRETS; sign f'{timestamp}.' + raw body with HMAC-SHA256.")
        with self._lock:
            while self._expiry and self._expiry[0][0] < request.now - self.window:
                self._seen.discard(heapq.heappop(self._expiry))
            if (ts, given) in self._seen:
                raise _deny(self, "This timestamp and signature were already used (replay); "
                            "sign every request afresh.")
            if len(self._seen) >= self.max_seen:
                self._seen.discard(heapq.heappop(self._expiry))
            heapq.heappush(self._expiry, (ts, given))
            self._seen.add((ts, given))
        return Principal(self.scheme, f"secret#{index}")


class OidcVerifier:
    """Google-issued RS256 ID tokens (Cloud Scheduler's OIDC ``Authorization: Bearer <JWT>``).

    Checks signature (JWKS fetched with httpx, cached ``jwks_ttl`` s, refetched once on an unknown
    ``kid`` at most every ``refetch_cooldown`` s), ``iss``, ``aud``, ``exp``/``nbf``/``iat`` with
    ``leeway``, then that ``email`` is verified and on the allow-list (else 403).  The allow-list
    is mandatory: any Google account can mint a token for any audience.
    """

    scheme = "oidc"
    challenge = 'Bearer realm="oncely"'

    def __init__(
        self, audience: str, emails: Sequence[str], *, issuers: Sequence[str] = GOOGLE_ISSUERS,
        jwks_url: str = GOOGLE_JWKS_URL, jwks_ttl: float = 3600.0,
        refetch_cooldown: float = 30.0, leeway: float = 30.0, timeout: float = 5.0,
    ) -> None:
        if not audience or not emails or not issuers:
            raise ValueError("OidcVerifier needs an audience, issuers and allowed emails")
        self.audience, self.issuers, self.jwks_url = audience, tuple(issuers), jwks_url
        self.emails = frozenset(e.strip().lower() for e in emails)
        self.jwks_ttl, self.refetch_cooldown = jwks_ttl, refetch_cooldown
        self.leeway, self.timeout = leeway, timeout
        self._jwks: jwt.PyJWKSet | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    def applies(self, headers: Mapping[str, str]) -> bool:
        token = _bearer(headers)
        return token is not None and _JWT_SHAPE.fullmatch(token) is not None

    async def _refresh(self, now: float) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.jwks_url)
                response.raise_for_status()
                data = response.json()
            if not isinstance(data, dict):
                raise ValueError("JWKS document is not a JSON object")
            self._jwks, self._fetched_at = jwt.PyJWKSet.from_dict(data), now
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            log.warning("could not fetch JWKS from %s (%s)", self.jwks_url, type(exc).__name__)
            if self._jwks is None:  # otherwise keep serving the stale key set
                raise AuthError(503, f"Could not fetch signing keys from {self.jwks_url}; "
                                "try again shortly.", self.scheme) from None

    async def _key(self, kid: str, now: float) -> Any:
        async with self._lock:
            age = now - self._fetched_at
            unknown = self._jwks is None or kid not in {k.key_id for k in self._jwks}
            if age >= self.jwks_ttl or (unknown and age >= self.refetch_cooldown):
                await self._refresh(now)
            assert self._jwks is not None
            for key in self._jwks:
                if key.key_id == kid:
                    return key.key
        raise _deny(self, f"The token's signing key id {kid[:64]!r} is not in {self.jwks_url}.")

    async def verify(self, request: AuthRequest) -> Principal:
        token = _bearer(request.headers) or ""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _deny(self, "The bearer token is not a well-formed JWT.") from None
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str):
            raise _deny(self, "OIDC tokens must be RS256-signed and name their key ('kid').")
        key = await self._key(kid, request.now)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["RS256"], audience=self.audience, issuer=self.issuers,
                options=_options("iss", "aud", "exp"),
            )
        except jwt.InvalidAudienceError:
            raise _deny(self, "The token's audience (aud) is wrong; set the scheduler job's OIDC "
                        f"audience to {self.audience!r} (ONCELY_OIDC_AUDIENCE).") from None
        except jwt.PyJWTError as exc:
            raise _deny(self, _explain(exc, f"one of {list(self.issuers)}")) from None
        _check_times(self, claims, request.now, self.leeway)
        email = claims.get("email")
        if not isinstance(email, str) or claims.get("email_verified") not in (True, "true"):
            raise _deny(self, "The token has no verified 'email' claim; use a service account "
                        "listed in ONCELY_OIDC_EMAILS.", 403)
        if email.lower() not in self.emails:
            raise _deny(self, f"{email[:254]} is not allowed; add it to ONCELY_OIDC_EMAILS.", 403)
        return Principal(self.scheme, email)


class QStashVerifier:
    """QStash's ``Upstash-Signature``: an HS256 JWT under the current or the next signing key.

    Claims as documented at https://upstash.com/docs/qstash/features/security and checked by
    upstash/qstash-py ``qstash/receiver.py``: ``iss == "Upstash"``, ``sub`` == the request URL
    (``public_url`` replaces scheme and host when behind a proxy), ``exp``/``nbf``, and
    ``body`` == URL-safe base64 of SHA-256(body), compared with ``=`` padding stripped.
    """

    scheme = "qstash"
    challenge = 'Upstash-Signature realm="oncely"'

    def __init__(self, current_key: str, next_key: str | None = None, *,
                 public_url: str | None = None, leeway: float = 5.0) -> None:
        if not current_key:
            raise ValueError("QStashVerifier needs the current signing key")
        self._keys = [("current-key", current_key)] + ([("next-key", next_key)] if next_key else [])
        self.public_url, self.leeway = public_url, leeway

    def applies(self, headers: Mapping[str, str]) -> bool:
        return "upstash-signature" in headers

    def expected_url(self, url: str) -> str:
        if not self.public_url:
            return url
        parts = urlsplit(url)
        return self.public_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")

    async def verify(self, request: AuthRequest) -> Principal:
        token, used = request.headers.get("upstash-signature", "").strip(), ""
        claims: dict[str, Any] | None = None
        for name, key in self._keys:
            try:
                claims = jwt.decode(token, key, algorithms=["HS256"], issuer="Upstash",
                                    options=_options("iss", "sub", "exp", "nbf", "body"))
                used = name
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _deny(self, _explain(exc, "'Upstash'")) from None
        if claims is None:
            raise _deny(self, "The Upstash-Signature does not verify with "
                        "QSTASH_CURRENT_SIGNING_KEY or QSTASH_NEXT_SIGNING_KEY.")
        _check_times(self, claims, request.now, self.leeway)
        expected = self.expected_url(request.url)
        if not isinstance(claims["sub"], str) or claims["sub"] != expected:
            raise _deny(self, f"The signature was made for another URL than {expected!r}; "
                        "set ONCELY_PUBLIC_URL if oncely runs behind a proxy.")
        want = base64.urlsafe_b64encode(hashlib.sha256(request.body).digest()).rstrip(b"=")
        got = claims["body"]
        if not isinstance(got, str) or not hmac.compare_digest(want, got.rstrip("=").encode()):
            raise _deny(self, "The request body does not match the signed body hash.")
        return Principal(self.scheme, used)


class Authenticator:
    """The one place that picks: tries, in order, every verifier whose credentials are present.

    The first success wins.  If all fail, a 403 (or 503) beats a 401, else the last 401 is
    raised, so with ``[bearer, oidc]`` a JWT that is not a static token reports the OIDC reason.
    """

    def __init__(self, verifiers: Sequence[Verifier], *, development: bool = False) -> None:
        self.verifiers, self.development_mode = tuple(verifiers), development
        if development:
            log.warning("oncely auth is in DEVELOPMENT MODE: every request is accepted without "
                        "credentials. Never use this in production.")

    @classmethod
    def development(cls) -> Authenticator:
        """Accept every request, as Principal("development", "anonymous"), and say so."""
        return cls([], development=True)

    async def authenticate(self, request: AuthRequest) -> Principal:
        if self.development_mode:
            return Principal("development", "anonymous")
        if not self.verifiers:
            raise AuthError(401, f"No authentication is configured, so every request is refused; "
                            f"{_HOW_TO_CONFIGURE}.", "none", 'Bearer realm="oncely"')
        errors: list[AuthError] = []
        for verifier in self.verifiers:
            if verifier.applies(request.headers):
                try:
                    return await verifier.verify(request)
                except AuthError as exc:
                    errors.append(exc)
        if not errors:
            schemes = ", ".join(dict.fromkeys(v.scheme for v in self.verifiers))
            challenge = ", ".join(dict.fromkeys(v.challenge for v in self.verifiers))
            raise AuthError(401, f"Missing credentials; this endpoint accepts: {schemes}.",
                            "none", challenge)
        error = next((e for e in errors if e.status != 401), errors[-1])
        log.info("refused %s %s: %s %d: %s", request.method, urlsplit(request.url).path,
                 error.scheme, error.status, error.detail)
        raise error

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Authenticator:
        """Build from ONCELY_* / QSTASH_* settings; raises AuthConfigError on bad values."""
        dev = environ.get("ONCELY_DEV", "").strip().lower()
        if dev not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
            raise AuthConfigError("ONCELY_DEV", f"{dev!r} is not a boolean; use 1 or 0")
        verifiers: list[Verifier] = []
        if tokens := _secrets(environ, "ONCELY_TOKENS"):
            verifiers.append(BearerTokenVerifier(tokens))
        audience, emails = environ.get("ONCELY_OIDC_AUDIENCE", "").strip(), _items(
            environ, "ONCELY_OIDC_EMAILS")
        if bool(audience) != bool(emails):
            missing = "ONCELY_OIDC_EMAILS" if audience else "ONCELY_OIDC_AUDIENCE"
            raise AuthConfigError(missing, "required when the other OIDC setting is set")
        if audience:
            if bad := [e for e in emails if "@" not in e]:
                raise AuthConfigError("ONCELY_OIDC_EMAILS", f"{bad[0]!r} is not an email address")
            url = _url(environ, "ONCELY_OIDC_JWKS_URL") or GOOGLE_JWKS_URL
            verifiers.append(OidcVerifier(audience, emails, jwks_url=url))
        if secrets := _secrets(environ, "ONCELY_HMAC_SECRETS"):
            verifiers.append(HmacVerifier(secrets))
        current = _secrets(environ, "QSTASH_CURRENT_SIGNING_KEY", split=False)
        following = _secrets(environ, "QSTASH_NEXT_SIGNING_KEY", split=False)
        if following and not current:
            raise AuthConfigError("QSTASH_CURRENT_SIGNING_KEY", "required when the next key is set")
        if current:
            public_url = _url(environ, "ONCELY_PUBLIC_URL")
            verifiers.append(QStashVerifier(current[0], following[0] if following else None,
                                            public_url=public_url))
        if dev in ("1", "true", "yes", "on"):
            return cls(verifiers, development=True)
        return cls(verifiers)


def _items(environ: Mapping[str, str], key: str, split: bool = True) -> list[str]:
    raw = environ.get(key, "")
    return [p.strip() for p in (raw.split(",") if split else [raw]) if p.strip()]


def _secrets(environ: Mapping[str, str], key: str, split: bool = True) -> list[str]:
    items = _items(environ, key, split)
    for i, secret in enumerate(items, 1):
        if len(secret) < 16:
            raise AuthConfigError(key, f"entry #{i} is only {len(secret)} characters; use at least "
                                  "16 random characters (value not shown)")
    return items


def _url(environ: Mapping[str, str], key: str) -> str | None:
    raw = environ.get(key, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and local)):
        raise AuthConfigError(key, f"{raw!r} is not an https:// URL (http:// only for localhost)")
    return raw
