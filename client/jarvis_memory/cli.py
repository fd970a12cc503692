"""`jarvis-memory get|put|list|search|delete|watch|stats|health`: the data of a running daemon.

These commands are clients of the daemon: they use the SDK (jarvis_memory.Client) only, and
the `jarvis-memory` console script (jarvis_memory_server.cli) registers them with
``add_commands`` and runs them with ``run``::

    jarvis-memory put memory "Prefers espresso" --category preference --source user_explicit
    jarvis-memory get memory 42
    jarvis-memory list memories --category fact -o json
    jarvis-memory search "coffee" --limit 5
    jarvis-memory delete memory 42
    jarvis-memory watch --kinds memory,event        # one line per change until Ctrl-C/SIGTERM
    jarvis-memory stats
    jarvis-memory health                            # exit 0 when serving: for healthchecks

Resources (singular or plural): memory, session, message (of a session), event, preference,
state, row (of a collection), collection. JSON values (preference and state values,
``--attributes``, ``--metadata``, ``--details``, rows) are given as JSON text: ``'"dark"'``
for a string, ``'{"a": 1}'`` for an object.

Connection flags, on every command (and their environment variables): ``--addr``
(JARVIS_MEMORY_ADDR, default 127.0.0.1:50051), ``--namespace``/``-n``
(JARVIS_MEMORY_NAMESPACE), ``--token`` (JARVIS_MEMORY_TOKEN), ``--tls`` (JARVIS_MEMORY_TLS=1),
``--ca-file``, ``--cert-file``, ``--key-file`` (JARVIS_MEMORY_CA_FILE, _CERT_FILE, _KEY_FILE),
``--timeout`` seconds (JARVIS_MEMORY_TIMEOUT; default 10, 3 for health).

Output: a table by default (columns aligned, times in UTC ISO 8601, long text cut with "…"
to the terminal's width, 100 columns when it has none); ``get`` shows every field of its
item, in full, one per line. ``-o json`` writes JSON Lines: one object per item with every
field in full (datetimes as RFC 3339 strings, durations as seconds); a single item (get, put
of one item, stats) is one object.

Errors are one line on stderr, ``jarvis-memory <command>: <STATUS>: <message>``, and the exit
status says what happened:

====  ==========================================================================================
0     success; for ``watch`` also its end by Ctrl-C (SIGINT) or SIGTERM
1     the daemon refused the call or could not be reached: UNAVAILABLE, DEADLINE_EXCEEDED,
      UNAUTHENTICATED, PERMISSION_DENIED, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED, ...;
      ``health``: anything but SERVING (health never exits 2 or 3, as Docker reserves 2)
2     bad usage: argparse's errors (unknown flag, missing argument), a value that is not valid
      JSON, and INVALID_ARGUMENT (the request as given is malformed, says the SDK or the daemon)
3     NOT_FOUND: no such memory, session, event, key, row or collection
130   interrupted by Ctrl-C (any command but watch)
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, NoReturn, TextIO, get_args

import grpc

from jarvis_memory._api import DEFAULT_TARGET
from jarvis_memory.client import Client
from jarvis_memory.errors import JarvisMemoryError, NotFound
from jarvis_memory.types import (
    Category,
    ChangeKind,
    Collection,
    Event,
    EventHit,
    EventSourceName,
    EventType,
    Memory,
    MemoryHit,
    MemorySourceArg,
    Message,
    MessageHit,
    Preference,
    Role,
    SearchMode,
    Session,
    SessionEvent,
    SessionOrder,
    SessionStateName,
    Severity,
    StateEntry,
    Stats,
)

COMMANDS = ("get", "put", "list", "search", "delete", "watch", "stats", "health")
DEFAULT_TIMEOUT = 10.0
HEALTH_TIMEOUT = 3.0
DEFAULT_WIDTH = 100

OK, REFUSED, USAGE, NOT_FOUND, INTERRUPTED = 0, 1, 2, 3, 130
_STATUS_EXIT = {
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: USAGE,
}
_FILTER_OPS = {"eq": "eq", "=": "eq", "==": "eq", "ne": "ne", "!=": "ne", "lt": "lt",
               "<": "lt", "le": "le", "<=": "le", "gt": "gt", ">": "gt", "ge": "ge",
               ">=": "ge", "in": "in", "prefix": "prefix", "is_null": "is_null"}
_SINGULAR = {"memories": "memory", "sessions": "session", "messages": "message",
             "events": "event", "preferences": "preference", "rows": "row",
             "collections": "collection"}
# Plurals and other names accepted for the change kinds of `watch --kinds`.
_KIND_NAMES = {
    **{kind: kind for kind in get_args(ChangeKind)},
    **{f"{kind}s": kind for kind in get_args(ChangeKind) if kind != "state"},
    "memories": "memory", "preferences": "preference",
}


class UsageError(Exception):
    """A bad command line found after argparse (exit status 2)."""


class _Stop(BaseException):
    """SIGTERM arrived: end like Ctrl-C."""


# -- arguments ------------------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the data commands (COMMANDS) to the `jarvis-memory` subcommands."""
    get = _command(subparsers, "get", "show one item in full: a memory, a session, ...")
    resources = _resources(get)
    _resource(resources, "memory", "memories", help="a memory by id").add_argument(
        "id", type=int)
    _resource(resources, "session", "sessions", help="a session by id").add_argument("id")
    _resource(resources, "event", "events", help="an event by id").add_argument("id", type=int)
    _resource(resources, "preference", "preferences", help="a preference by key").add_argument(
        "key")
    _resource(resources, "state", help="a state entry by key").add_argument("key")
    row = _resource(resources, "row", "rows", help="a row of a collection by id")
    row.add_argument("collection")
    row.add_argument("id", type=int)
    _resource(resources, "collection", "collections",
              help="a collection's definition").add_argument("name")

    put = _command(subparsers, "put", "store an item and print it")
    resources = _resources(put)
    memory = _resource(resources, "memory", "memories", help="add a memory (or restate it)")
    memory.add_argument("content")
    memory.add_argument("--category", required=True, choices=get_args(Category))
    memory.add_argument("--source", default="user_explicit", choices=get_args(MemorySourceArg),
                        help="default %(default)s")
    memory.add_argument("--subject", default="", help="what or whom the memory is about")
    memory.add_argument("--attributes", type=_json_arg(object_only=True), metavar="JSON",
                        help="a JSON object, e.g. '{\"a\": 1}'")
    memory.add_argument("--supersedes", type=int, action="append", default=[], metavar="ID",
                        help="the id of a current memory this one replaces (repeatable)")
    memory.add_argument("--ttl", type=float, metavar="SECONDS", help="expire after this long")
    session = _resource(resources, "session", "sessions", help="start a session")
    session.add_argument("id", nargs="?", help="its id (default: a new one)")
    session.add_argument("--metadata", type=_json_arg(object_only=True), metavar="JSON",
                         help="a JSON object")
    message = _resource(resources, "message", "messages", help="append a message to a session")
    message.add_argument("session_id")
    message.add_argument("content")
    message.add_argument("--role", default="user", choices=get_args(Role),
                         help="default %(default)s")
    message.add_argument("--model", default="")
    event = _resource(resources, "event", "events", help="record an event")
    event.add_argument("summary")
    event.add_argument("--type", default="status", choices=get_args(EventType),
                       help="default %(default)s")
    event.add_argument("--severity", default="info", choices=get_args(Severity),
                       help="default %(default)s")
    event.add_argument("--source", default="user", choices=get_args(EventSourceName),
                       help="default %(default)s")
    event.add_argument("--node", default="")
    event.add_argument("--details", type=_json_arg(object_only=True), metavar="JSON",
                       help="a JSON object")
    preference = _resource(resources, "preference", "preferences",
                           help="create or replace a preference")
    preference.add_argument("key")
    preference.add_argument("value", type=_json_arg(), metavar="VALUE",
                            help="any JSON value: '\"dark\"', 3, '{\"a\": 1}'")
    state = _resource(resources, "state", help="create or replace a state entry")
    state.add_argument("key")
    state.add_argument("value", type=_json_arg(), metavar="VALUE", help="any JSON value")
    state.add_argument("--expected-version", type=int, metavar="N",
                       help="only at this version (0: only if it does not exist), else ABORTED")
    state.add_argument("--ttl", type=float, metavar="SECONDS", help="expire after this long")
    row = _resource(resources, "row", "rows", help="insert rows into a collection")
    row.add_argument("collection")
    row.add_argument("rows", nargs="+", type=_json_arg(object_only=True), metavar="ROW",
                     help="a JSON object of field values; several are inserted together")

    list_ = _command(subparsers, "list", "list items, newest or in key order")
    resources = _resources(list_)
    memories = _resource(resources, "memories", "memory", help="current memories, newest first")
    memories.add_argument("--category", choices=get_args(Category))
    memories.add_argument("--source", choices=get_args(MemorySourceArg))
    memories.add_argument("--subject")
    memories.add_argument("--include-superseded", action="store_true",
                          help="also superseded memories and those not valid now")
    sessions = _resource(resources, "sessions", "session", help="sessions, newest first")
    sessions.add_argument("--state", choices=get_args(SessionStateName))
    sessions.add_argument("--order-by", choices=get_args(SessionOrder))
    _resource(resources, "messages", "message",
              help="a session's messages, oldest first").add_argument("session_id")
    events = _resource(resources, "events", "event", help="events, newest first")
    events.add_argument("--unresolved", action="store_true", help="only unresolved ones")
    events.add_argument("--type", action="append", choices=get_args(EventType),
                        help="only this type (repeatable)")
    events.add_argument("--min-severity", choices=get_args(Severity))
    events.add_argument("--node")
    for name, alias in (("preferences", "preference"), ("state", None)):
        keyed = _resource(resources, name, *([alias] if alias else []),
                          help=f"{name} in key order")
        keyed.add_argument("--prefix", default="", help="only keys starting with this")
    rows = _resource(resources, "rows", "row", help="rows of a collection")
    rows.add_argument("collection")
    rows.add_argument("--filter", dest="filters", action="append", default=[],
                      type=_filter_arg, metavar="'FIELD OP VALUE'",
                      help="e.g. 'qty gt 3', 'symbol eq ETH', 'note is_null', "
                      "'symbol in [\"A\",\"B\"]'; ops: eq ne lt le gt ge in prefix is_null (or "
                      "= != < <= > >=); the value is JSON, else text (repeatable: all must hold)")
    rows.add_argument("--order-by", action="append", default=[], metavar="FIELD",
                      help="sort by this field; descending: --order-by=-FIELD (repeatable)")
    _resource(resources, "collections", "collection", help="collections, by name")
    for sub in {id(p): p for p in resources.choices.values()}.values():  # aliases: once
        sub.add_argument("--limit", type=int, default=0, metavar="N",
                         help="at most N items (default: all)")

    search = _command(subparsers, "search", "find memories (or messages, events) by relevance")
    search.add_argument("query")
    search.add_argument("--kind", default="memories", choices=("memories", "messages", "events"),
                        help="what to search (default %(default)s)")
    search.add_argument("--limit", type=int, default=10, help="at most N hits (default 10)")
    search.add_argument("--mode", default="keyword", choices=get_args(SearchMode),
                        help="vector and hybrid need --embedding (default %(default)s)")
    search.add_argument("--embedding", type=_embedding_arg, metavar="JSON",
                        help="the query's embedding, a JSON list of numbers")
    search.add_argument("--category", choices=get_args(Category), help="memories only")
    search.add_argument("--session", dest="session_id", help="messages of this session only")

    delete = _command(subparsers, "delete", "delete an item")
    resources = _resources(delete)
    _resource(resources, "memory", "memories", help="a memory by id").add_argument(
        "id", type=int)
    _resource(resources, "preference", "preferences", help="a preference by key").add_argument(
        "key")
    state = _resource(resources, "state", help="a state entry by key")
    state.add_argument("key")
    state.add_argument("--expected-version", type=int, metavar="N",
                       help="only at this version, else ABORTED")
    row = _resource(resources, "row", "rows", help="a row of a collection by id")
    row.add_argument("collection")
    row.add_argument("id", type=int)

    watch = _command(subparsers, "watch",
                     "print changes as they are committed, until Ctrl-C or SIGTERM")
    watch.add_argument("--kinds", type=_kinds_arg, metavar="KIND,...",
                       help="only these kinds: " + ",".join(get_args(ChangeKind)))
    watch.add_argument("--from-revision", type=int, default=0, metavar="N",
                       help="start at this revision (default: changes from now on)")

    _command(subparsers, "stats", "the daemon's row counts, sizes, revision, uptime (admin)")

    health = _command(subparsers, "health",
                      "exit 0 when the daemon serves, 1 otherwise (gRPC health check)")
    health.add_argument("--service", default="",
                        help="a service's full name (default: the whole daemon)")


def _command(
    subparsers: argparse._SubParsersAction[Any], name: str, help: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help)
    _add_common(parser, health=name == "health")
    return parser


def _resources(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    return parser.add_subparsers(dest="resource_name", metavar="RESOURCE", required=True)


def _resource(
    resources: argparse._SubParsersAction[Any], name: str, *aliases: str, help: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = resources.add_parser(
        name, aliases=list(aliases), help=help, description=help)
    _add_common(parser)
    parser.set_defaults(resource=_SINGULAR.get(name, name))
    return parser


def _add_common(parser: argparse.ArgumentParser, health: bool = False) -> None:
    """The output and connection flags, on every command and resource.

    They default to SUPPRESS, so that one given before the resource (`get --addr X memory
    1`) is not replaced by the resource's default; run() falls back to the environment.
    """
    s = argparse.SUPPRESS
    parser.add_argument("-o", "--output", choices=("table", "json"), default=s,
                        help="table (default) or json: JSON Lines, one object per item")
    group = parser.add_argument_group("connection")
    group.add_argument("--addr", default=s,
                       help=f"the daemon, host:port (env JARVIS_MEMORY_ADDR; default "
                       f"{DEFAULT_TARGET})")
    group.add_argument("-n", "--namespace", default=s,
                       help="the namespace (env JARVIS_MEMORY_NAMESPACE; default 'default')")
    group.add_argument("--token", default=s, help="an API token or JWT (env JARVIS_MEMORY_TOKEN)")
    group.add_argument("--tls", action="store_true", default=s,
                       help="use TLS with the system's CAs (env JARVIS_MEMORY_TLS=1)")
    group.add_argument("--ca-file", default=s, help="trust this CA (env JARVIS_MEMORY_CA_FILE)")
    group.add_argument("--cert-file", default=s,
                       help="client certificate, mutual TLS (env JARVIS_MEMORY_CERT_FILE)")
    group.add_argument("--key-file", default=s,
                       help="its private key (env JARVIS_MEMORY_KEY_FILE)")
    group.add_argument("--timeout", type=float, default=s, metavar="SECONDS",
                       help="deadline of each call (env JARVIS_MEMORY_TIMEOUT; default "
                       f"{HEALTH_TIMEOUT if health else DEFAULT_TIMEOUT:g})")


def _json_arg(object_only: bool = False) -> Callable[[str], Any]:
    """An argparse type: JSON text -> its value (argparse names the argument on error)."""

    def json_value(text: str) -> Any:
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            problem = f"not valid JSON: {_quote(text)}"
            if isinstance(exc, json.JSONDecodeError):
                problem += f" ({exc.msg} at character {exc.pos + 1})"
            if not object_only:
                problem += f"; for the text itself, give the JSON string {_quote(json.dumps(text))}"
            raise argparse.ArgumentTypeError(problem) from None
        if object_only and not isinstance(value, dict):
            raise argparse.ArgumentTypeError(
                f"must be a JSON object such as '{{\"a\": 1}}', got {_quote(text)}")
        return value

    return json_value


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _quote(text: str) -> str:
    return "'" + (text if len(text) <= 60 else text[:59] + "…") + "'"


def _embedding_arg(text: str) -> list[float]:
    value = _json_arg()(text)
    if not isinstance(value, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise argparse.ArgumentTypeError("must be a JSON list of numbers, such as '[0.1, 0.2]'")
    return [float(x) for x in value]


def _filter_arg(text: str) -> tuple[str, str, Any] | tuple[str, str]:
    parts = text.split(None, 2)
    if len(parts) < 2 or parts[1] not in _FILTER_OPS:
        raise argparse.ArgumentTypeError(
            f"expected 'FIELD OP VALUE' with OP one of {' '.join(sorted(set(_FILTER_OPS)))}, "
            f"got {_quote(text)}")
    field, op = parts[0], _FILTER_OPS[parts[1]]
    if op == "is_null":
        if len(parts) > 2:
            raise argparse.ArgumentTypeError(f"'is_null' takes no value: {_quote(text)}")
        return (field, op)
    if len(parts) < 3:
        raise argparse.ArgumentTypeError(f"{op!r} needs a value: {_quote(text)}")
    try:
        value = json.loads(parts[2], parse_constant=_no_constant)
    except ValueError:
        if op == "in":
            raise argparse.ArgumentTypeError(
                f"'in' takes a JSON list, such as '[\"a\", \"b\"]': {_quote(text)}") from None
        value = parts[2]  # plain text
    return (field, op, value)


def _kinds_arg(text: str) -> list[str]:
    kinds = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        if name not in _KIND_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown kind {name!r}; the kinds are {', '.join(get_args(ChangeKind))}")
        kinds.append(_KIND_NAMES[name])
    if not kinds:
        raise argparse.ArgumentTypeError("give at least one kind")
    return kinds


# -- running --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Connection:
    addr: str
    namespace: str
    token: str | None
    tls: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    timeout: float

    def client(self) -> Client:
        return Client(self.addr, namespace=self.namespace, token=self.token, tls=self.tls,
                      ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file,
                      timeout=self.timeout)


def run(args: argparse.Namespace) -> int:
    """Run a data command parsed by a parser add_commands set up; return the exit status."""
    status = _run(args)
    if args.command == "health" and status not in (OK, INTERRUPTED):
        return REFUSED  # Docker reads 0 as healthy and 1 as unhealthy, and reserves 2
    return status


def _run(args: argparse.Namespace) -> int:
    command: str = args.command
    conn: _Connection | None = None
    try:
        conn = _connection(args)
        out = _Output(sys.stdout, json_lines=getattr(args, "output", "table") == "json")
        if command == "health":
            return _health(conn, args, out)
        if command == "watch":
            return _watch(conn, args, out)
        with conn.client() as client:
            _HANDLERS[command](client, args, out)
        sys.stdout.flush()  # here, where a closed pipe is caught
        return OK
    except JarvisMemoryError as exc:
        return _fail(command, exc.code, exc.message, conn)
    except UsageError as exc:
        print(f"jarvis-memory {command}: error: {exc}", file=sys.stderr)
        return USAGE
    except BrokenPipeError:  # `... | head`: the reader has gone, so have we
        _silence_stdout()
        return OK
    except OSError as exc:  # a certificate file that cannot be read
        problem = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        print(f"jarvis-memory {command}: error: {problem}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return INTERRUPTED


def _connection(args: argparse.Namespace) -> _Connection:
    def option(name: str, env: str) -> str | None:
        value = getattr(args, name, None)
        return value if value is not None else os.environ.get(env) or None

    timeout: Any = getattr(args, "timeout", None)
    if timeout is None:
        text = os.environ.get("JARVIS_MEMORY_TIMEOUT")
        try:
            timeout = float(text) if text else (
                HEALTH_TIMEOUT if args.command == "health" else DEFAULT_TIMEOUT)
        except ValueError:
            raise UsageError(f"JARVIS_MEMORY_TIMEOUT={text!r} is not a number of seconds") from None
    if not timeout > 0:
        raise UsageError(f"the timeout must be more than 0 seconds, got {timeout:g}")
    tls = getattr(args, "tls", None)
    if tls is None:
        tls = os.environ.get("JARVIS_MEMORY_TLS", "").lower() in ("1", "true", "yes", "on")
    return _Connection(
        addr=option("addr", "JARVIS_MEMORY_ADDR") or DEFAULT_TARGET,
        namespace=option("namespace", "JARVIS_MEMORY_NAMESPACE") or "",
        token=option("token", "JARVIS_MEMORY_TOKEN"),
        tls=bool(tls),
        ca_file=option("ca_file", "JARVIS_MEMORY_CA_FILE"),
        cert_file=option("cert_file", "JARVIS_MEMORY_CERT_FILE"),
        key_file=option("key_file", "JARVIS_MEMORY_KEY_FILE"),
        timeout=float(timeout),
    )


def _fail(command: str, code: grpc.StatusCode, message: str, conn: _Connection | None) -> int:
    """Print the one-line error of a refused or failed call; return its exit status."""
    text = " ".join(message.split()) or "(no details)"
    if conn is not None:
        if code == grpc.StatusCode.UNAVAILABLE:
            text += (f" (is the daemon running at {conn.addr}? give its address with --addr "
                     "or JARVIS_MEMORY_ADDR)")
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            text += f" (no answer from {conn.addr} within {conn.timeout:g} s; see --timeout)"
        elif code == grpc.StatusCode.UNAUTHENTICATED and not conn.token:
            text += " (auth is on: give a token with --token or JARVIS_MEMORY_TOKEN)"
    print(f"jarvis-memory {command}: {code.name}: {text}", file=sys.stderr)
    return _STATUS_EXIT.get(code, REFUSED)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _get(client: Client, args: argparse.Namespace, out: _Output) -> None:
    resource = args.resource
    item: Any
    if resource == "memory":
        item = client.get_memory(args.id)
    elif resource == "session":
        item = client.get_session(args.id)
    elif resource == "event":
        item = client.get_event(args.id)
    elif resource == "preference":
        item = client.get_preference(args.key)
    elif resource == "state":
        item = client.get_state(args.key)
    elif resource == "row":
        collection = client.get_collection(args.collection)
        rows = client.query_rows(args.collection, where=[("id", "eq", args.id)], page_size=1)
        if not rows:
            raise NotFound(f"row {args.id} does not exist in collection {args.collection!r} of "
                           f"namespace {client.namespace or 'default'!r}")
        item = _in_order(rows[0], collection)
    else:
        item = client.get_collection(args.name)
    out.single(item)


def _put(client: Client, args: argparse.Namespace, out: _Output) -> None:
    resource = args.resource
    item: Any
    if resource == "memory":
        item = client.add_memory(
            args.content, category=args.category, source=args.source, subject=args.subject,
            attributes=args.attributes, supersedes=args.supersedes,
            ttl=timedelta(seconds=args.ttl) if args.ttl is not None else None)
    elif resource == "session":
        item = client.start_session(args.id, metadata=args.metadata)
    elif resource == "message":
        item = client.append_message(args.session_id, role=args.role, content=args.content,
                                     model=args.model)
    elif resource == "event":
        item = client.record_event(type=args.type, severity=args.severity, source=args.source,
                                   summary=args.summary, node=args.node, details=args.details)
    elif resource == "preference":
        item = client.set_preference(args.key, args.value)
    elif resource == "state":
        item = client.put_state(args.key, args.value, expected_version=args.expected_version,
                                ttl=args.ttl)
    else:
        collection = client.get_collection(args.collection)
        timestamps = _timestamp_fields(collection)
        rows = [{k: _timestamp(v, f"ROW {k}") if k in timestamps else v for k, v in row.items()}
                for row in args.rows]
        ids = client.insert_rows(args.collection, rows)
        stored = client.query_rows(args.collection, where=[("id", "in", ids)], order_by=["id"],
                                   page_size=len(ids))
        out.many(_in_order(row, collection) for row in stored)
        return
    out.many([item])


def _list(client: Client, args: argparse.Namespace, out: _Output) -> None:
    resource, limit = args.resource, max(args.limit, 0)
    page = min(limit, 1000) if limit else 0
    items: Iterator[Any]
    if resource == "memory":
        items = client.iter_memories(
            page_size=page, category=args.category, source=args.source, subject=args.subject,
            include_superseded=args.include_superseded)
    elif resource == "session":
        items = client.iter_sessions(page_size=page, state=args.state, order_by=args.order_by)
    elif resource == "message":
        items = client.iter_messages(args.session_id, page_size=page)
    elif resource == "event":
        items = client.iter_events(page_size=page, types=args.type or (),
                                   min_severity=args.min_severity, node=args.node,
                                   unresolved=True if args.unresolved else None)
    elif resource == "preference":
        items = client.iter_preferences(prefix=args.prefix, page_size=page)
    elif resource == "state":
        items = client.iter_state(prefix=args.prefix, page_size=page)
    elif resource == "row":
        collection = client.get_collection(args.collection)
        timestamps = _timestamp_fields(collection)
        where = [(f[0], f[1], _filter_timestamps(f[2], f"--filter {f[0]}"))
                 if len(f) > 2 and f[0] in timestamps else f for f in args.filters]
        items = (_in_order(row, collection) for row in client.iter_rows(
            args.collection, where=where, order_by=args.order_by, page_size=page))
    else:
        items = client.iter_collections(page_size=page)
    out.many(_take(items, limit), kind=resource)


def _take(items: Iterator[Any], limit: int) -> Iterator[Any]:
    for n, item in enumerate(items, 1):
        yield item
        if n == limit:
            return


def _search(client: Client, args: argparse.Namespace, out: _Output) -> None:
    hits: Sequence[Any]
    if args.mode != "keyword" and args.embedding is None:
        raise UsageError(f"--mode {args.mode} needs --embedding '[...]' (the query's vector)")
    if args.kind == "memories":
        hits = client.search_memories(args.query, limit=args.limit, mode=args.mode,
                                      embedding=args.embedding, category=args.category)
    elif args.kind == "messages":
        hits = client.search_messages(args.query, limit=args.limit, mode=args.mode,
                                      embedding=args.embedding, session_id=args.session_id)
    else:
        if args.mode != "keyword":
            raise UsageError("events are searched by keyword only (no --mode)")
        hits = client.search_events(args.query, limit=args.limit)
    out.many(hits)


def _delete(client: Client, args: argparse.Namespace, out: _Output) -> None:
    resource = args.resource
    key: dict[str, Any]
    if resource == "memory":
        client.delete_memory(args.id)
        key = {"id": args.id}
    elif resource == "preference":
        client.delete_preference(args.key)
        key = {"key": args.key}
    elif resource == "state":
        client.delete_state(args.key, expected_version=args.expected_version)
        key = {"key": args.key}
    else:
        if not client.delete_rows(args.collection, where=[("id", "eq", args.id)]):
            raise NotFound(f"row {args.id} does not exist in collection {args.collection!r} of "
                           f"namespace {client.namespace or 'default'!r}")
        key = {"collection": args.collection, "id": args.id}
    if out.json_lines:
        out.line(_dumps({"deleted": resource, **key}))
    else:
        out.line(f"deleted {resource} " + " ".join(str(v) for v in key.values()))


def _stats(client: Client, args: argparse.Namespace, out: _Output) -> None:
    stats = client.get_stats()
    if out.json_lines:
        out.single(stats)
        return
    out.fields([
        ("revision", str(stats.revision)),
        ("uptime", str(timedelta(seconds=round(stats.uptime.total_seconds())))),
        ("database", _size(stats.database_bytes)),
        ("wal", _size(stats.wal_bytes)),
        ("commits", f"{stats.commits} ({stats.committed_writes} writes)"),
    ])
    out.line("")
    out.table(_COLUMNS[Stats], sorted(stats.counts, key=lambda c: (c.namespace, c.kind)))


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} bytes" if unit == "B" else f"{value:.1f} {unit} ({n} bytes)"


_HANDLERS: dict[str, Callable[[Client, argparse.Namespace, _Output], None]] = {
    "get": _get, "put": _put, "list": _list, "search": _search, "delete": _delete,
    "stats": _stats,
}


def _watch(conn: _Connection, args: argparse.Namespace, out: _Output) -> int:
    """Print each change until Ctrl-C or SIGTERM (exit 0), or until the watch fails."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with conn.client() as client:
            for change in client.watch(kinds=args.kinds, start_revision=args.from_revision):
                if out.json_lines:
                    out.line(_dumps(change), flush=True)
                else:
                    out.line(out.cut(_change_line(change)), flush=True)
    except (KeyboardInterrupt, _Stop):
        return OK
    finally:
        signal.signal(signal.SIGTERM, previous)
    return OK  # not reached: a watch does not end by itself


def _health(conn: _Connection, args: argparse.Namespace, out: _Output) -> int:
    """The gRPC health check of the daemon ("") or of one service; 0 when SERVING, else 1."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with conn.client() as client:  # no credential needed: health is open
        try:
            reply = health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=conn.timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return _fail("health", code, f"the daemon has no service {args.service!r}", conn)
            return _fail("health", code, exc.details() or "", conn)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if out.json_lines:
        out.line(_dumps({"status": status, "service": args.service, "addr": conn.addr}))
    else:
        out.line(f"{status} {conn.addr}" + (f" {args.service}" if args.service else ""))
    return OK if reply.status == health_pb2.HealthCheckResponse.SERVING else REFUSED


# -- collections ----------------------------------------------------------------------------


def _in_order(row: dict[str, Any], collection: Collection) -> dict[str, Any]:
    """A row with "id" first, then its fields in the collection's order (others last)."""
    names = ["id", *(field.name for field in collection.fields)]
    return {**{name: row[name] for name in names if name in row}, **row}


def _timestamp_fields(collection: Collection) -> set[str]:
    return {field.name for field in collection.fields if field.type == "timestamp"}


def _timestamp(value: Any, where: str) -> Any:
    """An ISO 8601 text -> an aware datetime (naive means UTC); other values as they are."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{where}: {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _filter_timestamps(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_timestamp(v, where) for v in value]
    return _timestamp(value, where)


# -- output ---------------------------------------------------------------------------------


def _utc(value: datetime | None) -> str:
    """A time as RFC 3339 / ISO 8601 in UTC, with its microseconds ("...Z")."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _short_utc(value: datetime | None) -> str:
    """A time in UTC to the second, for tables."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _plain(item: Any) -> Any:
    """A result as JSON-ready Python values (dataclasses as dicts, recursively)."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    return item


def _dumps(item: Any) -> str:
    return json.dumps(_plain(item), ensure_ascii=False, default=_json_default,
                      separators=(", ", ": "))


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default, separators=(",", ":"))


def _cell(value: object) -> str:
    """A value as one line of table text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return _short_utc(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return _compact(value)
    text = str(value)
    return text if text.isprintable() else "".join(
        ch if ch.isprintable() else " " for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return text.__len__() if text.isascii() else sum(map(_char_width, text))


def _fit(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` columns (ending in "…" when cut), padded with spaces."""
    size = _width(text)
    if size <= width:
        return text + " " * (width - size)
    kept, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > width - 1:
            break
        kept.append(ch)
        used += w
    return "".join(kept) + "…" + " " * (width - 1 - used)


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: its header, how to get its value, and whether it takes the rest."""

    header: str
    value: Callable[[Any], object]
    flex: bool = False


def _fields_text(collection: Collection) -> str:
    """A collection's fields as "qty:integer(required,indexed), note:string"."""
    texts = []
    for f in collection.fields:
        flags = [flag for flag in ("required", "unique", "indexed") if getattr(f, flag)]
        texts.append(f"{f.name}:{f.type}" + (f"({','.join(flags)})" if flags else ""))
    return ", ".join(texts)


def _of_memory(value: Callable[[Any], object]) -> Callable[[Any], object]:
    """A Memory column's value, taken from a MemoryHit's memory."""
    return lambda hit: value(hit.memory)


def _row_field(name: str) -> Callable[[Any], object]:
    return lambda row: row.get(name)


_MEMORY = [Column("ID", lambda m: m.id), Column("CATEGORY", lambda m: m.category),
           Column("SOURCE", lambda m: m.source), Column("SUBJECT", lambda m: m.subject),
           Column("CREATED", lambda m: m.created_at), Column("CONTENT", lambda m: m.content, True)]
_COLUMNS: dict[type, list[Column]] = {
    Memory: _MEMORY,
    Session: [Column("ID", lambda s: s.id), Column("STATE", lambda s: s.state),
              Column("STARTED", lambda s: s.started_at),
              Column("LAST ACTIVITY", lambda s: s.last_activity_at),
              Column("MESSAGES", lambda s: s.message_count),
              Column("SUMMARY", lambda s: s.summary, True)],
    Message: [Column("SEQ", lambda m: m.sequence), Column("ID", lambda m: m.id),
              Column("ROLE", lambda m: m.role), Column("CREATED", lambda m: m.created_at),
              Column("CONTENT", lambda m: m.content, True)],
    Event: [Column("ID", lambda e: e.id), Column("OCCURRED", lambda e: e.occurred_at),
            Column("TYPE", lambda e: e.type), Column("SEVERITY", lambda e: e.severity),
            Column("SOURCE", lambda e: e.source), Column("NODE", lambda e: e.node),
            Column("RESOLVED", lambda e: e.resolved),
            Column("SUMMARY", lambda e: e.summary, True)],
    Preference: [Column("KEY", lambda p: p.key), Column("UPDATED", lambda p: p.updated_at),
                 Column("VALUE", lambda p: _compact(p.value), True)],
    StateEntry: [Column("KEY", lambda s: s.key), Column("VERSION", lambda s: s.version),
                 Column("UPDATED", lambda s: s.updated_at),
                 Column("EXPIRES", lambda s: s.expires_at),
                 Column("VALUE", lambda s: _compact(s.value), True)],
    Collection: [Column("NAME", lambda c: c.name), Column("CREATED", lambda c: c.created_at),
                 Column("FIELDS", _fields_text, True)],
    SessionEvent: [Column("ID", lambda e: e.id), Column("LOGGED", lambda e: e.logged_at),
                   Column("TYPE", lambda e: e.event_type), Column("DATA", lambda e: e.data, True)],
    MemoryHit: [Column("SCORE", lambda h: h.score), *(
        Column(c.header, _of_memory(c.value), c.flex) for c in _MEMORY
        if c.header not in ("SOURCE", "SUBJECT"))],
    MessageHit: [Column("SCORE", lambda h: h.score),
                 Column("SESSION", lambda h: h.message.session_id),
                 Column("SEQ", lambda h: h.message.sequence),
                 Column("ROLE", lambda h: h.message.role),
                 Column("CREATED", lambda h: h.message.created_at),
                 Column("CONTENT", lambda h: h.message.content, True)],
    EventHit: [Column("SCORE", lambda h: h.score), Column("ID", lambda h: h.event.id),
               Column("OCCURRED", lambda h: h.event.occurred_at),
               Column("SEVERITY", lambda h: h.event.severity),
               Column("SUMMARY", lambda h: h.event.summary, True)],
    Stats: [Column("NAMESPACE", lambda c: c.namespace), Column("KIND", lambda c: c.kind),
            Column("ROWS", lambda c: c.rows)],
}
_HEADERS = {"memory": "ID", "session": "ID", "message": "SEQ", "event": "ID",
            "preference": "KEY", "state": "KEY", "collection": "NAME", "row": "ID"}


def _row_columns(rows: Sequence[dict[str, Any]]) -> list[Column]:
    """A collection's rows: "id" first, then every field in the order the rows hold them."""
    names = dict.fromkeys(["id", *(name for row in rows for name in row)])
    return [Column(name.upper(), _row_field(name)) for name in names]


def _change_line(change: Any) -> str:
    """One change as one line: revision, time, operation, kind/key and value.

    A watch is of one namespace, so the line leaves it out (-o json has it).
    """
    resource = change.resource
    summary: object = ""
    if isinstance(resource, Memory):
        summary = resource.content
    elif isinstance(resource, Message):
        summary = f"{resource.role}: {resource.content}"
    elif isinstance(resource, Event):
        summary = f"{resource.severity}: {resource.summary}"
    elif isinstance(resource, Preference | StateEntry):
        summary = _compact(resource.value)
    elif isinstance(resource, Session):
        summary = resource.state
    elif isinstance(resource, Collection):
        summary = _fields_text(resource)
    elif isinstance(resource, SessionEvent):
        summary = f"{resource.event_type} {_compact(resource.data)}"
    elif resource is not None:
        summary = _plain(resource)
    what = f"{change.kind}/{change.key}"
    return (f"{change.revision:>6}  {_short_utc(change.time)}  {change.operation:<6}  "
            f"{what:<18}  {_cell(summary)}").rstrip()


class _Output:
    """Writes results as tables (to the terminal's width) or as JSON Lines."""

    def __init__(self, stream: TextIO, *, json_lines: bool) -> None:
        self.stream = stream
        self.json_lines = json_lines
        self.width = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns or DEFAULT_WIDTH

    def line(self, text: str, *, flush: bool = False) -> None:
        self.stream.write(text + "\n")
        if flush:
            self.stream.flush()

    def cut(self, text: str) -> str:
        return _fit(text, self.width).rstrip() if _width(text) > self.width else text

    def single(self, item: Any) -> None:
        """One item in full: a JSON object, or one line per field."""
        if self.json_lines:
            self.line(_dumps(item))
            return
        plain = _plain(item)
        if isinstance(item, Collection):
            plain["fields"] = _fields_text(item)
        self.fields([(name, _full(value)) for name, value in plain.items()])

    def fields(self, pairs: Sequence[tuple[str, str]]) -> None:
        label = max(len(name) for name, _ in pairs) + 2
        for name, value in pairs:
            lines = value.split("\n") or [""]
            self.line(f"{name + ':':<{label}}{lines[0]}".rstrip())
            for more in lines[1:]:
                self.line(f"{'':<{label}}{more}".rstrip())

    def many(self, items: Iterable[Any], *, kind: str = "") -> None:
        """Items as JSON Lines (one object per item), or as a table."""
        if self.json_lines:
            for item in items:
                self.line(_dumps(item))
            return
        listed = list(items)
        if not listed:
            columns = [Column(_HEADERS.get(kind, "ID"), lambda x: x)]
        elif isinstance(listed[0], dict):
            columns = _row_columns(listed)
        else:
            columns = _COLUMNS[type(listed[0])]
        self.table(columns, listed)

    def table(self, columns: Sequence[Column], items: Sequence[Any]) -> None:
        cells = [[_cell(column.value(item)) for column in columns] for item in items]
        headers = [column.header for column in columns]
        widths = [max([_width(h), *(_width(row[i]) for row in cells)])
                  for i, h in enumerate(headers)]
        widths = [w if c.flex else min(w, 40) for w, c in zip(widths, columns, strict=True)]
        budget = self.width - 2 * (len(columns) - 1)
        for i, column in enumerate(columns):  # the flexible column gives way first
            if column.flex and sum(widths) > budget:
                widths[i] = max(budget - (sum(widths) - widths[i]), min(widths[i], 12))
        while sum(widths) > budget:  # then the widest, down to its header
            i = max(range(len(widths)), key=lambda k: widths[k] - _width(headers[k]) / 100)
            if widths[i] <= max(_width(headers[i]), 3):
                break
            widths[i] -= 1
        for row in [headers, *cells]:
            self.line("  ".join(_fit(text, w) for text, w in zip(row, widths, strict=True))
                      .rstrip())


def _full(value: object) -> str:
    """A field of a single item, in full (text keeps its lines)."""
    if isinstance(value, str):
        return "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in value)
    if isinstance(value, dict | list):
        return _compact(value)
    return _cell(value)
