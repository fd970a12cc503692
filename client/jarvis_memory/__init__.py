"""Python SDK for the jarvis-memory daemon.

    from jarvis_memory import Client
    with Client("127.0.0.1:50051") as jm:
        m = jm.add_memory("Prefers espresso after lunch", category="preference",
                          source="user_explicit")

The generated protobuf modules live in ``jarvis.memory.v1``; ``Client.channel`` reaches them.
"""

from jarvis_memory._retry import NO_RETRY, RetryPolicy
from jarvis_memory.aio import AsyncClient
from jarvis_memory.client import Client
from jarvis_memory.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JarvisMemoryError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from jarvis_memory.types import (
    BackupResult,
    Change,
    Collection,
    Decision,
    Event,
    EventHit,
    Field,
    Memory,
    MemoryHit,
    Message,
    MessageHit,
    Page,
    PlanningCycle,
    Preference,
    Resource,
    RowCount,
    Session,
    SessionEvent,
    Snapshot,
    StateEntry,
    Stats,
    ToolCall,
)

__all__ = [
    "NO_RETRY",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "BackupResult",
    "Change",
    "Client",
    "Collection",
    "DataLoss",
    "DeadlineExceeded",
    "Decision",
    "Event",
    "EventHit",
    "FailedPrecondition",
    "Field",
    "Internal",
    "InvalidArgument",
    "JarvisMemoryError",
    "Memory",
    "MemoryHit",
    "Message",
    "MessageHit",
    "NotFound",
    "OutOfRange",
    "Page",
    "PermissionDenied",
    "PlanningCycle",
    "Preference",
    "Resource",
    "ResourceExhausted",
    "RetryPolicy",
    "RowCount",
    "Session",
    "SessionEvent",
    "Snapshot",
    "StateEntry",
    "Stats",
    "ToolCall",
    "Unauthenticated",
    "Unavailable",
]
