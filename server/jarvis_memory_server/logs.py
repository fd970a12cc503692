"""The daemon's log: text or JSON lines, the access log's lines, grpc's chatter kept out.

``--log-format json`` writes one JSON object per line: time (RFC 3339, UTC), level, logger,
message, then the fields of the call a line is about (method, service, namespace, code,
duration_ms, peer, credential) and, for a failure with a traceback, exception. The access log
(``--access-log``, ``--slow-call-ms``) goes to the logger ``jarvis_memory.access``; its text
lines read ``AddMemory ns=alice OK 1.3ms peer=ipv4:127.0.0.1:5555 credential=-``. Neither
ever holds a request's or a response's content, nor a token: only the credential's subject.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "jarvis_memory.access"
# Libraries whose debug messages are their own business (about 60 lines of grpc's per start
# at DEBUG): kept at WARNING unless --grpc-debug or GRPC_VERBOSITY asks for them.
LIBRARY_LOGGERS = ("grpc", "asyncio")
# The extra attribute a record carries its call's fields in (see call_fields).
CALL_FIELDS = "call"

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
_MAX_TEXT = 128  # characters of a client-chosen name a line shows at most


def rfc3339(created: float, msecs: float) -> str:
    """A record's time as RFC 3339 in UTC, to the millisecond: 2025-01-31T12:00:00.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object: the base fields, its call's, its exception."""
        entry: dict[str, Any] = {
            "time": rfc3339(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, CALL_FIELDS, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text", grpc_debug: bool = False) -> None:
    """Set up the root logger: one handler on stderr, in the chosen format.

    Replaces whatever logging.basicConfig set before (the command line's default). The
    libraries' loggers stay at WARNING unless ``grpc_debug`` or GRPC_VERBOSITY is set.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # In JSON, warnings.warn() output becomes a line like the others, not raw text.
    logging.captureWarnings(log_format == "json")
    chatty = grpc_debug or bool(os.environ.get("GRPC_VERBOSITY"))
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if chatty else logging.WARNING)


def plain(value: str | None) -> str:
    """A client-chosen name as a text line shows it: as is when plain, else quoted and cut."""
    if value is None or value == "":
        return "-"
    if _PLAIN.fullmatch(value):
        return value
    return json.dumps(value[:_MAX_TEXT], ensure_ascii=True)


def duration_text(ms: float) -> str:
    """Milliseconds with a precision that suits their size: 0.27ms, 1.3ms, 250ms."""
    if ms >= 100:
        return f"{ms:.0f}ms"
    if ms >= 1:
        return f"{ms:.1f}ms"
    return f"{ms:.2f}ms"


def call_fields(
    method: str, service: str | None, namespace: str | None, code: str, seconds: float | None,
    peer: str | None, credential: str | None,
) -> dict[str, Any]:
    """The fields of a call a log line carries (JSON shows them all)."""
    fields: dict[str, Any] = {"method": method}
    if service:
        fields["service"] = service
    fields["namespace"] = None if namespace is None else namespace[:_MAX_TEXT]
    fields["code"] = code
    if seconds is not None:
        fields["duration_ms"] = round(seconds * 1000, 3)
    fields["peer"] = peer
    fields["credential"] = credential
    return fields


def log_call(
    logger: logging.Logger, level: int, fields: dict[str, Any], note: str = ""
) -> None:
    """Log a finished call as an access line (callers check logger.isEnabledFor first)."""
    duration = fields.get("duration_ms")
    logger.log(
        level, "%s ns=%s %s %s peer=%s credential=%s%s", fields["method"],
        plain(fields["namespace"]), fields["code"],
        "-" if duration is None else duration_text(duration), fields["peer"] or "-",
        plain(fields["credential"]), note, extra={CALL_FIELDS: fields},
    )
