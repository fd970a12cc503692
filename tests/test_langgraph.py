"""jarvis_memory.langgraph.JarvisStore: LangGraph's BaseStore on a real daemon.

The core is differential: one sequence of operations runs on LangGraph's own InMemoryStore and
on a JarvisStore, and every result must agree (namespace, key, value, and order where the
interface defines it).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from conftest import Daemon
from jarvis_memory.langgraph import (
    COLLECTION,
    NEVER,
    JarvisStore,
    decode_namespace,
    encode_namespace,
)

_stores = itertools.count()


class Reference(InMemoryStore):
    """InMemoryStore, but a namespace without items is forgotten after each batch.

    InMemoryStore keeps every namespace it ever saw (a get creates one) in list_namespaces and
    in the search order; JarvisStore knows only the namespaces that hold items (documented).
    """

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results = super().batch(ops)
        self._forget_empty()
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        results = await super().abatch(ops)
        self._forget_empty()
        return results

    def _forget_empty(self) -> None:
        for namespace in [ns for ns, items in self._data.items() if not items]:
            del self._data[namespace]


@pytest.fixture
def store(daemon: Daemon, namespace: str) -> Iterator[JarvisStore]:
    with JarvisStore(daemon.addr, namespace=namespace) as s:
        yield s


def new_store(daemon: Daemon) -> JarvisStore:
    """A store in a daemon namespace of its own (for hypothesis, which runs many per test)."""
    return JarvisStore(daemon.addr, namespace=f"lg-{next(_stores)}")


# -- the differential harness ---------------------------------------------------------------


def shape(result: Any) -> Any:
    """What must agree: items as (namespace, key, value); lists in order."""
    if isinstance(result, Item):
        return (result.namespace, result.key, result.value)
    if isinstance(result, list):
        return [shape(r) for r in result]
    return result


def run_both(reference: BaseStore, store: BaseStore, op: tuple[Any, ...]) -> None:
    """Apply one operation (a BaseStore method and its arguments) to both; compare."""
    name, args, kwargs = op
    expected = getattr(reference, name)(*args, **kwargs)
    got = getattr(store, name)(*args, **kwargs)
    assert shape(got) == shape(expected), op
    if isinstance(got, list) and got and isinstance(got[0], Item):
        for item in got:
            assert isinstance(item, SearchItem) and item.score is None


def put(ns: tuple[str, ...], key: str, value: dict[str, Any]) -> tuple[Any, ...]:
    return ("put", (ns, key, value), {})


def delete(ns: tuple[str, ...], key: str) -> tuple[Any, ...]:
    return ("delete", (ns, key), {})


def get(ns: tuple[str, ...], key: str) -> tuple[Any, ...]:
    return ("get", (ns, key), {})


def search(prefix: tuple[str, ...], **kwargs: Any) -> tuple[Any, ...]:
    return ("search", (prefix,), kwargs)


def namespaces(**kwargs: Any) -> tuple[Any, ...]:
    return ("list_namespaces", (), kwargs)


ALICE, BOB = ("alice", "memories"), ("bob", "memories")
# Labels whose tuple order differs from the order of "label." text ("a-" < "a.b" as text),
# and a label holding the \x01 that JarvisStore's encoding escapes.
SCENARIO = [
    put(ALICE, "m1", {"text": "likes espresso", "n": 3, "tag": "x"}),
    put(BOB, "m1", {"text": "likes tea", "n": 1, "tag": "y"}),
    put(("alice",), "profile", {"name": "Alice", "n": 7, "meta": {"city": "Oslo", "age": 30}}),
    put(("a", "b"), "k", {"n": 2, "list": [1, 2]}),
    put(("a-",), "k", {"n": 5, "list": [1, 2, 3]}),
    put(("a", "b", "c"), "k", {"n": 4.5}),
    put(("x\x01y", "z"), "k", {"n": 0}),
    put(("x",), "k", {"n": -1}),
    put(ALICE, "m2", {"text": "drinks coffee daily", "n": 8, "tag": "x"}),
    put(ALICE, "m3", {"text": "hates mornings", "n": 2, "tag": "z"}),
    get(ALICE, "m1"), get(ALICE, "nope"), get(("nowhere",), "m1"),
    search(("alice",), query="coffee", limit=5),
    search(()),
    search(("a",)), search(("a-",)), search(("x",)), search(("x\x01y",)),
    search((), filter={"tag": "x"}),
    search((), filter={"n": {"$gt": 2}}),
    search((), filter={"n": {"$gte": 2, "$lt": 5}}),
    search((), filter={"n": {"$lte": 0}}),
    search((), filter={"tag": {"$ne": "x"}}),
    search((), filter={"tag": {"$eq": "y"}}),
    search((), filter={"meta": {"city": "Oslo"}}),
    search((), filter={"list": [1, 2]}),
    search((), filter={"n": 3, "tag": "x"}),
    search((), limit=3), search((), limit=3, offset=2), search((), offset=20),
    search((), filter={"n": {"$gt": 0}}, limit=2, offset=1),
    # Overwrites keep an item's place; a delete and a put again moves it last.
    put(ALICE, "m1", {"text": "likes ristretto", "n": 9, "tag": "y"}),
    search(ALICE),
    delete(ALICE, "m2"), put(ALICE, "m2", {"text": "back", "n": 1}),
    search(ALICE), get(ALICE, "m2"),
    delete(ALICE, "never-there"),
    namespaces(),
    namespaces(prefix=("a",)), namespaces(prefix=("alice",)), namespaces(prefix=("x\x01y",)),
    namespaces(suffix=("memories",)), namespaces(suffix=("b", "c")),
    namespaces(prefix=("*", "memories")), namespaces(suffix=("*",)),
    namespaces(prefix=("alice",), suffix=("memories",)),
    namespaces(max_depth=1), namespaces(max_depth=2), namespaces(prefix=("a",), max_depth=1),
    namespaces(suffix=("c",), max_depth=1),
    namespaces(limit=2), namespaces(limit=2, offset=2), namespaces(max_depth=1, limit=2, offset=1),
    # Emptying a namespace drops it from the listing.
    delete(("x",), "k"), namespaces(), search(()),
    put(("x",), "k", {"n": 10}), namespaces(), search(()),
    put(("unicodé", "ü"), "ключ", {"emoji": "🚀", "n": 1}), get(("unicodé", "ü"), "ключ"),
    put(("k",), "", {"empty key": True, "n": 0}), get(("k",), ""),
    put(("k",), "a.b\x00", {"n": 0}), get(("k",), "a.b\x00"),
    search(()), namespaces(),
]


def test_a_fixed_rich_sequence_agrees_with_in_memory_store(store: JarvisStore) -> None:
    reference = Reference()
    for op in SCENARIO:
        run_both(reference, store, op)


LABELS = st.sampled_from(["a", "b", "a-", "a b", "x\x01", "é", "Z"])
NAMESPACES = st.lists(LABELS, min_size=1, max_size=3).map(tuple)
KEYS = st.sampled_from(["k1", "k2", "k3", "", "a.b"])
# "n" is always a number: InMemoryStore raises on $gt and friends over a missing field.
VALUES = st.fixed_dictionaries(
    {"n": st.one_of(st.integers(-3, 3), st.floats(-3, 3, allow_nan=False))},
    optional={"tag": st.sampled_from(["x", "y"]), "sub": st.fixed_dictionaries(
        {"c": st.integers(0, 1)}), "lst": st.lists(st.integers(0, 1), max_size=2)},
)
FILTERS = st.sampled_from([
    None, {"tag": "x"}, {"tag": {"$ne": "x"}}, {"tag": {"$eq": "y"}}, {"n": 1},
    {"n": {"$gt": 0}}, {"n": {"$gte": 1, "$lt": 3}}, {"n": {"$lte": -1}}, {"sub": {"c": 1}},
    {"lst": [0, 1]}, {"n": {"$ne": 0}, "tag": "y"},
])
PATHS = st.lists(st.one_of(LABELS, st.just("*")), min_size=1, max_size=2).map(tuple)
OPS = st.one_of(
    st.builds(put, NAMESPACES, KEYS, VALUES),
    st.builds(put, NAMESPACES, KEYS, VALUES),
    st.builds(delete, NAMESPACES, KEYS),
    st.builds(get, NAMESPACES, KEYS),
    st.builds(lambda prefix, f, limit, offset: search(prefix, filter=f, limit=limit,
                                                      offset=offset),
              st.lists(LABELS, max_size=2).map(tuple), FILTERS, st.integers(1, 6),
              st.integers(0, 3)),
    st.builds(lambda prefix, suffix, depth, limit, offset: namespaces(
        prefix=prefix, suffix=suffix, max_depth=depth, limit=limit, offset=offset),
        st.none() | PATHS, st.none() | PATHS, st.none() | st.integers(1, 3),
        st.integers(1, 8), st.integers(0, 3)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=30))
def test_random_sequences_agree_with_in_memory_store(daemon: Daemon, ops: list[Any]) -> None:
    reference = Reference()
    with new_store(daemon) as store:
        for op in ops:
            run_both(reference, store, op)
        run_both(reference, store, search((), limit=1000))
        run_both(reference, store, namespaces(limit=1000))


def test_a_batch_reads_before_it_writes_and_keeps_the_last_put(store: JarvisStore) -> None:
    reference = Reference()
    ns = ("batch",)
    # (ListNamespacesOp before GetOp: InMemoryStore lists a namespace once a get read it.)
    ops: list[Op] = [
        PutOp(ns, "a", {"v": 1}), ListNamespacesOp(), GetOp(ns, "a"), PutOp(ns, "b", {"v": 2}),
        PutOp(ns, "a", {"v": 3}), SearchOp(ns), PutOp(ns, "c", {"v": 4}), PutOp(ns, "c", None),
    ]
    assert shape(store.batch(ops)) == shape(reference.batch(ops)) == [
        None, [], None, None, None, [], None, None]
    ops = [GetOp(ns, "a"), GetOp(ns, "b"), GetOp(ns, "c"), SearchOp(ns), ListNamespacesOp()]
    assert shape(store.batch(ops)) == shape(reference.batch(ops))
    assert [item.value for item in store.search(ns)] == [{"v": 3}, {"v": 2}]


def test_the_async_side_agrees_with_in_memory_store(daemon: Daemon, namespace: str) -> None:
    async def scenario() -> None:
        reference = Reference()
        async with JarvisStore(daemon.addr, namespace=namespace) as store:
            for name, args, kwargs in SCENARIO:
                expected = await getattr(reference, "a" + name)(*args, **kwargs)
                got = await getattr(store, "a" + name)(*args, **kwargs)
                assert shape(got) == shape(expected), (name, args, kwargs)
            ops: list[Op] = [GetOp(ALICE, "m1"), SearchOp(("a",), limit=2), ListNamespacesOp()]
            assert shape(await store.abatch(ops)) == shape(await reference.abatch(ops))

    asyncio.run(scenario())


def test_the_issue_example(daemon: Daemon, namespace: str) -> None:
    store = JarvisStore(daemon.addr, namespace=namespace)
    assert isinstance(store, BaseStore)
    store.put(("alice", "memories"), "m1", {"text": "likes espresso"})
    found = store.search(("alice",), query="coffee", limit=5)
    assert [(r.namespace, r.key, r.value, r.score) for r in found] == [
        (("alice", "memories"), "m1", {"text": "likes espresso"}, None)]
    # Another store on the same daemon namespace sees it; another namespace does not.
    with JarvisStore(daemon.addr, namespace=namespace) as again:
        item = again.get(("alice", "memories"), "m1")
        assert item is not None and item.value == {"text": "likes espresso"}
    with JarvisStore(daemon.addr, namespace=namespace + "-other") as other:
        assert other.get(("alice", "memories"), "m1") is None
        assert other.list_namespaces() == []
    store.close()


def test_items_carry_aware_times_and_a_put_keeps_created_at(store: JarvisStore) -> None:
    before = datetime.now(UTC)
    store.put(("t",), "k", {"v": 1})
    first = store.get(("t",), "k")
    assert first is not None
    assert first.created_at.tzinfo is not None and first.updated_at.tzinfo is not None
    assert before - timedelta(seconds=5) <= first.created_at <= datetime.now(UTC)
    assert first.created_at == first.updated_at
    store.put(("t",), "k", {"v": 2})
    second = store.get(("t",), "k")
    assert second is not None and second.value == {"v": 2}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    [hit] = store.search(("t",))
    assert (hit.created_at, hit.updated_at) == (second.created_at, second.updated_at)
    assert hit.dict()["created_at"] == second.created_at.isoformat()


def test_bad_namespaces_are_refused_even_in_a_raw_batch(store: JarvisStore) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.put(("a.b",), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        store.put(("langgraph",), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(("a.b",), "k", {"v": 1})])
    with pytest.raises(InvalidNamespaceError):
        store.batch([SearchOp(("a", ""))])
    with pytest.raises(InvalidNamespaceError):
        store.batch([ListNamespacesOp((MatchCondition("prefix", ("a.b",)),))])
    store.put(("a",), "k", {"v": 1})
    with pytest.raises(ValueError, match="Unsupported operator"):
        store.search(("a",), filter={"v": {"$in": [1]}})
    assert store.list_namespaces() == [("a",)]


def test_an_order_filter_on_a_value_that_is_no_number_matches_nothing(
        store: JarvisStore) -> None:
    # InMemoryStore raises TypeError or ValueError here (a documented difference).
    store.put(("o",), "text", {"n": "abc"})
    store.put(("o",), "none", {"m": 1})
    store.put(("o",), "numeric text", {"n": "5"})
    assert [i.key for i in store.search(("o",), filter={"n": {"$gt": 1}})] == ["numeric text"]
    assert store.search(("o",), filter={"n": {"$lte": "x"}}) == []
    assert [i.key for i in store.search(("o",), filter={"n": {"$ne": "abc"}})] == [
        "none", "numeric text"]


def test_the_namespace_encoding_keeps_tuple_order_and_prefixes() -> None:
    labels = ["a", "a-", "a b", "a\x01", "a\x01b", "\x01", "\x02", "ab", "é", "\U0010ffff"]
    tuples = [t for n in (1, 2) for t in itertools.product(labels, repeat=n)]
    for t in tuples:
        assert decode_namespace(encode_namespace(t)) == t
    assert sorted(tuples) == sorted(tuples, key=encode_namespace)
    for t in tuples:
        for u in tuples:
            assert encode_namespace(u).startswith(encode_namespace(t)) == (u[:len(t)] == t)


# -- TTL: InMemoryStore has none, so it is checked here on its own -------------------------


def stored_row(store: JarvisStore, ns: tuple[str, ...], key: str) -> dict[str, Any]:
    [row] = [r for r in store.client.iter_rows(COLLECTION)
             if decode_namespace(r["ns"]) == ns and r["item"].endswith(f'"{key}"]')]
    return row


def test_an_elapsed_ttl_reads_as_absent_and_a_put_starts_afresh(store: JarvisStore) -> None:
    assert store.supports_ttl
    store.put(("t",), "kept", {"v": 0})
    store.put(("t",), "gone", {"v": 1}, ttl=0)  # expires at once
    store.put(("u",), "gone", {"v": 1}, ttl=-1)
    assert store.get(("t",), "gone") is None
    assert [i.key for i in store.search(("t",))] == ["kept"]
    assert store.list_namespaces() == [("t",)]
    old = stored_row(store, ("t",), "gone")
    store.put(("t",), "gone", {"v": 2})  # the expired row is replaced, not updated
    item = store.get(("t",), "gone")
    assert item is not None and item.value == {"v": 2}
    assert item.created_at > old["created_at"]
    assert stored_row(store, ("t",), "gone")["expires_at"] == NEVER
    assert store.sweep_ttl() == 1  # ("u",) "gone"
    assert store.sweep_ttl() == 0
    assert [i.key for i in store.search(())] == ["kept", "gone"]


def test_reads_refresh_a_ttl_unless_told_not_to(store: JarvisStore) -> None:
    ns = ("ttl",)
    store.put(ns, "k", {"v": 1}, ttl=10)
    store.put(ns, "forever", {"v": 2})
    row = stored_row(store, ns, "k")
    assert row["ttl"] == 10
    assert abs(row["expires_at"] - (row["updated_at"] + timedelta(minutes=10))) < timedelta(
        seconds=1)

    def shorten() -> datetime:
        soon = datetime.now(UTC) + timedelta(minutes=1)
        store.client.update_rows(COLLECTION, set={"expires_at": soon},
                                 where=[("id", "eq", row["id"])])
        return soon

    soon = shorten()
    assert store.get(ns, "k", refresh_ttl=False) is not None
    assert store.search(ns, refresh_ttl=False)
    assert stored_row(store, ns, "k")["expires_at"] == soon
    assert store.get(ns, "k") is not None
    assert stored_row(store, ns, "k")["expires_at"] > soon + timedelta(minutes=8)
    shorten()
    assert len(store.search(ns)) == 2
    assert stored_row(store, ns, "k")["expires_at"] > soon + timedelta(minutes=8)
    assert stored_row(store, ns, "forever")["expires_at"] == NEVER
    # A put without ttl makes the item permanent again.
    store.put(ns, "k", {"v": 3})
    assert stored_row(store, ns, "k")["expires_at"] == NEVER


def test_a_default_ttl_from_the_config(daemon: Daemon, namespace: str) -> None:
    with JarvisStore(daemon.addr, namespace=namespace,
                     ttl={"default_ttl": 5, "refresh_on_read": False}) as store:
        store.put(("d",), "k", {"v": 1})
        row = stored_row(store, ("d",), "k")
        assert row["ttl"] == 5
        store.get(("d",), "k")  # refresh_on_read False: left as it was
        assert stored_row(store, ("d",), "k")["expires_at"] == row["expires_at"]
        store.put(("d",), "k", {"v": 1}, ttl=None)
        assert stored_row(store, ("d",), "k")["expires_at"] == NEVER


def test_racing_puts_of_one_new_key_leave_one_item(daemon: Daemon, namespace: str) -> None:
    stores = [JarvisStore(daemon.addr, namespace=namespace) for _ in range(6)]
    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(lambda i: stores[i].put(("race",), "k", {"v": i}), range(len(stores))))
        rows = list(stores[0].client.iter_rows(COLLECTION))
        assert len(rows) == 1
        item = stores[0].get(("race",), "k")
        assert item is not None and item.value["v"] in range(len(stores))
    finally:
        for store in stores:
            store.close()
