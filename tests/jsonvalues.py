"""JSON values for the tests: a type-strict comparison and hypothesis strategies."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st


def assert_identical(got: Any, want: Any, path: str = "$", *, ordered: bool = True) -> None:
    """Equal and of the same types all the way down, with object keys in the same order.

    ``ordered=False`` ignores the order of keys (a Struct, a protobuf map, has none).
    """
    assert type(got) is type(want), f"{path}: {got!r} is not {want!r}"
    if isinstance(want, dict):
        keys, wanted = (list(got), list(want)) if ordered else (sorted(got), sorted(want))
        assert keys == wanted, f"{path}: keys {list(got)} are not {list(want)}"
        for key in want:
            assert_identical(got[key], want[key], f"{path}.{key}", ordered=ordered)
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: {got!r} is not {want!r}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_identical(a, b, f"{path}[{i}]", ordered=ordered)
    elif isinstance(want, float) and math.copysign(1, want) != math.copysign(1, got):
        raise AssertionError(f"{path}: {got!r} is not {want!r}")
    else:
        assert got == want, f"{path}: {got!r} is not {want!r}"


def same(got: Any, want: Any) -> bool:
    """assert_identical as a predicate."""
    try:
        assert_identical(got, want)
    except AssertionError:
        return False
    return True


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # no lone surrogates
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=16,
)
JSON_OBJECTS = st.dictionaries(TEXT, JSON_VALUES, max_size=5).filter(lambda v: depth(v) <= 30)
JSON_VALUES = JSON_VALUES.filter(lambda v: depth(v) <= 30)
