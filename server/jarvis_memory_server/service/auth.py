"""Authentication and authorization: API tokens issued by the daemon, and HS256 JWTs.

A credential arrives as ``authorization: Bearer <token>`` metadata and becomes a Principal:
a role (reader < writer < admin) and the namespaces it may use ("*" for all). Each RPC
declares the least role it needs in its proto options (jarvis.memory.v1.access).

API tokens look like ``jmt_<id>_<secret>``; the database keeps the id, the role, the
namespaces and a SHA-256 of the secret, compared in constant time. The token table is read
into memory and re-read at most every ``cache_ttl_s`` seconds, so a token created or revoked
with the command line takes effect within that time, without a query per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass

from jarvis_memory_server.errors import InvalidArgument, PermissionDenied, Unauthenticated
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.store.backend import Database, now_us
from jarvis_memory_server.store.tokens import ROLES, TokenRow, TokenStore

log = logging.getLogger("jarvis_memory.auth")

ROLE_RANK = {"reader": 1, "writer": 2, "admin": 3}
ACCESS_RANK = {"read": 1, "write": 2, "admin": 3}
TOKEN_PREFIX = "jmt_"
_JWT_CACHE_SIZE = 4096

# The subject of the credential of the call being served (None with auth off): set by the
# transport for each call, kept by writes that record who changed what (memory history).
CALLER: ContextVar[str | None] = ContextVar("jarvis_memory_caller", default=None)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a subject, a role, and the namespaces it may use."""

    subject: str
    role: str
    namespaces: frozenset[str]

    def may_use(self, namespace: str) -> bool:
        """Whether the credential holds this namespace."""
        return "*" in self.namespaces or namespace in self.namespaces


class Authenticator:
    """Checks credentials and permissions; on when a JWT secret or an API token exists."""

    def __init__(
        self, db: Database, *, jwt_secret: str = "", require_auth: bool = False,
        cache_ttl_s: float = 1.0,
    ) -> None:
        self._tokens = TokenStore(db)
        self._jwt_key = jwt_secret.encode()
        self._require = require_auth or bool(jwt_secret)
        self._ttl = cache_ttl_s
        self._loaded_at = -float("inf")
        self._by_id: dict[str, TokenRow] = {}
        self._jwts: dict[str, tuple[Principal, float]] = {}
        self._enabled = self._require
        self._had_tokens: bool | None = None  # None until the first read of the tokens

    @property
    def enabled(self) -> bool:
        """Whether requests need a credential (re-checked as tokens come and go)."""
        if not self._require:
            self._refresh()
        return self._enabled

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at < self._ttl:
            return
        self._loaded_at = now
        rows = self._tokens.all()
        self._by_id = {row.token_id: row for row in rows}
        self._enabled = self._require or bool(rows)
        had, self._had_tokens = self._had_tokens, bool(rows)
        if had is None or had == self._had_tokens or self._require:
            return  # the first read, no switch, or auth required whatever the tokens
        if rows:
            log.warning(
                "auth is now ON: the database holds API tokens where it held none "
                "(jarvis-memory token create); every call but health and reflection now needs "
                "a credential")
        else:
            log.warning(
                "auth is now OFF: the database holds no API token any more, and there is no "
                "JWT secret or --require-auth; every call is accepted without a credential")

    def authenticate(self, authorization: str | None) -> Principal:
        """Return the principal of an ``authorization`` header value.

        Raises Unauthenticated for a missing, malformed, unknown, revoked, expired or badly
        signed credential. The message never contains the credential.
        """
        if not authorization:
            raise Unauthenticated(
                "missing credential: send metadata 'authorization: Bearer <token>'",
                reason="CREDENTIAL_MISSING",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or not token.isascii():
            raise Unauthenticated(
                "malformed authorization metadata: expected 'Bearer <token>'",
                reason="CREDENTIAL_MALFORMED",
            )
        if token.startswith(TOKEN_PREFIX):
            return self._api_token(token)
        if token.count(".") == 2 and self._jwt_key:
            return self._jwt(token)
        raise Unauthenticated("unrecognised credential", reason="CREDENTIAL_MALFORMED")

    def _api_token(self, token: str) -> Principal:
        token_id, _, secret = token[len(TOKEN_PREFIX):].partition("_")
        self._refresh()
        row = self._by_id.get(token_id)
        digest = hashlib.sha256(secret.encode()).digest()
        # Compare even for an unknown id, so that timing does not tell ids apart.
        expected = row.secret_sha256 if row is not None else b"\0" * 32
        if not hmac.compare_digest(digest, expected) or row is None:
            raise Unauthenticated("invalid API token", reason="TOKEN_INVALID")
        if row.revoked_at is not None:
            raise Unauthenticated("the API token was revoked", reason="TOKEN_REVOKED")
        return Principal(f"token:{row.token_id}", row.role, frozenset(json.loads(row.namespaces)))

    def _jwt(self, token: str) -> Principal:
        cached = self._jwts.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        principal, expires = verify_jwt(token, self._jwt_key)
        if len(self._jwts) >= _JWT_CACHE_SIZE:
            self._jwts.clear()
        self._jwts[token] = (principal, expires)
        return principal

    @staticmethod
    def authorize(principal: Principal, namespace: str, access: str) -> None:
        """Raise PermissionDenied unless the principal may make this call."""
        if ROLE_RANK[principal.role] < ACCESS_RANK[access]:
            raise PermissionDenied(
                f"role {principal.role!r} may not call an RPC that needs {access} access",
                reason="ROLE_TOO_LOW", role=principal.role, access=access,
            )
        if not principal.may_use(namespace):
            raise PermissionDenied(
                f"the credential does not hold namespace {namespace!r}",
                reason="NAMESPACE_DENIED", namespace=namespace,
            )

    # -- token management (the command line) -------------------------------------------------

    def create_token(self, role: str, namespaces: Iterable[str], label: str = "") -> str:
        """Issue an API token and return it; it cannot be shown again.

        Raises InvalidArgument for an unknown role or a malformed namespace.
        """
        if role not in ROLES:
            raise InvalidArgument("role", f"{role!r} is not one of {', '.join(ROLES)}")
        names = sorted({n if n == "*" else resolve_namespace(n) for n in namespaces})
        if not names:
            raise InvalidArgument("namespace", "give at least one namespace, or '*' for all")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        self._tokens.insert(TokenRow(
            token_id, hashlib.sha256(secret.encode()).digest(), role, json.dumps(names), label,
            now_us(), None,
        ))
        return f"{TOKEN_PREFIX}{token_id}_{secret}"

    def list_tokens(self) -> list[TokenRow]:
        """Every token issued, revoked ones included."""
        return self._tokens.all()

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token. Raises NotFound-like InvalidArgument when no active token has the id."""
        if not self._tokens.revoke(token_id.removeprefix(TOKEN_PREFIX), now_us()):
            raise InvalidArgument("token_id", f"no active token has the id {token_id!r}")


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


MAX_JWT_CHARS = 8192
_MAX_JWT_BRACKETS = 64  # claims are flat (a list of names at most): far more is refused
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def verify_jwt(token: str, key: bytes) -> tuple[Principal, float]:
    """Verify an HS256 JWT; return its principal and expiry (Unix seconds).

    The signature (an HMAC-SHA256 over the raw ``header.payload`` text) is checked first:
    nothing in an unsigned or badly signed token is ever parsed. Raises Unauthenticated when
    the token is malformed or too long, badly signed, not HS256 or expired, or when its claims
    (sub, role, namespaces, exp) are missing or wrong.
    """
    parts = token.split(".")
    if len(token) > MAX_JWT_CHARS or len(parts) != 3 or not all(
            _BASE64URL.fullmatch(part) for part in parts):
        raise Unauthenticated("malformed JWT", reason="JWT_MALFORMED")
    header_b64, payload_b64, signature_b64 = parts
    try:
        signature = _b64decode(signature_b64)
    except (ValueError, binascii.Error) as exc:
        raise Unauthenticated("malformed JWT", reason="JWT_MALFORMED") from exc
    expected = hmac.new(key, f"{header_b64}.{payload_b64}".encode("ascii"),
                        hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise Unauthenticated("the JWT signature is not valid", reason="JWT_BAD_SIGNATURE")
    header = _jwt_json(header_b64)
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise Unauthenticated("the JWT must be signed with HS256", reason="JWT_MALFORMED")
    payload = _jwt_json(payload_b64)
    if not isinstance(payload, dict):
        raise Unauthenticated("malformed JWT claims", reason="JWT_MALFORMED")
    exp, role, namespaces = payload.get("exp"), payload.get("role"), payload.get("namespaces")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise Unauthenticated("the JWT has no exp claim", reason="JWT_MALFORMED")
    if exp <= time.time():
        raise Unauthenticated("the JWT has expired", reason="JWT_EXPIRED")
    if not isinstance(role, str) or role not in ROLE_RANK:
        raise Unauthenticated("the JWT's role claim is not reader, writer or admin",
                              reason="JWT_MALFORMED")
    if not (isinstance(namespaces, list) and all(isinstance(n, str) for n in namespaces)):
        raise Unauthenticated("the JWT's namespaces claim must be a list of names",
                              reason="JWT_MALFORMED")
    subject = payload.get("sub")
    if not isinstance(subject, str | int | None):
        raise Unauthenticated("the JWT's sub claim must be a string", reason="JWT_MALFORMED")
    return Principal(str(subject or "jwt"), role, frozenset(namespaces)), float(exp)


def _jwt_json(part: str) -> object:
    """A signed JWT part -> its JSON value. Raises Unauthenticated when it is not sane JSON."""
    try:
        text = _b64decode(part)
        if text.count(b"[") + text.count(b"{") > _MAX_JWT_BRACKETS:
            raise ValueError("too many arrays and objects")  # refused before parsing
        return json.loads(text)
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise Unauthenticated("malformed JWT", reason="JWT_MALFORMED") from exc


def sign_jwt(claims: dict[str, object], key: bytes) -> str:
    """Make an HS256 JWT (for tests and tools)."""
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64encode(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64encode(signature)}"
