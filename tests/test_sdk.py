"""The Python SDK: async client, errors, retries, Python-native values."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime

import grpc
import pytest

from conftest import Daemon
from jarvis_memory import (
    NO_RETRY,
    AsyncClient,
    Client,
    InvalidArgument,
    JarvisMemoryError,
    NotFound,
    Page,
    RetryPolicy,
    Unavailable,
)


class CountingRetry(RetryPolicy):
    """Records each backoff it is asked for, without waiting long."""

    def __init__(self, max_attempts: int) -> None:
        super().__init__(max_attempts=max_attempts, initial_backoff=0.001, max_backoff=0.002)
        object.__setattr__(self, "asked", [])

    def backoff(self, attempt: int) -> float:
        self.asked.append(attempt)  # type: ignore[attr-defined]
        return super().backoff(attempt)


def unused_address() -> str:
    """An address where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_async_client_round_trip(daemon: Daemon, namespace: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(daemon.addr, namespace=namespace) as jm:
            m = await jm.add_memory("Async fact", category="fact", source="agent_inferred")
            again = await jm.add_memory("async FACT", category="fact", source="agent_inferred")
            assert again.id == m.id and again.deduplicated
            assert (await jm.get_memory(m.id)).content == "Async fact"
            batch = await jm.add_memories(
                [{"content": f"async batch {i}", "category": "pattern", "source": "user_explicit"}
                 for i in range(3)])
            assert [b.deduplicated for b in batch] == [False] * 3
            page = await jm.list_memories(page_size=2)
            assert isinstance(page, Page) and len(page) == 2 and page.next_page_token
            assert len([x async for x in jm.iter_memories(page_size=2)]) == 4
            updated = await jm.update_memory(m.id, subject="sdk")
            assert updated.subject == "sdk"
            await jm.delete_memory(m.id)
            with pytest.raises(NotFound):
                await jm.get_memory(m.id)

    asyncio.run(scenario())


def test_client_namespace_default_and_override(daemon: Daemon, namespace: str) -> None:
    with Client(daemon.addr, namespace=namespace) as jm:
        m = jm.add_memory("Namespaced", category="fact", source="user_explicit")
        assert m.namespace == namespace
        with pytest.raises(NotFound):
            jm.get_memory(m.id, namespace="default")


def test_values_are_python_native(jm: Client, namespace: str) -> None:
    m = jm.add_memory("Native values", category="FACT", source="MEMORY_SOURCE_USER_EXPLICIT",
                      namespace=namespace, attributes={"tags": ["a", "b"], "nested": {"ok": True}})
    assert isinstance(m.created_at, datetime) and m.created_at.tzinfo is not None
    assert m.attributes == {"tags": ["a", "b"], "nested": {"ok": True}}
    assert (m.category, m.source) == ("fact", "user_explicit")


def test_errors_keep_code_message_and_reason(jm: Client) -> None:
    with pytest.raises(NotFound) as info:
        jm.get_memory(123456789)
    error = info.value
    assert isinstance(error, JarvisMemoryError)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "MEMORY_NOT_FOUND"
    assert error.metadata == {"namespace": "default", "id": "123456789"}
    assert "123456789" in str(error)


def test_unknown_enum_names_fail_before_sending(jm: Client) -> None:
    with pytest.raises(ValueError, match="category: 'opinion' is not one of"):
        jm.add_memory("x", category="opinion", source="user_explicit")


def test_server_side_validation_surfaces_as_invalid_argument(jm: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        jm.add_memory("   ", category="fact", source="user_explicit")
    assert info.value.metadata["field"] == "content"


def test_idempotent_calls_retry_unavailable() -> None:
    policy = CountingRetry(max_attempts=4)
    with Client(unused_address(), retry=policy, timeout=10) as jm, pytest.raises(Unavailable):
        jm.get_memory(1)
    assert policy.asked == [1, 2, 3]  # type: ignore[attr-defined]


def test_unsafe_calls_are_not_retried() -> None:
    policy = CountingRetry(max_attempts=4)
    with Client(unused_address(), retry=policy, timeout=10) as jm, pytest.raises(Unavailable):
        jm.delete_memory(1)
    assert policy.asked == []  # type: ignore[attr-defined]


def test_retry_can_be_switched_off() -> None:
    with Client(unused_address(), retry=NO_RETRY) as jm, pytest.raises(Unavailable):
        jm.list_memories()
