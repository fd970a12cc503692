"""Daemon configuration: command-line flags, falling back to JARVIS_MEMORY_* variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_DB = "./data/jarvis.db"


@dataclass(frozen=True)
class Config:
    """Everything `jarvis-memory serve` needs to know."""

    addr: str = DEFAULT_ADDR
    db_path: str = DEFAULT_DB
    durability: str = "normal"
    busy_timeout_ms: int = 250
    grace_period_s: float = 10.0
    checkpoint_interval_s: float = 1.0
    session_idle_timeout_s: float = 1800.0
    snapshot_keep: int = 1000
    snapshot_max_age_s: float = 0.0
    state_purge_interval_s: float = 10.0
    watch_buffer: int = 10_000
    watch_coalesce_s: float = 0.02
    search_threads: int = 4
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


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


def _env(name: str, default: str) -> str:
    return os.environ.get(f"JARVIS_MEMORY_{name}", default)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `serve`; each defaults to its environment variable."""
    parser.add_argument(
        "--addr", default=_env("ADDR", DEFAULT_ADDR),
        help="host:port to listen on (env JARVIS_MEMORY_ADDR; default %(default)s)",
    )
    parser.add_argument(
        "--db", dest="db_path", default=_env("DB", DEFAULT_DB),
        help="SQLite database file, created with its folders if missing "
        "(env JARVIS_MEMORY_DB; default %(default)s)",
    )
    parser.add_argument(
        "--durability", choices=("normal", "full"), default=_env("DURABILITY", "normal"),
        help="normal: every acknowledged write survives a crash of the daemon; full: also a "
        "power loss, at the cost of an fsync per commit (env JARVIS_MEMORY_DURABILITY; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--busy-timeout-ms", type=int, default=int(_env("BUSY_TIMEOUT_MS", "250")),
        help="how long a write waits for a lock held by another process on the file before "
        "failing with UNAVAILABLE; the event loop waits with it, so keep it short "
        "(env JARVIS_MEMORY_BUSY_TIMEOUT_MS; default %(default)s)",
    )
    parser.add_argument(
        "--grace-period", dest="grace_period_s", type=_positive,
        default=float(_env("GRACE_PERIOD", "10")),
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT "
        "(env JARVIS_MEMORY_GRACE_PERIOD; default %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-interval", dest="checkpoint_interval_s", type=_positive,
        default=float(_env("CHECKPOINT_INTERVAL", "1")),
        help="seconds between background WAL checkpoints (env JARVIS_MEMORY_CHECKPOINT_INTERVAL; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--session-idle-timeout", dest="session_idle_timeout_s", type=_positive,
        default=float(_env("SESSION_IDLE_TIMEOUT", "1800")),
        help="seconds without a message or event after which the daemon ends a session with "
        "trigger TIMEOUT (env JARVIS_MEMORY_SESSION_IDLE_TIMEOUT; default %(default)s)",
    )
    parser.add_argument(
        "--snapshot-keep", type=int, default=int(_env("SNAPSHOT_KEEP", "1000")),
        help="keep the newest N snapshots of each kind, 0 for all "
        "(env JARVIS_MEMORY_SNAPSHOT_KEEP; default %(default)s)",
    )
    parser.add_argument(
        "--snapshot-max-age", dest="snapshot_max_age_s", type=float,
        default=float(_env("SNAPSHOT_MAX_AGE", "0")),
        help="drop snapshots older than this many seconds, 0 to keep them "
        "(env JARVIS_MEMORY_SNAPSHOT_MAX_AGE; default %(default)s)",
    )
    parser.add_argument(
        "--state-purge-interval", dest="state_purge_interval_s", type=_positive,
        default=float(_env("STATE_PURGE_INTERVAL", "10")),
        help="seconds between purges of expired state entries (they read as absent at once) "
        "(env JARVIS_MEMORY_STATE_PURGE_INTERVAL; default %(default)s)",
    )
    parser.add_argument(
        "--watch-buffer", type=int, default=int(_env("WATCH_BUFFER", "10000")),
        help="changes (of any namespace) committed while a watcher has not caught up, beyond "
        "which it is ended with RESOURCE_EXHAUSTED (env JARVIS_MEMORY_WATCH_BUFFER; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--watch-coalesce-ms", dest="watch_coalesce_ms", type=float,
        default=float(_env("WATCH_COALESCE_MS", "20")),
        help="how long a watcher gathers changes into one message: more watchers cost writers "
        "less, at this much latency (env JARVIS_MEMORY_WATCH_COALESCE_MS; default %(default)s)",
    )
    parser.add_argument(
        "--search-threads", type=int, default=int(_env("SEARCH_THREADS", "4")),
        help="worker threads that run searches off the event loop, each with its own "
        "connection (env JARVIS_MEMORY_SEARCH_THREADS; default %(default)s)",
    )
    parser.add_argument(
        "--change-retention", type=int, default=int(_env("CHANGE_RETENTION", "1000000")),
        help="newest changes the change log keeps for watchers to replay "
        "(env JARVIS_MEMORY_CHANGE_RETENTION; default %(default)s)",
    )
    parser.add_argument(
        "--compact-interval", dest="compact_interval_s", type=_positive,
        default=float(_env("COMPACT_INTERVAL", "10")),
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
        default=float(_env("AUTH_CACHE_TTL", "1")),
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
        "--log-level", default=_env("LOG_LEVEL", "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="(env JARVIS_MEMORY_LOG_LEVEL; default %(default)s)",
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
        watch_buffer=max(1, args.watch_buffer),
        watch_coalesce_s=max(0.0, args.watch_coalesce_ms / 1000),
        search_threads=max(1, args.search_threads),
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
    )
