"""Python values <-> protobuf fields, checking every argument before anything is sent.

Each function takes the caller's value and the name of the argument it came in (or its path,
such as ``attributes.scores[2]`` or ``rows[3].qty``), and raises
jarvis_memory.InvalidArgument naming it for a value it cannot send as given: the SDK never
lets a TypeError, ValueError or protobuf error through for a caller's mistake.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from jarvis.memory.v1 import collection_pb2
from jarvis_memory.errors import InvalidArgument

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# The daemon's limit of nested arrays and objects (see "JSON values" in common.proto); it also
# stops a value that contains itself long before Python's recursion limit.
MAX_JSON_DEPTH = 30
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Compact and exact: ints stay ints, floats keep their repr (4.0 stays 4.0); NaN refused.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"),
                            check_circular=False)
_JSON_TYPES = "dict, list, str, int, float, bool or None"


def bad(field: str, problem: str) -> InvalidArgument:
    """The InvalidArgument for argument ``field``."""
    return InvalidArgument.for_argument(field, problem)


def _kind(value: object) -> str:
    return type(value).__name__


# -- scalars --------------------------------------------------------------------------------


def text(value: object, field: str) -> str:
    """A str (valid Unicode)."""
    if not isinstance(value, str):
        raise bad(field, f"must be text (str), got {_kind(value)}")
    if not _is_unicode(value):
        raise bad(field, "holds an unpaired surrogate (not valid Unicode)")
    return value


def optional_text(value: object, field: str) -> str | None:
    """None or a str."""
    return None if value is None else text(value, field)


def integer(value: object, field: str, minimum: int = INT64_MIN,
            maximum: int = INT64_MAX) -> int:
    """An integer (an int or any numbers.Integral such as numpy's, not a bool) in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad(field, f"must be an integer (int), got {_kind(value)}")
    result = int(value)
    if not minimum <= result <= maximum:
        raise bad(field, f"{result} is outside the range {minimum} to {maximum}")
    return result


def int32(value: object, field: str) -> int:
    """An int within the int32 range (page sizes, limits, chunk sizes)."""
    return integer(value, field, INT32_MIN, INT32_MAX)


def boolean(value: object, field: str) -> bool:
    """A bool."""
    if not isinstance(value, bool):
        raise bad(field, f"must be True or False (bool), got {_kind(value)}")
    return value


def optional_boolean(value: object, field: str) -> bool | None:
    """None or a bool."""
    return None if value is None else boolean(value, field)


def number(value: object, field: str) -> float:
    """A finite real number: an int, a float, or any numbers.Real (numpy's float32 too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad(field, f"must be a number (int or float), got {_kind(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise bad(field, f"{value} is too large for a float") from None
    if not math.isfinite(result):
        raise bad(field, f"{value} is not a finite number")
    return result


def floats(value: object, field: str) -> list[float]:
    """None or any iterable of finite numbers (a list, a tuple, a numpy array: an embedding)."""
    if value is None:
        return []
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise bad(field, f"must be a list of numbers, got {_kind(value)}")
    return [number(item, f"{field}[{i}]") for i, item in enumerate(value)]


def strings(value: object, field: str) -> list[str]:
    """A sequence of str (not a str itself)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise bad(field, f"must be a list of strings, got {_kind(value)}")
    return [text(item, f"{field}[{i}]") for i, item in enumerate(value)]


def mapping(value: object, field: str) -> Mapping[str, Any]:
    """A Mapping (the caller's dict of options, rows, changes)."""
    if not isinstance(value, Mapping):
        raise bad(field, f"must be a dict, got {_kind(value)}")
    return value


def sequence(value: object, field: str) -> Sequence[Any]:
    """A list or tuple (not a str)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise bad(field, f"must be a list, got {_kind(value)}")
    return value


def path(value: object, field: str) -> str:
    """A file path (str or os.PathLike)."""
    if not isinstance(value, str | os.PathLike):
        raise bad(field, f"must be a file path (str or os.PathLike), got {_kind(value)}")
    result = os.fspath(value)
    if not isinstance(result, str) or not result:
        raise bad(field, "must be a non-empty text path")
    return result


def known_keys(given: Mapping[str, Any], allowed: Sequence[str], what: str,
               prefix: str = "") -> None:
    """Refuse keys (keyword arguments, dict keys) outside ``allowed``, naming the first."""
    for key in given:
        if key not in allowed:
            raise bad(f"{prefix}{key}", f"unknown argument of {what} (expected any of "
                      f"{', '.join(allowed)})")


def _is_unicode(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- time -----------------------------------------------------------------------------------


def timestamp(value: object, field: str) -> timestamp_pb2.Timestamp:
    """A datetime (naive means UTC) -> Timestamp."""
    if not isinstance(value, datetime):
        raise bad(field, f"must be a datetime, got {_kind(value)}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def to_datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    """Timestamp -> aware UTC datetime, exact to the microsecond."""
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def seconds(value: object, field: str) -> timedelta:
    """A number of seconds or a timedelta -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(field, f"must be seconds (int or float) or a timedelta, got {_kind(value)}")
    if not math.isfinite(value):
        raise bad(field, f"{value} is not a finite number of seconds")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise bad(field, f"{value} seconds is out of range") from None


def day(value: object, field: str) -> str:
    """A UTC day: a date, a datetime (its UTC day) or "YYYY-MM-DD" text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return text(value, field)
    raise bad(field, f"must be a date or 'YYYY-MM-DD' text, got {_kind(value)}")


# -- enums ----------------------------------------------------------------------------------


def enum_names(enum: Any, prefix: str) -> list[str]:
    """The lowercase names an enum's values take in the SDK (UNSPECIFIED left out)."""
    return [n.removeprefix(prefix).lower() for n in enum.keys()  # noqa: SIM118
            if not n.endswith("_UNSPECIFIED")]


def enum_value(enum: Any, prefix: str, value: object, field: str) -> Any:
    """Accept "fact", "FACT", "MEMORY_CATEGORY_FACT" or the number (Any: the stubs' NewType)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return integer(value, field, INT32_MIN, INT32_MAX)
    allowed = ", ".join(enum_names(enum, prefix))
    if value is None:
        raise bad(field, f"is required: one of {allowed}")
    if not isinstance(value, str):
        raise bad(field, f"must be one of {allowed} (str), got {_kind(value)}")
    name = value.upper()
    if not name.startswith(prefix):
        name = prefix + name
    if name.endswith("_UNSPECIFIED") or name not in enum.keys():  # noqa: SIM118
        raise bad(field, f"{value!r} is not one of {allowed}")
    return enum.Value(name)


def enum_name(enum: Any, prefix: str, number: int) -> str:
    """Enum number -> lowercase name (the number as text when this SDK does not know it)."""
    try:
        return str(enum.Name(number)).removeprefix(prefix).lower()
    except ValueError:
        return str(number)


# -- JSON -----------------------------------------------------------------------------------


def json_text(value: object, field: str, *, object_only: bool = False) -> str:
    """Any JSON value (a dict with ``object_only``) -> compact, exact JSON text.

    Refuses, naming the path (``attributes.scores[2]``): NaN and Infinity, integers outside
    int64, values JSON has no form for (sets, bytes, objects), keys that are not text (JSON
    would turn 1 into "1"), unpaired surrogates, and values that contain themselves.
    """
    if object_only and not isinstance(value, dict):
        raise bad(field, f"must be a JSON object (dict), got {_kind(value)}")
    _check_json(value, field, 0)
    return _ENCODER.encode(value)


def optional_json(value: object, field: str, *, object_only: bool = False) -> str:
    """json_text, or "" (unset) for None."""
    return "" if value is None else json_text(value, field, object_only=object_only)


def _check_json(value: object, path: str, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if not _is_unicode(value):
            raise bad(path, "holds an unpaired surrogate (not valid Unicode)")
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise bad(path, f"{value} is an integer outside the int64 range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad(path, f"{value} is not a JSON number (NaN and Infinity are not allowed)")
    elif isinstance(value, dict | list | tuple):
        if depth >= MAX_JSON_DEPTH:
            raise bad(path, f"nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects "
                      "(or contains itself)")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise bad(path, f"has the key {key!r} ({_kind(key)}): JSON object keys "
                              "are text (str)")
                if not _is_unicode(key):
                    raise bad(path, "has a key with an unpaired surrogate (not valid Unicode)")
                _check_json(item, _key_path(path, key), depth + 1)
        else:
            for i, item in enumerate(value):
                _check_json(item, f"{path}[{i}]", depth + 1)
    else:
        raise bad(path, f"{_kind(value)} is not a JSON value ({_JSON_TYPES})")


def _key_path(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def json_field(message: Any, field: str) -> Any:
    """A JSON-valued field of a response: ``<field>_json``, else the older Struct/Value field.

    None when neither is set (an older daemon only fills the Struct/Value field, whose whole
    numbers within +-2^53 are read as ints, as the daemon stores them).
    """
    encoded: str = getattr(message, field + "_json")
    if encoded:
        return json.loads(encoded)
    if message.HasField(field):
        return legacy_json(getattr(message, field))
    return None


def legacy_json(message: struct_pb2.Struct | struct_pb2.Value) -> Any:
    """A google.protobuf Struct or Value -> Python (whole numbers within +-2^53 as ints)."""
    return _whole_numbers(json_format.MessageToDict(message))


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


# -- collection values ----------------------------------------------------------------------

_VALUE_TYPES = "None, bool, int, float, str, datetime, dict or list"


def field_value(value: object, field: str) -> collection_pb2.FieldValue:
    """A Python value -> the typed FieldValue of a collection field.

    None -> null, bool -> boolean, int -> integer, float -> real, str -> string,
    datetime -> timestamp (naive means UTC), dict/list -> json.
    """
    if value is None:
        return collection_pb2.FieldValue(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return collection_pb2.FieldValue(boolean_value=value)
    if isinstance(value, int):
        return collection_pb2.FieldValue(integer_value=integer(value, field))
    if isinstance(value, float):
        return collection_pb2.FieldValue(real_value=number(value, field))
    if isinstance(value, str):
        return collection_pb2.FieldValue(string_value=text(value, field))
    if isinstance(value, datetime):
        return collection_pb2.FieldValue(timestamp_value=timestamp(value, field))
    if isinstance(value, dict | list | tuple):
        return collection_pb2.FieldValue(json_value=json_text(value, field))
    raise bad(field, f"{_kind(value)} is not a collection value ({_VALUE_TYPES})")


def from_field_value(value: collection_pb2.FieldValue) -> Any:
    """A FieldValue -> its Python value (timestamps as aware UTC datetimes, json parsed)."""
    kind = value.WhichOneof("kind")
    if kind == "integer_value":
        return value.integer_value
    if kind == "real_value":
        return value.real_value
    if kind == "boolean_value":
        return value.boolean_value
    if kind == "string_value":
        return value.string_value
    if kind == "json_value":
        return json.loads(value.json_value)
    if kind == "timestamp_value":
        return to_datetime(value.timestamp_value)
    return None
