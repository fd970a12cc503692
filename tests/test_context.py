"""AssembleContext: sections and one text within a token budget, cut in a documented order."""

from __future__ import annotations

import grpc
import pytest

from conftest import Daemon, Stubs
from jarvis.memory.v1 import context_pb2
from jarvis_memory import Client, InvalidArgument, NotFound

ORDER = ["preferences", "memories", "messages", "events", "state"]


def estimate(text: str) -> int:
    """The documented measure: ceil(UTF-8 bytes / 4) per line, its newline included."""
    return sum((len(line.encode()) + 1 + 3) // 4 for line in text.split("\n")) if text else 0


def fill(jm: Client, namespace: str) -> str:
    """One item of every section, of similar sizes; return the session's id."""
    ns = {"namespace": namespace}
    jm.set_preference("briefing_time", "07:30 every weekday morning", **ns)
    jm.add_memory("Has a standup at nine every morning", category="fact",
                  source="user_explicit", subject="work", **ns)
    session = jm.start_session(**ns)
    jm.append_message(session.id, role="user", content="What is on my morning plate?", **ns)
    jm.record_event(type="alert", severity="error", source="monitor", node="pve1",
                    summary="Backup of the morning job failed", **ns)
    jm.put_state("planner/morning", {"step": 3, "of": 7}, **ns)
    return session.id


def test_the_issue_example(jm: Client, namespace: str) -> None:
    ns = {"namespace": namespace}
    session_id = fill(jm, namespace)
    jm.add_memory("Prefers espresso after lunch", category="preference",
                  source="user_explicit", **ns)
    ctx = jm.assemble_context("plan my morning", session_id=session_id, max_tokens=1500,
                              state_keys=["planner/morning", "planner/missing"], **ns)
    assert [s.name for s in ctx.sections] == ORDER
    assert ctx.text.startswith("## Preferences\n- briefing_time: \"07:30 every weekday morning\"")
    assert "- Has a standup at nine every morning (fact, work)" in ctx.text
    assert "- user: What is on my morning plate?" in ctx.text
    assert "- [error] pve1: Backup of the morning job failed" in ctx.text
    assert '- planner/morning: {"step":3,"of":7}' in ctx.text
    assert "espresso" not in ctx.text  # does not match the query
    assert ctx.tokens == estimate(ctx.text) <= 1500 and not ctx.truncated
    memories = ctx.sections[1]
    assert len(memories.items) == 1 and memories.items[0].score > 0
    assert all(s.omitted == 0 for s in ctx.sections)


def test_the_text_never_exceeds_the_budget_and_state_goes_first(
        jm: Client, namespace: str) -> None:
    session_id = fill(jm, namespace)
    full = jm.assemble_context("morning", session_id=session_id, state_keys=["planner/morning"],
                               namespace=namespace)
    assert [s.name for s in full.sections] == ORDER
    seen = []
    for budget in range(full.tokens, 15, -1):
        ctx = jm.assemble_context("morning", session_id=session_id, max_tokens=budget,
                                  state_keys=["planner/morning"], namespace=namespace)
        assert estimate(ctx.text) <= ctx.tokens <= budget
        present = [s.name for s in ctx.sections if s.items]
        assert present == ORDER[:len(present)], f"at {budget} tokens: {present}"
        assert ctx.truncated == (len(present) < len(ORDER))
        if present not in seen:
            seen.append(present)
    # Every section was dropped in turn, state first and preferences last.
    assert seen == [ORDER[:n] for n in range(len(ORDER), 0, -1)]


def test_recent_messages_newest_kept_read_oldest_first(jm: Client, namespace: str) -> None:
    session = jm.start_session(namespace=namespace)
    for i in range(40):
        jm.append_message(session.id, role="user" if i % 2 == 0 else "assistant",
                          content=f"message number {i:02d}", namespace=namespace)
    ctx = jm.assemble_context(session_id=session.id, sections=["messages"], max_tokens=60,
                              namespace=namespace)
    (messages,) = ctx.sections
    texts = [i.text for i in messages.items]
    numbers = [int(t.rsplit(" ", 1)[1]) for t in texts]
    assert numbers == sorted(numbers) and numbers[-1] == 39  # the newest, oldest first
    assert messages.omitted == 30 - len(numbers)  # 30 candidates read
    assert ctx.truncated


def test_only_current_memories_and_long_items_are_cut(jm: Client, namespace: str) -> None:
    ns = {"namespace": namespace}
    old = jm.add_memory("Lives in Porto", category="fact", source="user_explicit", **ns)
    jm.update_memory(old.id, stale=True, **ns)
    jm.add_memory("Lives in Lisbon " + "and likes the tram " * 200, category="fact",
                  source="user_explicit", **ns)
    ctx = jm.assemble_context("where does the user live", sections=["memories"],
                              max_tokens=100, **ns)
    (memories,) = ctx.sections
    assert len(memories.items) == 1 and "Porto" not in ctx.text
    item = memories.items[0]
    assert item.text.startswith("Lives in Lisbon") and item.text.endswith("…")
    assert len(item.text.encode()) <= 100 and ctx.truncated and ctx.tokens <= 100


def test_vector_and_hybrid_ranking(jm: Client, namespace: str) -> None:
    ns = {"namespace": namespace}
    near = jm.add_memory("Cycles to work", category="fact", source="user_explicit",
                         embedding=[1.0, 0.0], **ns)
    jm.add_memory("Takes the bus", category="fact", source="user_explicit",
                  embedding=[0.0, 1.0], **ns)
    ctx = jm.assemble_context(embedding=[0.9, 0.1], sections=["memories"], **ns)
    assert ctx.sections[0].items[0].key == str(near.id)
    hybrid = jm.assemble_context("bus", embedding=[0.9, 0.1], sections=["memories"], **ns)
    assert {i.key for i in hybrid.sections[0].items} >= {str(near.id)}


def test_bad_requests(jm: Client, namespace: str, stubs: Stubs) -> None:
    with pytest.raises(NotFound):
        jm.assemble_context("x", session_id="no-such-session", namespace=namespace)
    for budget in (5, 100_001, -1):
        with pytest.raises(InvalidArgument, match="max_tokens"):
            jm.assemble_context("x", max_tokens=budget, namespace=namespace)
    with pytest.raises(InvalidArgument, match="sections"):
        jm.assemble_context("x", sections=["gossip"], namespace=namespace)  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="state_keys"):
        jm.assemble_context("x", state_keys=[f"k{i}" for i in range(51)], namespace=namespace)
    with pytest.raises(grpc.RpcError) as info:
        stubs.context.AssembleContext(context_pb2.AssembleContextRequest(
            namespace=namespace, query="x", sections=[9]))  # type: ignore[list-item]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sections[0]" in str(info.value.details())
    empty = jm.assemble_context("nothing here", namespace=namespace)
    assert empty.text == "" and empty.sections == [] and empty.tokens == 0


def test_the_async_client_too(daemon: Daemon, namespace: str) -> None:
    import asyncio

    from jarvis_memory import AsyncClient

    async def scenario() -> str:
        async with AsyncClient(daemon.addr, namespace=namespace) as jm:
            await jm.set_preference("tz", "Europe/Lisbon")
            return (await jm.assemble_context("anything")).text

    assert asyncio.run(scenario()) == '## Preferences\n- tz: "Europe/Lisbon"'
