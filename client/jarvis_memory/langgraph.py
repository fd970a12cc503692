r"""A LangGraph store (``langgraph.store.base.BaseStore``) kept by a jarvis-memory daemon.

    from jarvis_memory.langgraph import JarvisStore
    store = JarvisStore("127.0.0.1:50051")
    store.put(("alice", "memories"), "m1", {"text": "likes espresso"})
    store.search(("alice",), query="coffee", limit=5)

Needs the ``langgraph`` extra (``pip install 'jarvis-memory[langgraph]'``).

Every item of a store is one row of the runtime collection ``langgraph_items`` in the store's
daemon namespace (created on first use): ``item`` (unique) is the JSON text of [namespace,
key]; ``ns`` is the namespace encoded so that code point order is LangGraph's tuple order
and a namespace prefix is a string prefix (each label with \x01 written \x01\x02, then the
terminator \x01\x01: labels never hold NUL); ``ns_since`` is when the namespace got its
first item (copied to each new item while it holds any), which orders search results as
InMemoryStore orders them: namespaces by first put, then items by first put (the row id).
``expires_at`` is far in the future for an item without a TTL, so that one filter keeps
expired rows out of every read.

Differences from LangGraph's InMemoryStore:

- ``query`` is accepted and ignored (no embedding index; InMemoryStore without an ``index``
  does the same), and ``index`` of a put is ignored. Results have score None.
- A put over an existing item keeps its ``created_at`` (as PostgresStore does; InMemoryStore
  resets it).
- list_namespaces lists the namespaces that hold an item; InMemoryStore also keeps listing a
  namespace once read, or after its last item was deleted, and keeps that namespace's place
  in the search order.
- Values must be JSON (dict, list, str, int, float, bool, None inside), else InvalidArgument.
- A filter operator ($gt, $gte, $lt, $lte) on a value that is not a number is no match,
  where InMemoryStore raises TypeError or ValueError.
- TTLs work (``supports_ttl``): ttl is in minutes, expired items read as absent at once,
  reads refresh the TTL unless ``refresh_ttl=False``; ``sweep_ttl()`` deletes expired rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from jarvis_memory.aio import AsyncClient
from jarvis_memory.client import Client
from jarvis_memory.errors import Aborted, AlreadyExists

__all__ = ["COLLECTION", "NEVER", "JarvisStore", "decode_namespace", "encode_namespace"]

T = TypeVar("T")

COLLECTION = "langgraph_items"
FIELDS = [
    ("item", "string", {"unique": True}),
    ("ns", "string", {"indexed": True}),
    ("ns_since", "timestamp", {"required": True}),
    ("value", "json", {"required": True}),
    ("created_at", "timestamp", {"required": True}),
    ("updated_at", "timestamp", {"required": True}),
    ("expires_at", "timestamp", {"required": True, "indexed": True}),
    ("ttl", "real", {}),  # minutes, for refreshing on read; null: never expires
]
NEVER = datetime(9999, 12, 31, tzinfo=UTC)  # the expires_at of an item without a TTL
_PAGE = 200  # rows per page when a filter is applied here, not by the daemon
_MAX_IN = 1000  # the daemon's limit of values of an "in" filter
_PUT_ATTEMPTS = 5  # a put that meets an expired row, or a racing insert, tries again


@dataclass(frozen=True, slots=True)
class _Call:
    """One SDK call that a plan asks its driver to make (the same on Client and AsyncClient)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


# The store's logic is written once, as generators that yield the calls they need: the sync
# and the async side only differ in how they make them (_run and _arun).
_Plan = Generator[_Call, Any, T]


def _run(client: Client, plan: _Plan[T]) -> T:
    try:
        call = next(plan)
        while True:
            try:
                result = getattr(client, call.method)(*call.args, **call.kwargs)
            except Exception as exc:  # the plan decides (AlreadyExists); else it re-raises
                call = plan.throw(exc)
            else:
                call = plan.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _arun(client: AsyncClient, plan: _Plan[T]) -> T:
    try:
        call = next(plan)
        while True:
            try:
                result = await getattr(client, call.method)(*call.args, **call.kwargs)
            except Exception as exc:
                call = plan.throw(exc)
            else:
                call = plan.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


# -- namespaces as text ---------------------------------------------------------------------


def encode_namespace(namespace: Sequence[str]) -> str:
    """A namespace tuple -> the ``ns`` text: order and prefixes as the tuples'."""
    return "".join(label.replace("\x01", "\x01\x02") + "\x01\x01" for label in namespace)


def decode_namespace(text: str) -> tuple[str, ...]:
    """The ``ns`` text -> the namespace tuple."""
    labels: list[str] = []
    label: list[str] = []
    chars = iter(text)
    for char in chars:
        if char != "\x01":
            label.append(char)
        elif next(chars) == "\x02":
            label.append("\x01")
        else:
            labels.append("".join(label))
            label = []
    return tuple(labels)


def _after_subtree(prefix: str) -> str:
    """The least text above every text that starts with ``prefix`` (an encoded namespace)."""
    return prefix[:-1] + "\x02"


def _under(namespace: Sequence[str]) -> list[tuple[str, str, str]]:
    """Filters keeping the rows of ``namespace`` and of the namespaces below it."""
    if not namespace:
        return []
    # A range, not the daemon's "prefix" operator: that one ends below U+10FFFF.
    text = encode_namespace(namespace)
    return [("ns", "ge", text), ("ns", "lt", _after_subtree(text))]


# -- LangGraph's matching rules (as InMemoryStore applies them) ------------------------------


def _matches(value: Mapping[str, Any], filter: Mapping[str, Any] | None) -> bool:
    return not filter or all(_compare(value.get(k), v) for k, v in filter.items())


def _compare(item_value: Any, filter_value: Any) -> bool:
    if isinstance(filter_value, dict):
        if any(k.startswith("$") for k in filter_value):
            return all(_operator(item_value, op, operand) for op, operand in filter_value.items())
        if not isinstance(item_value, dict):
            return False
        return all(_compare(item_value.get(k), v) for k, v in filter_value.items())
    if isinstance(filter_value, list | tuple):
        return (isinstance(item_value, list | tuple) and len(item_value) == len(filter_value)
                and all(_compare(i, f) for i, f in zip(item_value, filter_value, strict=True)))
    return bool(item_value == filter_value)


def _operator(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    if operator not in ("$gt", "$gte", "$lt", "$lte"):
        raise ValueError(f"Unsupported operator: {operator}")
    try:
        left, right = float(value), float(operand)
    except (TypeError, ValueError):
        return False  # InMemoryStore raises here: no item can match
    return {"$gt": left > right, "$gte": left >= right, "$lt": left < right,
            "$lte": left <= right}[operator]


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"Unsupported match type: {condition.match_type}")
    return all(p == "*" or k == p for k, p in pairs)


# -- the store ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _expiry(now: datetime, ttl: float | None) -> datetime:
    return NEVER if ttl is None else min(now + timedelta(minutes=ttl), NEVER)


def _live(now: datetime) -> tuple[str, str, datetime]:
    return ("expires_at", "gt", now)


def _item_key(namespace: Sequence[str], key: str) -> str:
    return json.dumps([list(namespace), key], ensure_ascii=False, separators=(",", ":"))


def _to_item(row: Mapping[str, Any]) -> Item:
    namespace, key = json.loads(row["item"])
    return Item(namespace=tuple(namespace), key=key, value=row["value"],
                created_at=row["created_at"], updated_at=row["updated_at"])


def _to_search_item(row: Mapping[str, Any]) -> SearchItem:
    namespace, key = json.loads(row["item"])
    return SearchItem(namespace=tuple(namespace), key=key, value=row["value"],
                      created_at=row["created_at"], updated_at=row["updated_at"])


class JarvisStore(BaseStore):
    """A LangGraph BaseStore whose items live in a jarvis-memory daemon.

    All items live in the daemon namespace ``namespace``; ``token`` and ``client_options``
    (timeout, tls, ca_file, ...) are the SDK Client's. ``ttl`` is LangGraph's TTLConfig
    (``default_ttl`` in minutes, ``refresh_on_read``). Both ``batch`` and ``abatch`` work:
    the async side opens its own AsyncClient in the running event loop on first use (use one
    loop per store, and ``await aclose()`` in it).
    """

    supports_ttl = True

    def __init__(
        self, target: str, *, namespace: str = "langgraph", token: str | None = None,
        ttl: TTLConfig | None = None, **client_options: Any,
    ) -> None:
        self.namespace = namespace
        self.ttl_config = ttl
        self._options: dict[str, Any] = {"namespace": namespace, "token": token,
                                         **client_options}
        self._target = target
        self.client = Client(target, **self._options)
        self._async: tuple[asyncio.AbstractEventLoop, AsyncClient] | None = None
        self._ready = False

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sync client's channel."""
        self.client.close()

    async def aclose(self) -> None:
        """Close both clients (call it in the event loop the async side used)."""
        self.client.close()
        if self._async is not None:
            _, client = self._async
            self._async = None
            await client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def _async_client(self) -> AsyncClient:
        # A grpc.aio channel belongs to the loop it was opened in.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, AsyncClient(self._target, **self._options))
        return self._async[1]

    # -- BaseStore --------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the operations: reads first, then the puts (the last per item), as LangGraph's."""
        return _run(self.client, self._batch(ops))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the operations, as batch does, on the async client."""
        return await _arun(self._async_client(), self._batch(ops))

    def sweep_ttl(self) -> int:
        """Delete the expired items; return how many (reads skip them anyway)."""
        return _run(self.client, self._sweep())

    async def asweep_ttl(self) -> int:
        """Delete the expired items, as sweep_ttl does, on the async client."""
        return await _arun(self._async_client(), self._sweep())

    # -- plans ------------------------------------------------------------------------------

    def _sweep(self) -> _Plan[int]:
        yield from self._ensure_collection()
        deleted: int = yield _Call("delete_rows", (COLLECTION,),
                                   {"where": [("expires_at", "le", _now())]})
        return deleted

    def _ensure_collection(self) -> _Plan[None]:
        if self._ready:
            return
        with contextlib.suppress(AlreadyExists):  # another store made it
            yield _Call("create_collection", (COLLECTION,), {"fields": FIELDS})
        self._ready = True

    def _batch(self, ops: Iterable[Op]) -> _Plan[list[Result]]:
        ops = list(ops)
        for op in ops:
            if not isinstance(op, GetOp | PutOp | SearchOp | ListNamespacesOp):
                raise ValueError(f"Unknown operation type: {type(op)}")
            validate_op_namespace(op)
        yield from self._ensure_collection()
        results: list[Result] = [None] * len(ops)
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            found = yield from self._get([op for _, op in gets])
            for (i, _), item in zip(gets, found, strict=True):
                results[i] = item
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                results[i] = yield from self._search(op)
            elif isinstance(op, ListNamespacesOp):
                results[i] = yield from self._list_namespaces(op)
            elif isinstance(op, PutOp):
                puts[(tuple(op.namespace), op.key)] = op
        for op in puts.values():
            if op.value is None:
                yield _Call("delete_rows", (COLLECTION,),
                            {"where": [("item", "eq", _item_key(op.namespace, op.key))]})
            else:
                yield from self._put(op)
        return results

    def _get(self, ops: list[GetOp]) -> _Plan[list[Item | None]]:
        now = _now()
        keys = list({_item_key(op.namespace, op.key) for op in ops})
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), _MAX_IN):
            chunk = keys[start:start + _MAX_IN]
            page = yield _Call("query_rows", (COLLECTION,), {
                "where": [("item", "in", chunk), _live(now)], "page_size": len(chunk)})
            rows.update((row["item"], row) for row in page)
        refresh = [rows[k] for k in {_item_key(op.namespace, op.key) for op in ops
                                     if op.refresh_ttl} if k in rows]
        yield from self._refresh(refresh, now)
        return [(_to_item(rows[k]) if (k := _item_key(op.namespace, op.key)) in rows else None)
                for op in ops]

    def _refresh(self, rows: list[dict[str, Any]], now: datetime) -> _Plan[None]:
        """Restart the TTL of the rows that have one (one update per distinct TTL)."""
        by_ttl: dict[float, list[str]] = {}
        for row in rows:
            if row.get("ttl") is not None:
                by_ttl.setdefault(row["ttl"], []).append(row["item"])
        for ttl, items in by_ttl.items():
            for start in range(0, len(items), _MAX_IN):
                yield _Call("update_rows", (COLLECTION,), {
                    "set": {"expires_at": _expiry(now, ttl)},
                    "where": [("item", "in", items[start:start + _MAX_IN]), _live(now)]})

    def _search(self, op: SearchOp) -> _Plan[list[SearchItem]]:
        now = _now()
        where = [*_under(op.namespace_prefix), _live(now)]
        # As InMemoryStore: stop at offset + limit, unless a negative bound needs them all.
        stop = op.offset + op.limit if min(op.offset, op.limit) >= 0 else None
        size = _PAGE if op.filter or stop is None else max(1, min(stop, 1000))
        found: list[dict[str, Any]] = []
        token = ""
        while stop is None or len(found) < stop:
            page = yield _Call("query_rows", (COLLECTION,), {
                "where": where, "order_by": ["ns_since", "ns", "id"], "page_size": size,
                "page_token": token})
            found.extend(row for row in page if _matches(row["value"], op.filter))
            token = page.next_page_token
            if not token:
                break
        rows = found[op.offset:op.offset + op.limit]
        if op.refresh_ttl:
            yield from self._refresh(rows, now)
        return [_to_search_item(row) for row in rows]

    def _list_namespaces(self, op: ListNamespacesOp) -> _Plan[list[tuple[str, ...]]]:
        now = _now()
        conditions = list(op.match_conditions or ())
        # The daemon narrows to the longest literal head of a prefix condition.
        head: tuple[str, ...] = ()
        for condition in conditions:
            if condition.match_type == "prefix":
                path = tuple(condition.path)
                literal = path[:path.index("*")] if "*" in path else path
                head = max(head, literal, key=len)
        base = [*_under(head), _live(now)]
        depth = op.max_depth
        stop = op.offset + op.limit if min(op.offset, op.limit) >= 0 else None
        found: list[tuple[str, ...]] = []
        after: tuple[str, str, str] | None = None
        # A skip scan, one row a step: ns order is tuple order, so the namespaces come sorted,
        # and a subtree shown truncated to max_depth is jumped over at once.
        while stop is None or len(found) < stop:
            where = [*base, after] if after else base
            page = yield _Call("query_rows", (COLLECTION,), {
                "where": where, "order_by": ["ns"], "page_size": 1})
            if not page:
                break
            namespace = decode_namespace(page[0]["ns"])
            matched = all(_does_match(c, namespace) for c in conditions)
            shown = namespace if depth is None else namespace[:depth]
            if matched and (not found or found[-1] != shown):
                found.append(shown)
            if matched and depth is not None and len(namespace) >= depth:
                after = ("ns", "ge", _after_subtree(encode_namespace(shown)))
            else:
                after = ("ns", "gt", encode_namespace(namespace))
        return found[op.offset:op.offset + op.limit]

    def _put(self, op: PutOp) -> _Plan[None]:
        item = _item_key(op.namespace, op.key)
        value = dict(op.value or {})
        ns = encode_namespace(op.namespace)
        for _ in range(_PUT_ATTEMPTS):
            now = _now()
            expires_at = _expiry(now, op.ttl)
            changed = yield _Call("update_rows", (COLLECTION,), {
                "set": {"value": value, "updated_at": now, "expires_at": expires_at,
                        "ttl": op.ttl},
                "where": [("item", "eq", item), _live(now)]})
            if changed:
                return
            # A new item: it joins its namespace's place in the search order, if it has one.
            peers = yield _Call("query_rows", (COLLECTION,), {
                "where": [("ns", "eq", ns), _live(now)], "page_size": 1})
            since = peers[0]["ns_since"] if peers else now
            try:
                yield _Call("insert_rows", (COLLECTION, [{
                    "item": item, "ns": ns, "ns_since": since, "value": value,
                    "created_at": now, "updated_at": now, "expires_at": expires_at,
                    "ttl": op.ttl}]))
                return
            except AlreadyExists:
                # An expired row still holds the key (drop it), or a racing put inserted it
                # first (the next update replaces its value).
                yield _Call("delete_rows", (COLLECTION,), {
                    "where": [("item", "eq", item), ("expires_at", "le", now)]})
        raise Aborted(f"could not put {op.key!r} in {op.namespace!r}: it kept changing")
