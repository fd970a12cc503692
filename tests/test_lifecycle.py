"""The memory lifecycle through the SDK: supersession, validity (as_of), history, expiry,
forgetting for good, and recency in search ranking.

Every test runs on a real daemon. Expiry is observed by polling with a deadline (never by
sleeping a fixed time): a short ttl, then a loop until the memory reads as absent.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from conftest import Collector, Daemon
from jarvis.memory.v1 import memory_pb2, memory_pb2_grpc
from jarvis_memory import (
    Change,
    Client,
    FailedPrecondition,
    ForgetReport,
    InvalidArgument,
    Memory,
    MemoryHit,
    NotFound,
    RetryPolicy,
    Unavailable,
)
from jarvis_memory_server.service.auth import sign_jwt

JWT_SECRET = "lifecycle-test-jwt-secret"
DEADLINE = 10.0  # seconds within which an expired memory must read as absent
PURGE_DEADLINE = 60.0  # seconds within which the daemon must purge it
SLACK = timedelta(seconds=2)  # between the test's clock and the daemon's stamps


@pytest.fixture
def jm(daemon: Daemon, namespace: str) -> Iterator[Client]:
    """A client of the module's daemon whose calls go to the test's own namespace."""
    with daemon.client(namespace=namespace) as client:
        yield client


def add(jm: Client, content: str, **fields: object) -> Memory:
    fields.setdefault("category", "fact")
    fields.setdefault("source", "user_explicit")
    return jm.add_memory(content, **fields)  # type: ignore[arg-type]


def ids(items: list[Memory] | list[MemoryHit]) -> list[int]:
    return [i.memory.id if isinstance(i, MemoryHit) else i.id for i in items]


def contents(items: list[Memory] | list[MemoryHit]) -> list[str]:
    return [i.memory.content if isinstance(i, MemoryHit) else i.content for i in items]


def near(when: datetime | None, expected: datetime, slack: timedelta = SLACK) -> bool:
    return when is not None and abs(when - expected) <= slack


def same_time(when: datetime | None, expected: datetime) -> bool:
    """Equal, allowing a daemon that keeps timestamps to the millisecond."""
    return near(when, expected, timedelta(milliseconds=1))


def poll(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Check ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def absent(jm: Client, memory_id: int) -> bool:
    try:
        jm.get_memory(memory_id)
    except NotFound:
        return True
    return False


def wait_until_absent(jm: Client, memory_id: int) -> None:
    poll(lambda: absent(jm, memory_id), f"memory {memory_id} never read as absent")


def changes_until(watcher: Collector, marker: Memory) -> list[Change]:
    """The watched changes before ``marker``'s create (a write made after the ones tested)."""
    def seen() -> bool:
        return any(c.kind == "memory" and c.key == str(marker.id) for c in watcher.changes)

    poll(seen, "the marker's change never arrived", 30)
    changes = watcher.wait_for(1)
    return changes[:next(i for i, c in enumerate(changes) if c.key == str(marker.id))]


# -- the contract, as written ---------------------------------------------------------------


def test_the_lifecycle_snippet_runs_as_written(jm: Client) -> None:
    old = jm.add_memory("Works at Acme", category="fact", source="user_explicit", subject="user")
    before_the_change = datetime.now(UTC)
    new = jm.add_memory("Works at Globex", category="fact", source="user_explicit",
                        subject="user", supersedes=[old.id])
    assert [h.memory.content for h in jm.search_memories("where does the user work")] == [
        "Works at Globex"]
    assert [h.memory.content for h in jm.search_memories("where does the user work",
                                                         as_of=before_the_change)] == [
        "Works at Acme"]
    assert jm.get_memory(old.id).superseded_by == new.id
    jm.update_memory(new.id, content="Works at Globex (remote)")
    assert [v.memory.content for v in jm.get_memory_history(new.id)] == [
        "Works at Globex", "Works at Globex (remote)"]

    flight = jm.add_memory("Flight BA117 leaves 9:40", category="fact", source="jarvis_inferred",
                           ttl=timedelta(days=2))
    assert flight.source == "agent_inferred"  # the alias is accepted, the API's name returned
    assert near(flight.expires_at, flight.created_at + timedelta(days=2))
    hotel = jm.add_memory("Hotel Avenida for three nights", category="fact",
                          source="user_explicit", subject="trip")
    report = jm.forget_memories(subject="trip", dry_run=True)
    assert report == ForgetReport(count=1, ids=[hotel.id], dry_run=True)
    assert jm.get_memory(hotel.id) == hotel  # nothing changed
    assert jm.forget_memories(subject="trip") == ForgetReport(1, [hotel.id], False)
    with pytest.raises(NotFound):
        jm.get_memory(hotel.id)
    assert jm.get_memory(flight.id).content == "Flight BA117 leaves 9:40"


def test_jarvis_inferred_is_an_alias_wherever_a_source_is_given(jm: Client) -> None:
    inferred = add(jm, "Usually skips breakfast", source="JARVIS_INFERRED")
    batch = jm.add_memories([{"content": "Reads before bed", "category": "pattern",
                              "source": "jarvis_inferred"}])
    told = add(jm, "Owns a bicycle")
    assert {inferred.source, batch[0].source} == {"agent_inferred"}
    assert jm.update_memory(told.id, source="jarvis_inferred").source == "agent_inferred"
    assert set(ids(jm.list_memories(source="jarvis_inferred"))) == {
        inferred.id, batch[0].id, told.id}
    assert ids(jm.search_memories("bicycle", source="jarvis_inferred")) == [told.id]
    report = jm.forget_memories(source="jarvis_inferred", dry_run=True)
    assert report.ids == sorted([inferred.id, batch[0].id, told.id])


# -- supersession ---------------------------------------------------------------------------


def test_superseding_replaces_the_old_memory(jm: Client) -> None:
    old = add(jm, "Lives in Paris", subject="home", valid_to=datetime.now(UTC) + timedelta(days=30))
    assert (old.superseded_by, old.superseded_at, old.supersedes) == (None, None, [])
    before = datetime.now(UTC)
    new = add(jm, "Lives in Lyon", subject="home", supersedes=[old.id])
    after = datetime.now(UTC)
    assert new.supersedes == [old.id]
    assert (new.superseded_by, new.superseded_at, new.valid_to) == (None, None, None)

    replaced = jm.get_memory(old.id)  # a superseded memory is still there by id
    assert replaced.superseded_by == new.id
    assert replaced.superseded_at is not None
    assert before - SLACK <= replaced.superseded_at <= after + SLACK
    # Its validity ends when it was superseded (the later valid_to it had is brought forward).
    assert near(replaced.valid_to, replaced.superseded_at, timedelta(seconds=1))
    assert replaced.revision > old.revision
    assert replaced.content == old.content and replaced.subject == "home"

    assert ids(jm.list_memories()) == [new.id]
    assert ids(jm.list_memories(include_superseded=True)) == [new.id, old.id]
    assert [m.id for m in jm.iter_memories(include_superseded=True, page_size=1)] == [
        new.id, old.id]
    assert ids(jm.list_memories(subject="home")) == [new.id]
    assert ids(jm.search_memories("lives")) == [new.id]
    assert set(ids(jm.search_memories("lives", include_superseded=True))) == {new.id, old.id}
    assert ids(jm.search_memories("paris")) == []
    assert ids(jm.search_memories("paris", include_superseded=True)) == [old.id]


def test_a_watcher_sees_a_supersession_as_one_create_and_one_update(jm: Client) -> None:
    old = add(jm, "Commutes by bus", subject="commute")
    watcher = Collector(jm, kinds=["memory"], start_revision=old.revision + 1)
    new = add(jm, "Commutes by bike", subject="commute", supersedes=[old.id])
    created, replaced = watcher.wait_for(2)
    assert (created.operation, created.key, created.revision) == ("create", str(new.id),
                                                                  new.revision)
    assert isinstance(created.resource, Memory) and created.resource.supersedes == [old.id]
    # The same transaction: the old memory's change is the next revision.
    assert (replaced.operation, replaced.key, replaced.revision) == ("update", str(old.id),
                                                                     new.revision + 1)
    assert isinstance(replaced.resource, Memory)
    assert replaced.resource.superseded_by == new.id
    assert replaced.resource == jm.get_memory(old.id)


def test_a_chain_of_supersessions_can_be_followed_both_ways(jm: Client) -> None:
    a = add(jm, "Drives a Fiat", subject="car")
    b = add(jm, "Drives a Volvo", subject="car", supersedes=[a.id])
    c = add(jm, "Drives a Tesla", subject="car", supersedes=[b.id])

    forward, m = [a.id], jm.get_memory(a.id)
    while m.superseded_by is not None:
        m = jm.get_memory(m.superseded_by)
        forward.append(m.id)
    assert forward == [a.id, b.id, c.id]

    backward, m = [c.id], jm.get_memory(c.id)
    while m.supersedes:
        (previous,) = m.supersedes
        m = jm.get_memory(previous)
        backward.append(m.id)
    assert backward == [c.id, b.id, a.id]

    assert ids(jm.list_memories(subject="car")) == [c.id]
    assert ids(jm.list_memories(subject="car", include_superseded=True)) == [c.id, b.id, a.id]


def test_one_memory_can_supersede_several(jm: Client) -> None:
    first = add(jm, "Prefers window seats")
    second = add(jm, "Prefers aisle seats on short flights")
    merged = add(jm, "Prefers aisle seats", supersedes=[second.id, first.id])
    assert merged.supersedes == [second.id, first.id]  # in the order given
    assert {jm.get_memory(i).superseded_by for i in (first.id, second.id)} == {merged.id}
    assert ids(jm.list_memories()) == [merged.id]


def test_bad_supersessions_are_refused_and_change_nothing(
    jm: Client, daemon: Daemon, namespace: str
) -> None:
    a = add(jm, "Phone is a Pixel 6")
    b = add(jm, "Phone is a Pixel 8", supersedes=[a.id])

    with pytest.raises(NotFound):
        add(jm, "Phone is a Pixel 9", supersedes=[10**15])
    with pytest.raises(FailedPrecondition):
        add(jm, "Phone is a Pixel 9", supersedes=[a.id])  # already superseded by b
    with pytest.raises(FailedPrecondition):
        add(jm, "Phone is a Pixel 9", supersedes=[b.id, a.id])  # one of them is
    with pytest.raises(InvalidArgument):
        jm.update_memory(b.id, supersedes=[b.id])  # itself
    with pytest.raises(InvalidArgument):
        add(jm, "phone is a PIXEL 8", supersedes=[b.id])  # restating b: b itself
    with daemon.client(namespace=namespace + "-other") as other:
        elsewhere = add(other, "Phone is an iPhone")
    with pytest.raises(NotFound):
        add(jm, "Phone is a Pixel 9", supersedes=[elsewhere.id])  # not in this namespace

    # Each refused write was one transaction: nothing of it was stored.
    assert contents(jm.list_memories(include_superseded=True)) == [
        "Phone is a Pixel 8", "Phone is a Pixel 6"]
    assert jm.get_memory(b.id).superseded_by is None
    assert jm.get_memory(a.id).superseded_by == b.id
    assert jm.get_memory(b.id).restated_count == 0


def test_add_memories_can_supersede(jm: Client) -> None:
    phone = add(jm, "Phone is a Pixel 6")
    laptop = add(jm, "Laptop is a ThinkPad")
    new = jm.add_memories([
        {"content": "Phone is a Pixel 9", "category": "fact", "source": "user_explicit",
         "supersedes": [phone.id]},
        {"content": "Laptop is a MacBook", "category": "fact", "source": "user_explicit",
         "supersedes": (laptop.id,), "valid_from": datetime(2024, 5, 1, tzinfo=UTC)},
    ])
    assert [m.supersedes for m in new] == [[phone.id], [laptop.id]]
    assert new[1].valid_from == datetime(2024, 5, 1, tzinfo=UTC)
    assert jm.get_memory(phone.id).superseded_by == new[0].id
    assert jm.get_memory(laptop.id).superseded_by == new[1].id
    assert set(ids(jm.list_memories())) == {new[0].id, new[1].id}

    # All or nothing: one bad supersession refuses the whole batch.
    with pytest.raises(NotFound):
        jm.add_memories([
            {"content": "Tablet is an iPad", "category": "fact", "source": "user_explicit"},
            {"content": "Phone is a Pixel 10", "category": "fact", "source": "user_explicit",
             "supersedes": [10**15]},
        ])
    assert len(jm.list_memories(include_superseded=True)) == 4
    assert jm.get_memory(new[0].id).superseded_by is None


def test_update_memory_can_supersede(jm: Client) -> None:
    a = add(jm, "Team lead is Priya")
    b = add(jm, "Team lead is Omar")
    only = jm.update_memory(b.id, supersedes=[a.id])  # supersedes alone, no field changes
    assert only.supersedes == [a.id] and only.content == b.content and only.subject == ""
    assert jm.get_memory(a.id).superseded_by == b.id

    c = add(jm, "Team lead will be Sara")
    both = jm.update_memory(c.id, content="Team lead is Sara", supersedes=[b.id])
    assert both.content == "Team lead is Sara" and both.supersedes == [b.id]
    assert jm.get_memory(b.id).superseded_by == c.id
    assert ids(jm.list_memories()) == [c.id]

    # A superseded memory cannot supersede others.
    d = add(jm, "Team lead was Joe")
    with pytest.raises((FailedPrecondition, InvalidArgument)):
        jm.update_memory(a.id, supersedes=[d.id])
    assert jm.get_memory(d.id).superseded_by is None


def test_restating_a_superseded_memory_makes_it_current_again(jm: Client) -> None:
    blue = add(jm, "Favourite colour is blue")
    green = add(jm, "Favourite colour is green", supersedes=[blue.id])
    assert ids(jm.list_memories()) == [green.id]
    again = add(jm, "favourite colour is BLUE")
    assert again.id == blue.id and again.deduplicated
    assert (again.superseded_by, again.superseded_at) == (None, None)
    current = jm.get_memory(blue.id)
    assert current.superseded_by is None and current.restated_count == 1
    assert set(ids(jm.list_memories())) == {blue.id, green.id}
    assert set(ids(jm.search_memories("colour"))) == {blue.id, green.id}
    # It can be superseded again, now that it is current.
    red = add(jm, "Favourite colour is red", supersedes=[blue.id])
    assert jm.get_memory(blue.id).superseded_by == red.id


# -- validity and as_of ---------------------------------------------------------------------


def test_as_of_returns_what_held_at_each_time(jm: Client) -> None:
    t0 = datetime.now(UTC)
    a = add(jm, "Coach is Ana", subject="coach")
    t1 = datetime.now(UTC)
    b = add(jm, "Coach is Ben", subject="coach", supersedes=[a.id])
    t2 = datetime.now(UTC)
    c = add(jm, "Coach is Cleo", subject="coach", supersedes=[b.id])
    t3 = datetime.now(UTC)

    for as_of, expected in ((t0, []), (t1, [a.id]), (t2, [b.id]), (t3, [c.id])):
        assert ids(jm.list_memories(as_of=as_of)) == expected, as_of
        assert ids(jm.search_memories("coach", as_of=as_of)) == expected, as_of
        assert ids(jm.list_memories(subject="coach", as_of=as_of)) == expected, as_of
    # Memories come back as they are now, whatever the as_of.
    (then,) = jm.list_memories(as_of=t1)
    assert then.superseded_by == b.id
    assert ids(jm.list_memories()) == [c.id]


def test_client_validity_in_the_past_and_the_future(jm: Client) -> None:
    now = datetime.now(UTC)
    future = add(jm, "Moves to Berlin", valid_from=now + timedelta(days=30))
    past = add(jm, "Lived in Rome", valid_from=now - timedelta(days=400),
               valid_to=now - timedelta(days=30))
    ongoing = add(jm, "Lives in Oslo", valid_from=now - timedelta(days=30))
    assert same_time(future.valid_from, now + timedelta(days=30)) and future.valid_to is None
    assert same_time(past.valid_from, now - timedelta(days=400))
    assert same_time(past.valid_to, now - timedelta(days=30))
    assert jm.get_memory(future.id) == future  # valid or not, a memory is there by id

    assert ids(jm.list_memories()) == [ongoing.id]
    assert ids(jm.list_memories(include_superseded=True)) == [ongoing.id, past.id, future.id]
    assert ids(jm.search_memories("lives moves lived")) == [ongoing.id]
    assert set(ids(jm.search_memories("lives moves lived", include_superseded=True))) == {
        future.id, past.id, ongoing.id}
    assert ids(jm.list_memories(as_of=now + timedelta(days=31))) == [ongoing.id, future.id]
    # 60 days ago none of them was recorded yet, whatever their validity says.
    assert ids(jm.list_memories(as_of=now - timedelta(days=60))) == []

    # The validity can change, or be cleared (None).
    moved = jm.update_memory(future.id, valid_from=now - timedelta(days=1))
    assert same_time(moved.valid_from, now - timedelta(days=1))
    assert set(ids(jm.list_memories())) == {ongoing.id, future.id}
    ended = jm.update_memory(ongoing.id, valid_to=now - timedelta(seconds=1))
    assert same_time(ended.valid_to, now - timedelta(seconds=1))
    assert ids(jm.list_memories()) == [future.id]
    reopened = jm.update_memory(past.id, valid_to=None, valid_from=None)
    assert (reopened.valid_from, reopened.valid_to) == (None, None)
    assert set(ids(jm.list_memories())) == {future.id, past.id}


def test_validity_must_end_after_it_begins(jm: Client) -> None:
    now = datetime.now(UTC)
    with pytest.raises(InvalidArgument):
        add(jm, "Backwards", valid_from=now, valid_to=now - timedelta(days=1))
    m = add(jm, "Forwards", valid_from=now)
    with pytest.raises(InvalidArgument):
        jm.update_memory(m.id, valid_to=now - timedelta(days=1))
    assert ids(jm.list_memories(include_superseded=True)) == [m.id]


# -- history --------------------------------------------------------------------------------


def test_history_keeps_every_version_oldest_first(jm: Client) -> None:
    m = add(jm, "Gym on Mondays", category="pattern")
    (created,) = jm.get_memory_history(m.id)
    assert created.operation == "create" and created.changed_fields == []
    assert created.memory == m and created.revision == m.revision
    assert near(created.time, m.created_at, timedelta(seconds=1))
    assert created.credential is None  # auth is off

    jm.update_memory(m.id, content="Gym on Tuesdays")
    jm.update_memory(m.id, stale=True)
    replacement = add(jm, "Gym on Wednesdays", category="pattern", supersedes=[m.id])

    history = jm.get_memory_history(m.id)
    assert [v.operation for v in history] == ["create", "update", "update", "supersede"]
    assert [v.memory.content for v in history] == [
        "Gym on Mondays", "Gym on Tuesdays", "Gym on Tuesdays", "Gym on Tuesdays"]
    assert [v.memory.stale for v in history] == [False, False, True, True]
    assert [v.memory.superseded_by for v in history] == [None, None, None, replacement.id]
    assert "content" in history[1].changed_fields and "stale" not in history[1].changed_fields
    assert history[2].changed_fields == ["stale"]
    assert "superseded_by" in history[3].changed_fields
    revisions = [v.revision for v in history]
    assert revisions == sorted(set(revisions))  # strictly increasing
    assert [v.time for v in history] == sorted(v.time for v in history)
    assert all(v.memory.id == m.id and v.memory.revision == v.revision for v in history)
    assert history[-1].memory == jm.get_memory(m.id)

    (made,) = jm.get_memory_history(replacement.id)
    assert made.operation == "create" and made.memory.supersedes == [m.id]


def test_history_of_a_restated_memory(jm: Client) -> None:
    m = add(jm, "Takes the 8:15 train")
    add(jm, "takes the 8:15 train")  # restated and nothing else: no new version
    assert [v.operation for v in jm.get_memory_history(m.id)] == ["create"]
    jm.update_memory(m.id, stale=True)
    add(jm, "Takes the 8:15 train")  # restating a stale memory makes it current: a version
    history = jm.get_memory_history(m.id)
    assert [v.operation for v in history] == ["create", "update", "restate"]
    assert history[-1].memory.stale is False and history[-1].memory.restated_count == 2


def test_history_comes_back_whole_across_pages(jm: Client) -> None:
    m = add(jm, "Flag toggled many times")
    for i in range(60):  # more versions than one page holds (50)
        jm.update_memory(m.id, stale=i % 2 == 0)
    history = jm.get_memory_history(m.id)
    assert len(history) == 61
    assert [v.operation for v in history] == ["create"] + ["update"] * 60
    assert [v.memory.stale for v in history[1:]] == [i % 2 == 0 for i in range(60)]
    assert [v.revision for v in history] == sorted({v.revision for v in history})


def test_history_of_an_unknown_or_deleted_memory_is_not_found(
    jm: Client, daemon: Daemon, namespace: str
) -> None:
    with pytest.raises(NotFound):
        jm.get_memory_history(10**15)
    m = add(jm, "Short-lived")
    jm.update_memory(m.id, content="Short-lived, edited")
    with daemon.client(namespace=namespace + "-other") as other, pytest.raises(NotFound):
        other.get_memory_history(m.id)
    jm.delete_memory(m.id)
    with pytest.raises(NotFound):
        jm.get_memory_history(m.id)


def create_token(db: Path | str, role: str, namespace: str) -> str:
    """An API token made by `jarvis-memory token create` (jmt_<id>_<secret>)."""
    result = subprocess.run(
        [sys.executable, "-m", "jarvis_memory_server", "token", "create", "--role", role,
         "--namespace", namespace, "--db", str(db)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_history_names_the_credential_of_each_change(db_target: Path | str) -> None:
    token = create_token(db_target, "writer", "lifecycle")
    token_id = token.split("_")[1]
    jwt = sign_jwt({"sub": "alice", "role": "writer", "namespaces": ["lifecycle"],
                    "exp": int(time.time() + 3600)}, JWT_SECRET.encode())
    daemon = Daemon(db_target, "--auth-cache-ttl", "0",
                    env={"JARVIS_MEMORY_JWT_SECRET": JWT_SECRET}).start()
    try:
        with daemon.client(token=token, namespace="lifecycle") as by_token, \
                daemon.client(token=jwt, namespace="lifecycle") as by_jwt:
            m = add(by_token, "Signed in with a token")
            by_jwt.update_memory(m.id, stale=True)
            history = by_jwt.get_memory_history(m.id)
        assert [v.operation for v in history] == ["create", "update"]
        assert history[0].credential is not None and token_id in history[0].credential
        assert history[1].credential is not None and "alice" in history[1].credential
        assert token not in (history[0].credential or "")  # a name, never the secret
    finally:
        assert daemon.stop() == 0, daemon.output


# -- expiry ---------------------------------------------------------------------------------


def test_a_memory_expires_after_its_ttl_and_is_purged(jm: Client) -> None:
    before = datetime.now(UTC)
    m = add(jm, "Parking spot 42 until noon", subject="parking", ttl=timedelta(seconds=1))
    assert m.expires_at is not None
    assert before + timedelta(seconds=1) - SLACK <= m.expires_at <= datetime.now(UTC) + SLACK
    assert near(m.expires_at, m.created_at + timedelta(seconds=1), timedelta(milliseconds=50))
    watcher = Collector(jm, kinds=["memory"], start_revision=m.revision + 1)
    assert jm.get_memory(m.id) == m  # well within its second

    wait_until_absent(jm, m.id)
    assert datetime.now(UTC) >= m.expires_at - timedelta(milliseconds=50)
    # Absent everywhere at once, purged or not yet.
    assert ids(jm.list_memories(include_superseded=True)) == []
    assert ids(jm.list_memories(subject="parking")) == []
    assert ids(jm.search_memories("parking spot", include_superseded=True)) == []
    assert ids(jm.list_memories(as_of=m.created_at + timedelta(milliseconds=1))) == []

    (purged,) = watcher.wait_for(1, timeout=PURGE_DEADLINE)
    assert (purged.kind, purged.key, purged.operation) == ("memory", str(m.id), "delete")
    assert purged.resource is None
    history = jm.get_memory_history(m.id)  # the versions of an expired memory stay readable
    assert [v.operation for v in history] == ["create", "expire"]
    assert history[-1].changed_fields == [] and history[-1].credential is None
    assert history[-1].memory.content == "Parking spot 42 until noon"
    assert history[-1].revision == purged.revision


def test_expires_at_on_add(jm: Client) -> None:
    at = datetime.now(UTC) + timedelta(milliseconds=500)
    m = add(jm, "Door code 4711 is valid this afternoon", expires_at=at)
    assert same_time(m.expires_at, at)
    wait_until_absent(jm, m.id)
    assert datetime.now(UTC) >= at - timedelta(milliseconds=50)
    assert ids(jm.search_memories("door code")) == []


def test_expiry_set_changed_and_cleared_by_update(jm: Client) -> None:
    m = add(jm, "Gate B12 for the flight home")
    assert m.expires_at is None
    day = jm.update_memory(m.id, ttl=timedelta(days=1))
    assert near(day.expires_at, day.updated_at + timedelta(days=1), timedelta(seconds=1))
    assert jm.update_memory(m.id, ttl=None).expires_at is None  # an unset ttl clears it
    at = datetime.now(UTC) + timedelta(hours=3)
    assert same_time(jm.update_memory(m.id, expires_at=at).expires_at, at)
    assert jm.update_memory(m.id, expires_at=None).expires_at is None
    assert [v.operation for v in jm.get_memory_history(m.id)] == ["create"] + ["update"] * 4

    # Restating sets the expiry given, and keeps it when none is given.
    again = add(jm, "Gate B12 for the flight home", ttl=timedelta(hours=1))
    assert again.id == m.id and near(again.expires_at, again.updated_at + timedelta(hours=1))
    kept = add(jm, "gate b12 for the flight home")
    assert kept.expires_at == again.expires_at

    soon = jm.update_memory(m.id, ttl=timedelta(milliseconds=300))
    assert soon.expires_at is not None
    wait_until_absent(jm, m.id)
    assert ids(jm.list_memories(include_superseded=True)) == []
    with pytest.raises(NotFound):
        jm.update_memory(m.id, ttl=timedelta(days=1))  # expired: it is gone for writes too


@pytest.mark.parametrize("fields", [
    {"ttl": timedelta(0)},
    {"ttl": timedelta(seconds=-5)},
    {"ttl": timedelta(days=365 * 101)},
    {"ttl": timedelta(days=1), "expires_at": datetime.now(UTC) + timedelta(days=1)},
    {"expires_at": datetime(2001, 1, 1, tzinfo=UTC)},
], ids=["zero ttl", "negative ttl", "ttl over 100 years", "ttl and expires_at",
        "expires_at in the past"])
def test_bad_expiry_is_invalid_argument(jm: Client, fields: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        add(jm, "Never stored", **fields)
    with pytest.raises(InvalidArgument):
        jm.add_memories([{"content": "Never stored", "category": "fact",
                          "source": "user_explicit", **fields}])
    m = add(jm, "Stored without expiry")
    with pytest.raises(InvalidArgument):
        jm.update_memory(m.id, **fields)  # type: ignore[arg-type]
    assert jm.get_memory(m.id).expires_at is None
    assert contents(jm.list_memories()) == ["Stored without expiry"]


def test_the_sdk_checks_lifecycle_argument_types_before_sending(jm: Client) -> None:
    bad: list[dict[str, object]] = [
        {"ttl": "2 days"}, {"expires_at": "tomorrow"}, {"valid_from": 1700000000},
        {"supersedes": 3}, {"supersedes": ["3"]}, {"supersedes": [True]},
    ]
    for fields in bad:
        with pytest.raises(InvalidArgument, match=next(iter(fields))):
            add(jm, "Never sent", **fields)
    with pytest.raises(InvalidArgument, match="include_superseded"):
        jm.list_memories(include_superseded=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="as_of"):
        jm.search_memories("x", as_of="yesterday")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="recency_weight"):
        jm.search_memories("x", recency_weight="high")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="memory_id"):
        jm.get_memory_history("1")  # type: ignore[arg-type]


# -- forgetting -----------------------------------------------------------------------------


def test_a_dry_run_reports_and_changes_nothing(jm: Client) -> None:
    flight = add(jm, "Flight to Lisbon on Friday", subject="trip")
    hotel = add(jm, "Hotel Avenida, three nights", subject="trip")
    newer = add(jm, "Hotel Baixa, three nights", subject="trip", supersedes=[hotel.id])
    other = add(jm, "Allergic to cats", subject="health")
    watcher = Collector(jm, kinds=["memory"], start_revision=other.revision + 1)

    report = jm.forget_memories(subject="trip", dry_run=True)
    assert report == ForgetReport(count=3, ids=sorted([flight.id, hotel.id, newer.id]),
                                  dry_run=True)
    assert jm.forget_memories(subject="nothing-has-it", dry_run=True) == ForgetReport(
        0, [], True)

    marker = add(jm, "Written after the dry run")
    assert changes_until(watcher, marker) == []  # the dry run wrote nothing
    assert len(jm.list_memories(include_superseded=True)) == 5
    for m in (flight, hotel, newer, other):
        assert jm.get_memory(m.id).content == m.content
        assert jm.get_memory_history(m.id)


def test_forget_erases_for_good(jm: Client) -> None:
    flight = add(jm, "Flight BA117 leaves 9:40", subject="trip")
    moved = add(jm, "Flight BA119 leaves 11:05", subject="trip", supersedes=[flight.id])
    edited = jm.update_memory(moved.id, content="Flight BA119 leaves 11:15")
    kept = add(jm, "Allergic to cats", subject="health")
    watcher = Collector(jm, kinds=["memory"], start_revision=kept.revision + 1)

    report = jm.forget_memories(subject="trip")
    assert report == ForgetReport(count=2, ids=sorted([flight.id, moved.id]), dry_run=False)
    for m in (flight, edited):
        with pytest.raises(NotFound):
            jm.get_memory(m.id)
        with pytest.raises(NotFound):
            jm.get_memory_history(m.id)
    assert ids(jm.search_memories("flight leaves", include_superseded=True)) == []
    assert ids(jm.list_memories(include_superseded=True)) == [kept.id]
    assert jm.get_memory(kept.id) == kept

    marker = add(jm, "Written after the forget")
    deletes = changes_until(watcher, marker)
    assert sorted(c.key for c in deletes) == sorted([str(flight.id), str(moved.id)])
    assert {(c.kind, c.operation) for c in deletes} == {("memory", "delete")}
    assert all(c.resource is None for c in deletes)
    assert jm.forget_memories(subject="trip") == ForgetReport(0, [], False)


def test_forget_needs_a_filter(
    jm: Client, stub: memory_pb2_grpc.MemoryServiceStub, namespace: str
) -> None:
    m = add(jm, "Must survive")
    for call in (lambda: jm.forget_memories(), lambda: jm.forget_memories(dry_run=True),
                 lambda: jm.forget_memories(ids=[])):
        with pytest.raises(InvalidArgument):
            call()
    # The daemon refuses too, whatever client asks.
    for request in (memory_pb2.ForgetMemoriesRequest(namespace=namespace),
                    memory_pb2.ForgetMemoriesRequest(namespace=namespace, dry_run=True)):
        with pytest.raises(grpc.RpcError) as info:
            stub.ForgetMemories(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert jm.get_memory(m.id) == m


def test_forget_by_ids_and_other_filters(jm: Client, daemon: Daemon, namespace: str) -> None:
    a = add(jm, "Note A")
    b = add(jm, "Note B", subject="work")
    c = add(jm, "Note C", category="preference")
    d = add(jm, "Note D", source="agent_inferred")
    with daemon.client(namespace=namespace + "-other") as other:
        elsewhere = add(other, "Note elsewhere")
        assert jm.forget_memories(ids=[elsewhere.id]) == ForgetReport(0, [], False)
        assert other.get_memory(elsewhere.id) == elsewhere  # another namespace is untouched
    assert jm.forget_memories(ids=[b.id], subject="home").count == 0  # filters AND
    assert jm.forget_memories(ids=[c.id, a.id, 10**15]) == ForgetReport(2, [a.id, c.id], False)
    assert set(ids(jm.list_memories())) == {b.id, d.id}
    assert jm.forget_memories(category="preference", dry_run=True).count == 0
    assert jm.forget_memories(source="agent_inferred", dry_run=True).ids == [d.id]
    assert jm.forget_memories(created_after=d.created_at, dry_run=True).ids == [d.id]
    assert jm.forget_memories(created_before=d.created_at, dry_run=True).ids == [b.id]
    jm.update_memory(b.id, stale=True)
    assert jm.forget_memories(stale=True) == ForgetReport(1, [b.id], False)
    assert ids(jm.list_memories()) == [d.id]


class CountingRetry(RetryPolicy):
    """Records each backoff it is asked for (a retry), without waiting long."""

    def __init__(self) -> None:
        super().__init__(max_attempts=4, initial_backoff=0.001, max_backoff=0.002)
        object.__setattr__(self, "asked", [])

    def backoff(self, attempt: int) -> float:
        self.asked.append(attempt)  # type: ignore[attr-defined]
        return super().backoff(attempt)


def test_forget_is_never_retried_and_history_is() -> None:
    with socket.socket() as s:  # an address where nothing listens
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    forget, history = CountingRetry(), CountingRetry()
    with Client(address, retry=forget, timeout=10) as jm, pytest.raises(Unavailable):
        jm.forget_memories(subject="trip")
    assert forget.asked == []  # type: ignore[attr-defined]
    with Client(address, retry=history, timeout=10) as jm, pytest.raises(Unavailable):
        jm.get_memory_history(1)
    assert history.asked == [1, 2, 3]  # type: ignore[attr-defined]


@pytest.mark.sqlite_only("reads the bytes of the SQLite file and its WAL")
def test_forgotten_text_leaves_no_trace_in_the_files(fresh_daemon: Daemon) -> None:
    tail = secrets.token_hex(6)
    word = f"Zorblax{tail}7"  # ends with a digit: the stemmer keeps the word whole
    with fresh_daemon.client(namespace="erasure") as jm:
        m = add(jm, f"The vault word is {word}", subject="vault", attributes={"hint": word})
        jm.update_memory(m.id, content=f"The vault word is still {word}")  # a history row
        jm.add_memory(f"Another memory says {word}", category="fact", source="user_explicit",
                      subject="vault")
        assert len(jm.search_memories(word.lower())) == 2  # indexed, before the forget
        report = jm.forget_memories(subject="vault")
        assert report.count == 2
        assert jm.search_memories(word.lower()) == []

    db = Path(fresh_daemon.db_path)
    wal = db.with_name(db.name + "-wal")

    def leftovers() -> list[str]:
        found = []
        for path in [p for p in db.parent.iterdir() if p.name.startswith(db.name)]:
            data = path.read_bytes()
            found += [f"{needle!r} in {path.name}" for needle in {word, word.lower(), tail}
                      if needle.encode() in data]
        return found

    # While the daemon runs: once writes pause, its checkpointer empties the WAL.
    poll(lambda: not wal.exists() or wal.stat().st_size == 0, "the WAL was never emptied")
    assert leftovers() == []
    assert fresh_daemon.stop() == 0, fresh_daemon.output
    assert leftovers() == []


# -- recency in ranking ---------------------------------------------------------------------


def test_recency_weight_orders_equally_relevant_memories(jm: Client) -> None:
    hiking = add(jm, "Likes hiking in the Alps")
    sailing = add(jm, "Likes sailing in the Alps")
    add(jm, "Likes hiking in the Alps")  # restated: now the most recent of the two
    assert ids(jm.search_memories("alps", recency_weight=1.0)) == [hiking.id, sailing.id]
    add(jm, "likes SAILING in the alps")
    assert ids(jm.search_memories("alps", recency_weight=1.0)) == [sailing.id, hiking.id]
    assert ids(jm.search_memories("alps", recency_weight=0.5)) == [sailing.id, hiking.id]


def test_without_recency_weight_relevance_orders(jm: Client) -> None:
    relevant = add(jm, "Skiing in Zermatt, hiking near Zermatt")
    weaker = add(jm, "A postcard from Zermatt")
    add(jm, "a postcard from zermatt")  # restated: the most recent, yet less relevant
    assert ids(jm.search_memories("zermatt hiking")) == [relevant.id, weaker.id]
    assert ids(jm.search_memories("zermatt hiking", recency_weight=0.0)) == [
        relevant.id, weaker.id]
    # Recorded moments apart, both are about equally recent: relevance still leads.
    assert ids(jm.search_memories("zermatt hiking", recency_weight=1.0)) == [
        relevant.id, weaker.id]


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_recency_weight_outside_0_to_1_is_invalid_argument(jm: Client, weight: float) -> None:
    with pytest.raises(InvalidArgument):
        jm.search_memories("alps", recency_weight=weight)


# -- upgrading ------------------------------------------------------------------------------


@pytest.mark.sqlite_only("builds a schema-11 SQLite file by hand")
def test_a_file_from_before_the_lifecycle_upgrades_and_replays_its_old_changes(
    tmp_path: Path,
) -> None:
    import json

    import apsw

    from jarvis_memory_server.store import migrations
    from jarvis_memory_server.store.sqlite import load_extensions

    path = tmp_path / "jarvis.db"
    conn = apsw.Connection(str(path))
    load_extensions(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    for step in migrations.MIGRATIONS[:11]:  # the schema before migration 12
        with conn:
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step.version}")
    digest = bytes(range(32))
    with conn:
        conn.execute(
            "INSERT INTO memories (id, namespace, content, content_hash, category, source, "
            "subject, stale, created_at, updated_at, restated_count, revision) "
            "VALUES (1, 'old', 'Keeps bees', ?, 'fact', 'user_explicit', 'hobby', 0, 5, 5, 0, 1)",
            (digest,))
        # The change as a daemon of schema 11 logged it: the row's 14 fields, by position.
        row = [1, "old", "Keeps bees", digest.hex(), "fact", "user_explicit", "hobby", None, 0,
               5, 5, None, 0, 1]
        conn.execute("INSERT INTO changes (revision, namespace, kind, key, operation, "
                     "created_at, resource) VALUES (1, 'old', 'memory', '1', 'create', 5, ?)",
                     (json.dumps(row),))
    conn.close()
    d = Daemon(path).start()
    try:
        with d.client(namespace="old") as jm:
            watcher = Collector(jm, kinds=["memory"], start_revision=1)
            (old_change,) = watcher.wait_for(1)
            assert isinstance(old_change.resource, Memory)
            assert old_change.resource.content == "Keeps bees"
            assert old_change.resource.superseded_by is None and old_change.resource.supersedes == []
            new = add(jm, "Keeps bees and chickens", subject="hobby", supersedes=[1])
            assert jm.get_memory(1).superseded_by == new.id
            assert [v.operation for v in jm.get_memory_history(1)] == ["create", "supersede"]
            assert jm.forget_memories(subject="hobby").count == 2
            assert jm.search_memories("bees", include_superseded=True) == []
    finally:
        assert d.stop() == 0
