"""MemoryService through the SDK (happy paths) and the raw stubs (status codes and ErrorInfo)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from jarvis.memory.v1 import memory_pb2, memory_pb2_grpc
from jarvis_memory import AlreadyExists, Client, InvalidArgument, NotFound

FACT = memory_pb2.MEMORY_CATEGORY_FACT
USER = memory_pb2.MEMORY_SOURCE_USER_EXPLICIT


def add(jm: Client, content: str, namespace: str, **kwargs: object):  # type: ignore[no-untyped-def]
    kwargs.setdefault("category", "fact")
    kwargs.setdefault("source", "user_explicit")
    return jm.add_memory(content, namespace=namespace, **kwargs)  # type: ignore[arg-type]


def rpc_error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def error_reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the server sent no google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "jarvis-memory"
    return info.reason


# -- add and dedup ----------------------------------------------------------------------------


def test_add_returns_the_stored_memory(jm: Client, namespace: str) -> None:
    before = datetime.now(UTC)
    m = add(jm, "Allergic to peanuts", namespace, subject="health",
            attributes={"severity": "high", "since": 2019})
    assert m.id > 0 and not m.deduplicated
    assert (m.namespace, m.content, m.category, m.source) == (
        namespace, "Allergic to peanuts", "fact", "user_explicit")
    assert m.subject == "health"
    assert m.attributes == {"severity": "high", "since": 2019.0}
    assert m.stale is False and m.restated_count == 0 and m.last_accessed_at is None
    assert before - timedelta(seconds=5) <= m.created_at <= datetime.now(UTC)
    assert m.created_at == m.updated_at
    assert len(m.content_hash) == 64
    assert m.revision > 0
    assert jm.get_memory(m.id, namespace=namespace) == m


@pytest.mark.parametrize(
    "restated",
    [
        "Prefers espresso after lunch",
        "  prefers ESPRESSO after lunch ",
        "prefers\tespresso\n\nafter   lunch",
        "PREFERS ESPRESSO AFTER LUNCH",
    ],
)
def test_restating_returns_the_same_memory(jm: Client, namespace: str, restated: str) -> None:
    first = add(jm, "Prefers espresso after lunch", namespace, category="preference")
    again = add(jm, restated, namespace, category="pattern", source="agent_inferred")
    assert again.id == first.id and again.deduplicated
    assert again.content == "Prefers espresso after lunch"  # the first statement is kept
    assert again.category == "preference"
    assert again.restated_count == 1
    assert again.last_accessed_at is not None and again.last_accessed_at >= first.created_at
    assert again.revision > first.revision
    assert len(jm.list_memories(namespace=namespace)) == 1


def test_normalisation_uses_nfc_and_casefold(jm: Client, namespace: str) -> None:
    composed = add(jm, "Caf\u00e9 on Stra\u00dfe", namespace)
    decomposed = add(jm, "CAFE\u0301 ON STRASSE", namespace)
    assert decomposed.id == composed.id and decomposed.deduplicated


def test_different_content_is_a_different_memory(jm: Client, namespace: str) -> None:
    a = add(jm, "Likes tea", namespace)
    b = add(jm, "Likes teas", namespace)
    assert a.id != b.id and not b.deduplicated


def test_same_content_in_two_namespaces_is_two_memories(jm: Client, namespace: str) -> None:
    a = add(jm, "Lives in Lisbon", namespace + "-a")
    b = add(jm, "Lives in Lisbon", namespace + "-b")
    assert a.id != b.id and not b.deduplicated
    with pytest.raises(NotFound):
        jm.get_memory(a.id, namespace=namespace + "-b")


def test_restating_a_stale_memory_makes_it_current(jm: Client, namespace: str) -> None:
    m = add(jm, "Works at Acme", namespace)
    assert jm.update_memory(m.id, namespace=namespace, stale=True).stale
    again = add(jm, "works at acme", namespace)
    assert again.deduplicated and not again.stale


def test_empty_namespace_means_default(jm: Client) -> None:
    m = jm.add_memory("Default namespace fact", category="fact", source="user_explicit")
    assert m.namespace == "default"
    assert jm.get_memory(m.id, namespace="default").id == m.id


# -- batch --------------------------------------------------------------------------------------


def test_add_memories_dedups_inside_the_batch_and_against_stored(jm: Client, namespace: str) -> None:
    stored = add(jm, "Has a cat named Miso", namespace)
    results = jm.add_memories(
        [
            {"content": "Drinks oat milk", "category": "preference", "source": "user_explicit"},
            {"content": "drinks OAT milk", "category": "preference", "source": "user_explicit"},
            {"content": "has a cat named miso", "category": "fact", "source": "agent_inferred"},
            {"content": "Runs on Sundays", "category": "pattern", "source": "agent_inferred",
             "subject": "sport"},
        ],
        namespace=namespace,
    )
    assert [r.deduplicated for r in results] == [False, True, True, False]
    assert results[0].id == results[1].id
    assert results[2].id == stored.id and results[2].restated_count == 1
    assert results[1].restated_count == 1
    assert results[3].subject == "sport"
    assert len(jm.list_memories(namespace=namespace)) == 3


def test_add_memories_is_all_or_nothing(jm: Client, namespace: str, stub) -> None:  # type: ignore[no-untyped-def]
    batch = [memory_pb2.NewMemory(content=f"fact {i}", category=FACT, source=USER) for i in range(5)]
    batch.append(memory_pb2.NewMemory(content="   ", category=FACT, source=USER))
    error = rpc_error(stub.AddMemories, memory_pb2.AddMemoriesRequest(namespace=namespace, memories=batch))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "memories[5].content" in error.details()
    assert jm.list_memories(namespace=namespace) == []


def test_add_memories_limits(stub, namespace: str) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(stub.AddMemories, memory_pb2.AddMemoriesRequest(namespace=namespace))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at least one" in error.details()
    too_many = [memory_pb2.NewMemory(content=f"m{i}", category=FACT, source=USER) for i in range(1001)]
    error = rpc_error(stub.AddMemories, memory_pb2.AddMemoriesRequest(namespace=namespace, memories=too_many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "1000" in error.details()


def test_add_memories_accepts_a_full_batch(jm: Client, namespace: str) -> None:
    batch = [{"content": f"batch fact number {i}", "category": "fact", "source": "user_explicit"}
             for i in range(1000)]
    results = jm.add_memories(batch, namespace=namespace)
    assert len({r.id for r in results}) == 1000
    revisions = [r.revision for r in results]
    assert revisions == sorted(revisions) and len(set(revisions)) == 1000


# -- update and delete ------------------------------------------------------------------------


def test_update_changes_only_the_masked_fields(jm: Client, namespace: str) -> None:
    m = add(jm, "Commutes by bike", namespace, subject="travel", attributes={"km": 12})
    updated = jm.update_memory(m.id, namespace=namespace, content="Commutes by train",
                               category="pattern", stale=True)
    assert (updated.content, updated.category, updated.stale) == ("Commutes by train", "pattern", True)
    assert (updated.subject, updated.attributes, updated.source) == ("travel", {"km": 12.0}, "user_explicit")
    assert updated.updated_at >= m.updated_at and updated.revision > m.revision
    assert updated.content_hash != m.content_hash
    # The new content now deduplicates; the old one no longer does.
    assert add(jm, "commutes BY train", namespace).id == m.id
    assert add(jm, "Commutes by bike", namespace).id != m.id


def test_update_can_clear_attributes_and_subject(jm: Client, namespace: str) -> None:
    m = add(jm, "Plays chess", namespace, subject="hobby", attributes={"elo": 1500})
    updated = jm.update_memory(m.id, namespace=namespace, attributes=None, subject="")
    assert updated.attributes is None and updated.subject == ""


def test_update_to_another_memorys_content_is_already_exists(jm: Client, namespace: str) -> None:
    a = add(jm, "Speaks Portuguese", namespace)
    b = add(jm, "Speaks Spanish", namespace)
    with pytest.raises(AlreadyExists) as info:
        jm.update_memory(b.id, namespace=namespace, content="  speaks portuguese")
    assert info.value.reason == "MEMORY_CONTENT_EXISTS"
    assert jm.get_memory(b.id, namespace=namespace).content == "Speaks Spanish"
    assert jm.get_memory(a.id, namespace=namespace) == a


def test_update_with_own_content_reformatted_is_fine(jm: Client, namespace: str) -> None:
    m = add(jm, "Owns a kayak", namespace)
    assert jm.update_memory(m.id, namespace=namespace, content="Owns a Kayak").content == "Owns a Kayak"


def test_delete(jm: Client, namespace: str) -> None:
    m = add(jm, "Temporary fact", namespace)
    jm.delete_memory(m.id, namespace=namespace)
    with pytest.raises(NotFound):
        jm.get_memory(m.id, namespace=namespace)
    with pytest.raises(NotFound):
        jm.delete_memory(m.id, namespace=namespace)
    # The content can be stated again and gets a new id (ids are never reused).
    again = add(jm, "Temporary fact", namespace)
    assert again.id > m.id and not again.deduplicated


# -- list ----------------------------------------------------------------------------------------


def test_list_newest_first_with_pages(jm: Client, namespace: str) -> None:
    ids = [add(jm, f"numbered fact {i}", namespace).id for i in range(7)]
    page1 = jm.list_memories(namespace=namespace, page_size=3)
    page2 = jm.list_memories(namespace=namespace, page_size=3, page_token=page1.next_page_token)
    page3 = jm.list_memories(namespace=namespace, page_size=3, page_token=page2.next_page_token)
    assert [m.id for m in page1 + page2 + page3] == ids[::-1]
    assert page3.next_page_token == ""
    assert [m.id for m in jm.iter_memories(namespace=namespace, page_size=2)] == ids[::-1]


def test_page_tokens_stay_correct_while_others_insert(jm: Client, namespace: str) -> None:
    ids = [add(jm, f"stable fact {i}", namespace).id for i in range(10)]
    seen: list[int] = []
    token = ""
    inserted = 0
    while True:
        page = jm.list_memories(namespace=namespace, page_size=3, page_token=token)
        seen += [m.id for m in page]
        add(jm, f"inserted while paging {inserted}", namespace)  # newer than every page
        inserted += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]


def test_list_filters(jm: Client, namespace: str) -> None:
    a = add(jm, "Likes jazz", namespace, category="preference", subject="music")
    b = add(jm, "Plays guitar on Fridays", namespace, category="pattern", source="agent_inferred",
            subject="music")
    c = add(jm, "Born in Porto", namespace, category="fact")
    jm.update_memory(c.id, namespace=namespace, stale=True)

    def ids(**filters: object) -> list[int]:
        return [m.id for m in jm.list_memories(namespace=namespace, **filters)]  # type: ignore[arg-type]

    assert ids() == [c.id, b.id, a.id]
    assert ids(category="preference") == [a.id]
    assert ids(source="agent_inferred") == [b.id]
    assert ids(subject="music") == [b.id, a.id]
    assert ids(subject="") == [c.id]
    assert ids(stale=True) == [c.id]
    assert ids(stale=False, subject="music", category="pattern") == [b.id]
    assert ids(created_after=b.created_at) == [c.id, b.id]
    assert ids(created_before=b.created_at) == [a.id]
    assert ids(created_after=c.created_at + timedelta(seconds=1)) == []


def test_page_token_is_bound_to_its_filters(jm: Client, namespace: str) -> None:
    for i in range(3):
        add(jm, f"token fact {i}", namespace)
    page = jm.list_memories(namespace=namespace, page_size=1)
    with pytest.raises(InvalidArgument) as info:
        jm.list_memories(namespace=namespace, page_size=1, page_token=page.next_page_token,
                         category="fact")
    assert "different" in info.value.message
    with pytest.raises(InvalidArgument):
        jm.list_memories(namespace=namespace + "-other", page_token=page.next_page_token)


def test_page_size_is_capped(jm: Client, namespace: str) -> None:
    jm.add_memories([{"content": f"cap {i}", "category": "fact", "source": "user_explicit"}
                     for i in range(1000)], namespace=namespace)
    add(jm, "one more", namespace)
    page = jm.list_memories(namespace=namespace, page_size=5000)
    assert len(page) == 1000 and page.next_page_token
    assert len(jm.list_memories(namespace=namespace)) == 50


# -- bad input, through the raw stubs -------------------------------------------------------------


def _struct(**kwargs: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kwargs)
    return s


BAD_ADDS = [
    (dict(content="", category=FACT, source=USER), "content", "INVALID_ARGUMENT"),
    (dict(content=" \n\t ", category=FACT, source=USER), "content", "INVALID_ARGUMENT"),
    (dict(content="x" * 65537, category=FACT, source=USER), "65536", "INVALID_ARGUMENT"),
    (dict(content="ok", source=USER), "category: is required", "INVALID_ARGUMENT"),
    (dict(content="ok", category=42, source=USER), "42 is not a known MemoryCategory", "INVALID_ARGUMENT"),
    (dict(content="ok", category=FACT), "source: is required", "INVALID_ARGUMENT"),
    (dict(content="ok", category=FACT, source=7), "7 is not a known MemorySource", "INVALID_ARGUMENT"),
    (dict(content="ok", category=FACT, source=USER, subject="s" * 257), "subject", "INVALID_ARGUMENT"),
    (dict(content="ok", category=FACT, source=USER, attributes=_struct(blob="a" * 70000)),
     "attributes", "INVALID_ARGUMENT"),
    (dict(content="ok", category=FACT, source=USER, namespace="bad namespace!"),
     "namespace", "INVALID_ARGUMENT"),
    (dict(content="ok", category=FACT, source=USER, namespace="n" * 129), "namespace", "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(("fields", "message", "reason"), BAD_ADDS,
                         ids=[f"{i}-{case[1][:20]}" for i, case in enumerate(BAD_ADDS)])
def test_add_memory_rejects_bad_input(stub, fields, message, reason) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(stub.AddMemory, memory_pb2.AddMemoryRequest(**fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()
    assert error_reason(error) == reason


@pytest.mark.parametrize("memory_id", [0, -5])
def test_non_positive_ids_are_invalid(stub, memory_id: int) -> None:  # type: ignore[no-untyped-def]
    for call, request in [
        (stub.GetMemory, memory_pb2.GetMemoryRequest(id=memory_id)),
        (stub.DeleteMemory, memory_pb2.DeleteMemoryRequest(id=memory_id)),
        (stub.UpdateMemory, memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=memory_id, stale=True),
            update_mask=field_mask_pb2.FieldMask(paths=["stale"]))),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "id" in error.details()


def test_unknown_ids_are_not_found(stub) -> None:  # type: ignore[no-untyped-def]
    for call, request in [
        (stub.GetMemory, memory_pb2.GetMemoryRequest(id=10**12)),
        (stub.DeleteMemory, memory_pb2.DeleteMemoryRequest(id=10**12)),
        (stub.UpdateMemory, memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=10**12, stale=True),
            update_mask=field_mask_pb2.FieldMask(paths=["stale"]))),
    ]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert str(10**12) in error.details()
        assert error_reason(error) == "MEMORY_NOT_FOUND"


def test_update_mask_is_validated(stub, jm: Client, namespace: str) -> None:  # type: ignore[no-untyped-def]
    m = add(jm, "Mask target", namespace)
    cases = [
        ([], "at least one"),
        (["id"], "'id' is not an updatable field"),
        (["created_at"], "not an updatable field"),
        (["category"], "category: is required"),
    ]
    for paths, message in cases:
        error = rpc_error(stub.UpdateMemory, memory_pb2.UpdateMemoryRequest(
            namespace=namespace, memory=memory_pb2.Memory(id=m.id),
            update_mask=field_mask_pb2.FieldMask(paths=paths)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
        assert message in error.details(), paths
    error = rpc_error(stub.UpdateMemory, memory_pb2.UpdateMemoryRequest(
        namespace=namespace, memory=memory_pb2.Memory(id=m.id, content=""),
        update_mask=field_mask_pb2.FieldMask(paths=["content"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "content" in error.details()
    assert jm.get_memory(m.id, namespace=namespace) == m


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        (dict(page_size=-1), "page_size: must not be negative"),
        (dict(page_token="not-a-token"), "page_token"),
        (dict(page_token="eyJjIjoxfQ"), "page_token"),  # valid base64 JSON, wrong shape
        (dict(category=9), "category"),
        (dict(source=9), "source"),
        (dict(namespace="white space"), "namespace"),
        (dict(created_after=timestamp_pb2.Timestamp(seconds=1, nanos=-1)), "created_after"),
    ],
)
def test_list_rejects_bad_input(stub, request_fields, message) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(stub.ListMemories, memory_pb2.ListMemoriesRequest(**request_fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_oversized_message_is_resource_exhausted(daemon) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(daemon.addr, options=[("grpc.max_send_message_length", -1)]) as ch:
        error = rpc_error(memory_pb2_grpc.MemoryServiceStub(ch).AddMemory,
                          memory_pb2.AddMemoryRequest(content="x" * (17 * 1024 * 1024),
                                                      category=FACT, source=USER))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- concurrency -------------------------------------------------------------------------------


def test_fifty_clients_adding_the_same_fact_make_one_memory(daemon, namespace: str) -> None:  # type: ignore[no-untyped-def]
    clients = [daemon.client() for _ in range(50)]
    barrier = threading.Barrier(50)
    results = [None] * 50

    def restate(i: int) -> None:
        barrier.wait()
        variants = ["The wifi password is hunter2", "  THE WIFI   password is hunter2 "]
        results[i] = clients[i].add_memory(variants[i % 2], category="fact",
                                           source="user_explicit", namespace=namespace)

    threads = [threading.Thread(target=restate, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    ids = {r.id for r in results}  # type: ignore[attr-defined]
    assert len(ids) == 1
    assert sum(not r.deduplicated for r in results) == 1  # type: ignore[attr-defined]
    with daemon.client() as jm:
        stored = jm.list_memories(namespace=namespace)
        assert len(stored) == 1 and stored[0].restated_count == 49


def test_response_headers_carry_the_store_revision(stub, namespace: str) -> None:  # type: ignore[no-untyped-def]
    added = stub.AddMemory(memory_pb2.AddMemoryRequest(namespace=namespace, content="rev one",
                                                       category=FACT, source=USER))
    assert added.header.revision == added.memory.revision > 0
    again = stub.AddMemory(memory_pb2.AddMemoryRequest(namespace=namespace, content="REV ONE",
                                                       category=FACT, source=USER))
    assert again.header.revision == again.memory.revision > added.header.revision
    got = stub.GetMemory(memory_pb2.GetMemoryRequest(namespace=namespace, id=added.memory.id))
    assert got.header.revision >= again.header.revision
    deleted = stub.DeleteMemory(memory_pb2.DeleteMemoryRequest(namespace=namespace, id=added.memory.id))
    assert deleted.header.revision > again.header.revision
    listed = stub.ListMemories(memory_pb2.ListMemoriesRequest(namespace=namespace))
    assert listed.header.revision >= deleted.header.revision and not listed.memories
