"""Rules shared by every service: namespaces, page sizes and page tokens."""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final, TypeVar

from jarvis_memory_server.errors import DataLoss, InvalidArgument, NotFound
from jarvis_memory_server.store.backend import Database
from jarvis_memory_server.store.settings import read_setting

Row = TypeVar("Row")


class ServiceBase:
    """What every service shares: the database, its revision, and the writer's availability."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pages = PageTokens(db)

    @property
    def revision(self) -> int:
        """The store's last committed revision (for response headers)."""
        return self._db.revision

    @property
    def read_executor(self) -> Executor | None:
        """Where read handlers run when not on the event loop (see backend.Database)."""
        return self._db.read_executor

    async def run_write(self, body: Callable[[], Row]) -> tuple[Row, int | None]:
        """Run a body that writes and wait for its commit (see GroupCommitter.run).

        Returns its result and the revision of its last change (None: it changed nothing).
        """
        return await self._db.writes.run(body)


DEFAULT_NAMESPACE = "default"
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def resolve_namespace(value: str) -> str:
    """Return the namespace a request names ("" means "default").

    Raises InvalidArgument for a name outside the allowed pattern.
    """
    if not value:
        return DEFAULT_NAMESPACE
    if _NAMESPACE.fullmatch(value) is None:
        raise InvalidArgument(
            "namespace",
            f"{value[:64]!r} is not a valid namespace: use 1 to 128 letters, digits or '._:-', "
            "starting with a letter or digit",
        )
    return value


def page_size(value: int) -> int:
    """Apply the page-size rule: 0 means the default, too large is capped, negative is an error."""
    if value < 0:
        raise InvalidArgument("page_size", f"must not be negative (got {value})")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


# The deepest nesting of arrays and objects a JSON value may have: with the older Struct and
# Value fields (three messages a level) every message holding it stays within protobuf's
# decoding depth of 100.
MAX_JSON_DEPTH = 30
MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1
# The times the API holds, in microseconds since the epoch: years 0001 to 9999 (UTC), the range
# of google.protobuf.Timestamp and of RFC 3339.
MIN_TIME_US = -62_135_596_800 * 1_000_000
MAX_TIME_US = 253_402_300_800 * 1_000_000 - 1
# Compact, exact (ints stay ints, floats keep their repr), and refusing NaN and Infinity.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Only a text with a run of 19 digits can hold an integer beyond int64.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def json_text(value: Any, field: str, max_bytes: int) -> str:
    """Encode any JSON value for storage, compact and exact.

    Raises InvalidArgument naming the path (``attributes.scores[2]``) of a NaN or Infinity, of
    an integer outside int64, of a string with an unpaired surrogate, or of nesting deeper than
    MAX_JSON_DEPTH; and when the text is longer than ``max_bytes``.
    """
    try:
        text = _JSON_ENCODER.encode(value)
        size = len(text.encode())
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise _json_problem(value, field) or InvalidArgument(field, "is not a JSON value") from None
    if size > max_bytes:
        raise InvalidArgument(field, f"encodes to more than {max_bytes} bytes of JSON")
    # The cheap scans first: only a text that could break a rule is walked.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH or _LONG_DIGITS.search(text):
        problem = _json_problem(value, field)
        if problem is not None:
            raise problem
    return text


def _json_problem(value: Any, path: str, depth: int = 0) -> InvalidArgument | None:
    """The first rule a JSON value breaks, as the InvalidArgument naming its path, or None."""
    if isinstance(value, dict | list):
        if depth >= MAX_JSON_DEPTH:
            return InvalidArgument(
                path, f"nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects")
        if isinstance(value, list):
            items = ((f"{path}[{i}]", item) for i, item in enumerate(value))
        else:
            items = ((_key_path(path, key), item) for key, item in value.items())
        for item_path, item in items:
            problem = _json_problem(item, item_path, depth + 1)
            if problem is not None:
                return problem
        if isinstance(value, dict):
            for key in value:
                if not _is_unicode(key):
                    return InvalidArgument(path, "holds a key with an unpaired surrogate "
                                           "(not valid Unicode)")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return InvalidArgument(path, f"{value} is not a JSON number (NaN and Infinity are not "
                               "allowed)")
    if isinstance(value, int) and not isinstance(value, bool) and not (
            MIN_INT64 <= value <= MAX_INT64):
        return InvalidArgument(path, "is an integer outside the int64 range")
    if isinstance(value, str) and not _is_unicode(value):
        return InvalidArgument(path, "holds an unpaired surrogate (not valid Unicode)")
    return None


def _key_path(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def json_object(value: Any, field: str, max_bytes: int) -> str | None:
    """Encode an optional JSON value for storage (None stays None). Raises InvalidArgument."""
    return None if value is None else json_text(value, field, max_bytes)


class _Absent(enum.Enum):
    ABSENT = "absent"


# An optional JSON value of any type that was not given, where None is JSON null (a value).
ABSENT: Final = _Absent.ABSENT


def json_value(value: Any, field: str, max_bytes: int) -> str | None:
    """Encode an optional JSON value that may be null for storage (ABSENT becomes None).

    Raises InvalidArgument.
    """
    return None if value is ABSENT else json_text(value, field, max_bytes)


def filter_fingerprint(namespace: str, filters: dict[str, Any]) -> str:
    """A short digest of a list request's namespace and filters, bound into its page tokens."""
    text = json.dumps([namespace, filters], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    """Return ``value`` if it is one of ``allowed``. Raises InvalidArgument naming them."""
    if value not in allowed:
        raise InvalidArgument(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def identifier(value: str, pattern: re.Pattern[str], field: str, what: str) -> str:
    """Return ``value`` if it is present and matches ``pattern`` (described by ``what``).

    Raises InvalidArgument.
    """
    if not value:
        raise InvalidArgument(field, "is required")
    if pattern.fullmatch(value) is None:
        raise InvalidArgument(field, f"{value[:64]!r} is not a valid {field}: {what}")
    return value


def check_id(value: int, what: str) -> None:
    """Raise InvalidArgument unless ``value`` is a positive id (of a ``what``)."""
    if value <= 0:
        raise InvalidArgument("id", f"must be a positive {what} id (got {value})")


def not_found(what: str, namespace: str, item_id: int) -> NotFound:
    """The NotFound error of a ``what`` ("memory", "tool call", ...) with a numeric id."""
    return NotFound(
        f"{what} {item_id} does not exist in namespace {namespace!r}",
        reason=f"{what.upper().replace(' ', '_')}_NOT_FOUND", namespace=namespace,
        id=str(item_id),
    )


# -- page tokens (AIP-158): opaque and tamper-evident ---------------------------------------
#
# A token is base64url(payload + mac): payload is the JSON {"c": cursor, "f": fingerprint},
# mac the HMAC-SHA256 of the payload under the database's page-token key (32 random bytes
# that migration 11 stored in the settings table). The MAC is checked before anything in the
# token is parsed, so a token the daemon did not issue, or one edited by a single bit, is
# refused without its contents ever being read.

_TOKEN_MAC_BYTES = 32
_TOKEN_DOMAIN = b"jarvis-memory page token v1\0"
MAX_PAGE_TOKEN_CHARS = 4096  # the daemon's own tokens are < 1 KiB
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_NOT_ISSUED = "is not a token this server issued"


class PageTokens:
    """The page tokens of one database: made and checked with the key it keeps."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._key: bytes | None = None  # read on first use, once the database is migrated

    def _mac(self, payload: bytes) -> bytes:
        if self._key is None:
            key = read_setting(self._db, "page_token_key")
            if not isinstance(key, bytes) or len(key) < 16:
                raise DataLoss("the database has lost its page-token key (table settings)",
                               reason="PAGE_TOKEN_KEY_MISSING")
            self._key = key
        return hmac.new(self._key, _TOKEN_DOMAIN + payload, hashlib.sha256).digest()

    def encode(self, cursor: dict[str, Any], fingerprint: str) -> str:
        """Make an opaque, signed page token holding a cursor and the filters it is for."""
        payload = json.dumps({"c": cursor, "f": fingerprint}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def decode(self, token: str, fingerprint: str) -> dict[str, Any]:
        """Return the cursor inside a page token this database's daemon issued.

        Raises InvalidArgument (field page_token) when the token is not one this database's
        daemon issued, or was edited (checked by its MAC before anything in it is parsed), or
        when it was issued for other filters or another namespace.
        """
        if len(token) > MAX_PAGE_TOKEN_CHARS or _TOKEN_CHARS.fullmatch(token) is None:
            raise InvalidArgument("page_token", _NOT_ISSUED)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, binascii.Error):
            raise InvalidArgument("page_token", _NOT_ISSUED) from None
        payload, mac = raw[:-_TOKEN_MAC_BYTES], raw[-_TOKEN_MAC_BYTES:]
        if len(raw) <= _TOKEN_MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidArgument("page_token", _NOT_ISSUED)
        # Authentic: the daemon wrote this JSON. The checks below are defence in depth.
        try:
            content = json.loads(payload)
            cursor, issued_for = content["c"], content["f"]
        except (ValueError, TypeError, KeyError, RecursionError):
            raise InvalidArgument("page_token", _NOT_ISSUED) from None
        if not isinstance(cursor, dict) or not isinstance(issued_for, str):
            raise InvalidArgument("page_token", _NOT_ISSUED)
        if issued_for != fingerprint:
            raise InvalidArgument(
                "page_token", "was issued for a different namespace or different filters"
            )
        return cursor

    def finish_page(
        self, rows: list[Row], limit: int, fingerprint: str,
        cursor: Callable[[Row], dict[str, Any]],
    ) -> tuple[list[Row], str]:
        """Cut a page read with one row more than ``limit`` and make the next page's token.

        The extra row only says that another page follows; the token holds ``cursor`` of the
        page's last row.
        """
        if len(rows) <= limit:
            return rows, ""
        rows = rows[:limit]
        return rows, self.encode(cursor(rows[-1]), fingerprint)

    def decode_cursor(self, token: str, fingerprint: str) -> tuple[int, int]:
        """Return the (sort value, id) keyset cursor inside a page token, both within int64.

        Raises InvalidArgument when the token is not one this server issued, or was issued for
        other filters.
        """
        cursor = self.decode(token, fingerprint)
        return _int64(cursor.get("at")), _int64(cursor.get("id"))

    def decode_key_cursor(self, token: str, fingerprint: str) -> str:
        """Return the last key inside a page token of a key-ordered listing.

        Raises InvalidArgument.
        """
        last = self.decode(token, fingerprint).get("key")
        if not isinstance(last, str) or not _is_unicode(last):
            raise InvalidArgument("page_token", _NOT_ISSUED)
        return last

    def decode_offset_cursor(self, token: str, fingerprint: str) -> int:
        """Return the row offset inside a page token of an offset-paged listing.

        Raises InvalidArgument.
        """
        offset = _int64(self.decode(token, fingerprint).get("offset"))
        if offset < 0:
            raise InvalidArgument("page_token", _NOT_ISSUED)
        return offset

    def encode_offset_cursor(self, offset: int, fingerprint: str) -> str:
        """Make the page token of an offset-paged listing."""
        return self.encode({"offset": offset}, fingerprint)


def _int64(value: Any) -> int:
    """A cursor's integer, checked for type and range. Raises InvalidArgument."""
    if type(value) is not int or not MIN_INT64 <= value <= MAX_INT64:
        raise InvalidArgument("page_token", _NOT_ISSUED)
    return value
