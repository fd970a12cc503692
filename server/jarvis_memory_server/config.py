"""Daemon configuration: command-line flags, falling back to JARVIS_MEMORY_* variables."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_DB = "./data/jarvis.db"
DEFAULT_MAX_WAL_SIZE = 256 * 1024 * 1024
MIN_SIZE_LIMIT = 1024 * 1024  # the smallest --max-db-size and --max-wal-size accepted
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"\s*([0-9]+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Config:
    """Everything `jarvis-memory serve` needs to know."""

    addr: str = DEFAULT_ADDR
    db_path: str = DEFAULT_DB
    durability: str = "normal"
    busy_timeout_ms: int | None = None  # None: the backend's own default
    grace_period_s: float = 10.0
    checkpoint_interval_s: float = 1.0
    session_idle_timeout_s: float = 1800.0
    snapshot_keep: int = 1000
    snapshot_max_age_s: float = 0.0
    state_purge_interval_s: float = 10.0
    memory_purge_interval_s: float = 1.0
    watch_buffer: int = 10_000
    watch_coalesce_s: float = 0.02
    search_threads: int = 4
    db_pool_size: int = 8
    change_retention: int = 1_000_000
    compact_interval_s: float = 10.0
    jwt_secret: str = ""
    require_auth: bool = False
    insecure: bool = False
    auth_cache_ttl_s: float = 1.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    max_message_bytes: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    max_db_size: int = 0  # bytes; 0: no limit
    max_wal_size: int = DEFAULT_MAX_WAL_SIZE
    verify: str = "auto"  # PRAGMA quick_check at start-up: auto (small files), always, never
    metrics_addr: str = ""  # host:port of /metrics, /livez and /readyz; "": off
    log_format: str = "text"  # text or json (one object per line)
    access_log: bool = False  # every call at INFO on the jarvis_memory.access logger
    slow_call_ms: float = 0.0  # unary calls slower than this at WARNING; 0: off
    grpc_debug: bool = False  # let grpc's own debug logging through at --log-level DEBUG


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


def parse_size(text: str) -> int:
    """Parse a byte count: digits with an optional K, M, G or T suffix (powers of 1024)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size: use bytes, or a number with K, M or G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _size_limit(zero_allowed: bool) -> Any:
    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if value == 0 and zero_allowed:
            return 0
        if value < MIN_SIZE_LIMIT:
            least = "0 (no limit) or at least 1M" if zero_allowed else "at least 1M"
            raise argparse.ArgumentTypeError(f"must be {least} (got {text})")
        return value

    return parse


def split_addr(addr: str) -> tuple[str, int]:
    """Split host:port (IPv6 hosts in brackets); raise ValueError when the port is missing."""
    host, colon, port = addr.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535 or (
        ":" in host and not (host.startswith("[") and host.endswith("]"))
    ):
        raise ValueError(
            f"{addr!r} is not host:port (the port is required, 0 picks a free one; "
            "IPv6 hosts go in brackets: [::1]:50051)"
        )
    return host.strip("[]"), int(port)


def _addr(text: str) -> str:
    if text.startswith(("unix:", "unix-abstract:")):
        return text  # a Unix domain socket: gRPC's own syntax
    try:
        split_addr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text.strip()


_VERIFY = {"auto": "auto", "always": "always", "never": "never", "1": "always",
           "true": "always", "on": "always", "0": "never", "false": "never", "off": "never"}


def _verify(text: str) -> str:
    try:
        return _VERIFY[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"must be auto, always or never (got {text!r})"
        ) from None


def _metrics_addr(text: str) -> str:
    """host:port for the metrics HTTP server; empty: off."""
    if not text.strip():
        return ""
    try:
        split_addr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text.strip()


def _milliseconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a positive number (got {text})")
    return value


def _env(name: str, default: str) -> str:
    return os.environ.get(f"JARVIS_MEMORY_{name}", default)


def _env_flag(name: str) -> bool:
    return _env(name, "").strip().lower() not in ("", "0", "false", "off", "no")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `serve`; each defaults to its environment variable."""
    parser.add_argument(
        "--addr", type=_addr, default=_env("ADDR", DEFAULT_ADDR),
        help="host:port to listen on; the port is required (0 picks a free one) "
        "(env JARVIS_MEMORY_ADDR; default %(default)s)",
    )
    parser.add_argument(
        "--db", dest="db_path", default=_env("DB", DEFAULT_DB),
        help="SQLite database file, created with its folders if missing, or a PostgreSQL "
        "URL (postgresql://user:password@host:port/database) that any number of daemons "
        "share (env JARVIS_MEMORY_DB; default %(default)s)",
    )
    parser.add_argument(
        "--durability", choices=("normal", "full"), default=_env("DURABILITY", "normal"),
        help="normal: every acknowledged write survives a crash of the daemon; full: also a "
        "power loss, at the cost of an fsync per commit (env JARVIS_MEMORY_DURABILITY; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--busy-timeout-ms", type=int, default=os.environ.get("JARVIS_MEMORY_BUSY_TIMEOUT_MS"),
        help="how long a write waits for a lock held by another process before failing with "
        "UNAVAILABLE: on SQLite the event loop waits with it, so it is short (default 250); "
        "on PostgreSQL, for the write lock other daemons' batches hold, a wait that does not "
        "stop this daemon serving (default 10000) (env JARVIS_MEMORY_BUSY_TIMEOUT_MS)",
    )
    parser.add_argument(
        "--grace-period", dest="grace_period_s", type=_positive,
        default=_env("GRACE_PERIOD", "10"),
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT "
        "(env JARVIS_MEMORY_GRACE_PERIOD; default %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-interval", dest="checkpoint_interval_s", type=_positive,
        default=_env("CHECKPOINT_INTERVAL", "1"),
        help="seconds between background WAL checkpoints (env JARVIS_MEMORY_CHECKPOINT_INTERVAL; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--session-idle-timeout", dest="session_idle_timeout_s", type=_positive,
        default=_env("SESSION_IDLE_TIMEOUT", "1800"),
        help="seconds without a message or event after which the daemon ends a session with "
        "trigger TIMEOUT (env JARVIS_MEMORY_SESSION_IDLE_TIMEOUT; default %(default)s)",
    )
    parser.add_argument(
        "--snapshot-keep", type=int, default=_env("SNAPSHOT_KEEP", "1000"),
        help="keep the newest N snapshots of each kind, 0 for all "
        "(env JARVIS_MEMORY_SNAPSHOT_KEEP; default %(default)s)",
    )
    parser.add_argument(
        "--snapshot-max-age", dest="snapshot_max_age_s", type=float,
        default=_env("SNAPSHOT_MAX_AGE", "0"),
        help="drop snapshots older than this many seconds, 0 to keep them "
        "(env JARVIS_MEMORY_SNAPSHOT_MAX_AGE; default %(default)s)",
    )
    parser.add_argument(
        "--memory-purge-interval", dest="memory_purge_interval_s", type=_positive,
        default=_env("MEMORY_PURGE_INTERVAL", "1"),
        help="seconds between purges of expired memories (they read as absent at once; a "
        "purge is one delete in the change feed per memory) "
        "(env JARVIS_MEMORY_MEMORY_PURGE_INTERVAL; default %(default)s)",
    )
    parser.add_argument(
        "--state-purge-interval", dest="state_purge_interval_s", type=_positive,
        default=_env("STATE_PURGE_INTERVAL", "10"),
        help="seconds between purges of expired state entries (they read as absent at once) "
        "(env JARVIS_MEMORY_STATE_PURGE_INTERVAL; default %(default)s)",
    )
    parser.add_argument(
        "--watch-buffer", type=int, default=_env("WATCH_BUFFER", "10000"),
        help="changes (of any namespace) committed while a watcher has not caught up, beyond "
        "which it is ended with RESOURCE_EXHAUSTED (env JARVIS_MEMORY_WATCH_BUFFER; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--watch-coalesce-ms", dest="watch_coalesce_ms", type=float,
        default=_env("WATCH_COALESCE_MS", "20"),
        help="how long a watcher gathers changes into one message: more watchers cost writers "
        "less, at this much latency (env JARVIS_MEMORY_WATCH_COALESCE_MS; default %(default)s)",
    )
    parser.add_argument(
        "--search-threads", type=int, default=_env("SEARCH_THREADS", "4"),
        help="worker threads that run searches off the event loop, each with its own "
        "connection (env JARVIS_MEMORY_SEARCH_THREADS; default %(default)s)",
    )
    parser.add_argument(
        "--db-pool-size", type=int, default=_env("DB_POOL_SIZE", "8"),
        help="PostgreSQL only: threads that run reads, each with a connection of its own; a "
        "daemon opens at most this many plus --search-threads plus 3 connections "
        "(env JARVIS_MEMORY_DB_POOL_SIZE; default %(default)s)",
    )
    parser.add_argument(
        "--change-retention", type=int, default=_env("CHANGE_RETENTION", "1000000"),
        help="newest changes the change log keeps for watchers to replay "
        "(env JARVIS_MEMORY_CHANGE_RETENTION; default %(default)s)",
    )
    parser.add_argument(
        "--compact-interval", dest="compact_interval_s", type=_positive,
        default=_env("COMPACT_INTERVAL", "10"),
        help="seconds between change log compactions (env JARVIS_MEMORY_COMPACT_INTERVAL; "
        "default %(default)s)",
    )
    auth = parser.add_argument_group("auth and TLS")
    auth.add_argument(
        "--jwt-secret", default=_env("JWT_SECRET", ""),
        help="accept HS256 JWTs signed with this secret; turns auth on "
        "(env JARVIS_MEMORY_JWT_SECRET; prefer the variable: flags show in ps)",
    )
    auth.add_argument(
        "--require-auth", action="store_true",
        default=_env("REQUIRE_AUTH", "") not in ("", "0", "false"),
        help="require a credential even before any API token exists "
        "(env JARVIS_MEMORY_REQUIRE_AUTH)",
    )
    auth.add_argument(
        "--insecure", action="store_true",
        default=_env("INSECURE", "") not in ("", "0", "false"),
        help="allow listening on a non-loopback address with auth off (env JARVIS_MEMORY_INSECURE)",
    )
    auth.add_argument(
        "--auth-cache-ttl", dest="auth_cache_ttl_s", type=float,
        default=_env("AUTH_CACHE_TTL", "1"),
        help="seconds within which created or revoked API tokens take effect "
        "(env JARVIS_MEMORY_AUTH_CACHE_TTL; default %(default)s)",
    )
    auth.add_argument("--tls-cert", default=_env("TLS_CERT", ""),
                      help="PEM certificate chain: serve TLS (env JARVIS_MEMORY_TLS_CERT)")
    auth.add_argument("--tls-key", default=_env("TLS_KEY", ""),
                      help="PEM private key of --tls-cert (env JARVIS_MEMORY_TLS_KEY)")
    auth.add_argument(
        "--tls-client-ca", default=_env("TLS_CLIENT_CA", ""),
        help="PEM CA bundle: require client certificates it signed, mutual TLS "
        "(env JARVIS_MEMORY_TLS_CLIENT_CA)",
    )
    parser.add_argument(
        "--max-db-size", type=_size_limit(True), default=_env("MAX_DB_SIZE", "0"),
        help="refuse writes that add data (RESOURCE_EXHAUSTED) once the database file nears "
        "this size, in bytes or with a K, M or G suffix; deletes still work and free room for "
        "new writes; 0 for no limit (env JARVIS_MEMORY_MAX_DB_SIZE; default %(default)s)",
    )
    parser.add_argument(
        "--max-wal-size", type=_size_limit(False), default=_env("MAX_WAL_SIZE", "256M"),
        help="when the write-ahead log grows past this size, the daemon checkpoints and "
        "rewinds it, pausing writes briefly (env JARVIS_MEMORY_MAX_WAL_SIZE; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--verify", nargs="?", const="always", type=_verify, default=_env("VERIFY", "auto"),
        help="check every page of the database (PRAGMA quick_check) before serving and refuse "
        "a corrupt file; auto: only files up to 64 MiB, since the check reads the whole file "
        "(3.5 s for 1 GB of memories); --verify alone: always (env JARVIS_MEMORY_VERIFY; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default=_env("LOG_LEVEL", "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="(env JARVIS_MEMORY_LOG_LEVEL; default %(default)s)",
    )
    ops = parser.add_argument_group("metrics and logs")
    ops.add_argument(
        "--metrics-addr", type=_metrics_addr, default=_env("METRICS_ADDR", ""),
        help="serve Prometheus metrics at http://HOST:PORT/metrics, with /livez (200 while the "
        "process runs) and /readyz (200 while serving, 503 while starting and draining); port "
        "0 picks a free one (env JARVIS_MEMORY_METRICS_ADDR; default: off)",
    )
    ops.add_argument(
        "--log-format", choices=("text", "json"), default=_env("LOG_FORMAT", "text"),
        help="text, or json: one object per line with time (RFC 3339, UTC), level, logger, "
        "message, and the call's fields (env JARVIS_MEMORY_LOG_FORMAT; default %(default)s)",
    )
    ops.add_argument(
        "--access-log", action="store_true", default=_env_flag("ACCESS_LOG"),
        help="log every call at INFO (logger jarvis_memory.access): method, namespace, status "
        "code, duration, peer and the credential's subject, never a request, response or "
        "token (env JARVIS_MEMORY_ACCESS_LOG; default: off)",
    )
    ops.add_argument(
        "--slow-call-ms", type=_milliseconds, default=_env("SLOW_CALL_MS", "0"),
        help="log unary calls slower than this many milliseconds at WARNING, also without "
        "--access-log; 0 for off (env JARVIS_MEMORY_SLOW_CALL_MS; default %(default)s)",
    )
    ops.add_argument(
        "--grpc-debug", action="store_true", default=_env_flag("GRPC_DEBUG"),
        help="with --log-level DEBUG, also log grpc's and asyncio's own debug messages, "
        "otherwise left out unless GRPC_VERBOSITY is set (env JARVIS_MEMORY_GRPC_DEBUG)",
    )


def from_args(args: argparse.Namespace) -> Config:
    """Build a Config from parsed `serve` flags."""
    return Config(
        addr=args.addr,
        db_path=args.db_path,
        durability=args.durability,
        busy_timeout_ms=args.busy_timeout_ms,
        grace_period_s=args.grace_period_s,
        checkpoint_interval_s=args.checkpoint_interval_s,
        session_idle_timeout_s=args.session_idle_timeout_s,
        snapshot_keep=max(0, args.snapshot_keep),
        snapshot_max_age_s=max(0.0, args.snapshot_max_age_s),
        state_purge_interval_s=args.state_purge_interval_s,
        memory_purge_interval_s=args.memory_purge_interval_s,
        watch_buffer=max(1, args.watch_buffer),
        watch_coalesce_s=max(0.0, args.watch_coalesce_ms / 1000),
        search_threads=max(1, args.search_threads),
        db_pool_size=max(1, args.db_pool_size),
        change_retention=max(1, args.change_retention),
        compact_interval_s=args.compact_interval_s,
        jwt_secret=args.jwt_secret,
        require_auth=args.require_auth,
        insecure=args.insecure,
        auth_cache_ttl_s=args.auth_cache_ttl_s,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        log_level=args.log_level,
        max_db_size=args.max_db_size,
        max_wal_size=args.max_wal_size,
        verify=args.verify,
        metrics_addr=args.metrics_addr,
        log_format=args.log_format,
        access_log=args.access_log,
        slow_call_ms=args.slow_call_ms,
        grpc_debug=args.grpc_debug,
    )
