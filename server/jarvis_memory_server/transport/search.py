"""What the Search* RPCs of the memory, session and event servicers share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jarvis.memory.v1 import search_pb2
from jarvis_memory_server.service.common import resolve_namespace
from jarvis_memory_server.service.search import Hit, SearchRequest, SearchService
from jarvis_memory_server.transport.convert import EnumNames

MODE = EnumNames(search_pb2.SearchMode, "SEARCH_MODE_")


def search_request(
    search: SearchService, request: Any, filters: dict[str, Any], recency_weight: float = 0.0,
) -> SearchRequest:
    """Validate a Search*Request (namespace, query, limit, and mode + embedding if it has them)."""
    has_vectors = hasattr(request, "embedding")
    return search.request(
        resolve_namespace(request.namespace),
        request.query,
        mode=(MODE.optional(request.mode, "mode") if has_vectors else None) or "keyword",
        embedding=request.embedding if has_vectors else (),
        filters=filters,
        limit=request.limit,
        recency_weight=recency_weight,
    )


def add_hits(
    hits_field: Any, hits: Sequence[Hit], field: str, fill: Callable[[Any, Any], Any],
    row_type: Any,
) -> None:
    """Append each hit to a response's repeated hits, its row converted by ``fill``."""
    for hit in hits:
        found = hits_field.add(score=hit.score, snippet=hit.snippet)
        fill(getattr(found, field), row_type._make(hit.row))
