"""Conversions between protobuf messages and the service layer's Python values."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from jarvis_memory_server.errors import InvalidArgument
from jarvis_memory_server.service.common import MAX_TIME_US, MIN_TIME_US

_MAX_EXACT = 2**53  # every integer up to this is a double exactly


def set_timestamp(ts: timestamp_pb2.Timestamp, us: int) -> None:
    """Set a Timestamp field to microseconds since the epoch."""
    seconds, rest = divmod(us, 1_000_000)
    ts.seconds = seconds
    ts.nanos = rest * 1000


# The range of google.protobuf.Timestamp, in seconds since the epoch (service.common's).
MIN_TIMESTAMP_SECONDS = MIN_TIME_US // 1_000_000
MAX_TIMESTAMP_SECONDS = MAX_TIME_US // 1_000_000
# The range of google.protobuf.Duration: about +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000


def micros(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """Timestamp -> microseconds since the epoch (the one conversion of a request's Timestamp).

    Raises InvalidArgument naming ``field`` when nanos is outside [0, 1e9) or the time is
    outside years 0001 to 9999 (UTC), the range of google.protobuf.Timestamp.
    """
    seconds, nanos = ts.seconds, ts.nanos
    if not 0 <= nanos < _NANOS:
        raise InvalidArgument(field, f"nanos must be in [0, 1e9) (got {nanos})")
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        raise InvalidArgument(field, f"is outside years 0001 to 9999 (UTC): seconds must be in "
                              f"[{MIN_TIMESTAMP_SECONDS}, {MAX_TIMESTAMP_SECONDS}] "
                              f"(got {seconds})")
    return seconds * 1_000_000 + nanos // 1000


def duration_micros(duration: duration_pb2.Duration, field: str) -> int:
    """Duration -> microseconds (the one conversion of a request's Duration).

    Raises InvalidArgument naming ``field`` outside google.protobuf.Duration's range: seconds
    within +-315,576,000,000 (10,000 years), nanos within +-999,999,999 and of the same sign
    as seconds.
    """
    seconds, nanos = duration.seconds, duration.nanos
    if not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
        raise InvalidArgument(field, f"seconds must be within +-{MAX_DURATION_SECONDS} "
                              f"(10,000 years) (got {seconds})")
    if not -_NANOS < nanos < _NANOS or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument(field, f"nanos must be within +-999,999,999 and of the sign of "
                              f"seconds (got seconds {seconds}, nanos {nanos})")
    total = seconds * _NANOS + nanos
    return -(-total // 1000) if total < 0 else total // 1000  # toward zero


def json_input(message: Any, field: str, where: str = "", absent: Any = None) -> Any:
    """The value of a request's JSON-valued field, or ``absent`` when it is not given.

    ``<field>_json`` holds the exact JSON text; the older Struct or Value field ``<field>`` is
    read when it is not set (see value_to_python for its numbers). Giving both, text that is
    not JSON, or a non-object for a Struct field is InvalidArgument (``where`` prefixes the
    field's name in messages, as in "memories[3]."). A Value field, where JSON null is a value,
    passes service.common.ABSENT as ``absent`` to tell the two apart.
    """
    text = getattr(message, field + "_json")
    legacy = message.HasField(field)
    if text:
        if legacy:
            raise InvalidArgument(where + field, f"give {field} or {field}_json, not both")
        value = parse_json(text, f"{where}{field}_json")
        if value is not None and not isinstance(value, dict) and isinstance(
                getattr(message, field), struct_pb2.Struct):
            raise InvalidArgument(f"{where}{field}_json", "must be a JSON object")
        return value
    if not legacy:
        return absent
    older = getattr(message, field)
    if isinstance(older, struct_pb2.Struct):
        return struct_to_dict(older)
    return value_to_python(older)


def parse_json(text: str, field: str) -> Any:
    """JSON text of a request -> its Python value (integers stay int). Raises InvalidArgument.

    NaN and Infinity parse here; json_text (service.common) refuses them with their path.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidArgument(field, "nests too deeply") from None
    except ValueError as exc:
        raise InvalidArgument(field, f"is not valid JSON: {exc}") from None


def set_json(message: Any, field: str, text: str | None) -> None:
    """Write stored JSON text into a response: ``<field>_json`` as it is, and the older field.

    Nothing is set for None (no value).
    """
    if text is None:
        return
    setattr(message, field + "_json", text)
    older = getattr(message, field)
    if isinstance(older, struct_pb2.Struct):
        older.SetInParent()  # an empty object is a value too: update({}) would leave it unset
        older.update(json.loads(text))
    else:
        json_format.Parse(text, older)


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """Struct -> plain dict (whole numbers within +-2^53 become int, see value_to_python).

    About 3x faster than json_format.MessageToDict, which matters for batches of rows.
    """
    return {key: value_to_python(item) for key, item in value.fields.items()}


def value_to_python(value: struct_pb2.Value) -> Any:
    """google.protobuf.Value -> the Python value of its JSON."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        # A Struct cannot tell 4 from 4.0: a whole number a double holds exactly was most
        # likely written as an integer (as JavaScript writes every whole number).
        number = value.number_value
        if number.is_integer() and -_MAX_EXACT <= number <= _MAX_EXACT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(item) for item in value.list_value.values]
    return None  # null_value, or unset


class EnumNames:
    """Maps a proto enum to the service layer's lowercase names and back.

    ``MEMORY_CATEGORY_FACT`` <-> ``"fact"``; the zero value is "not given".
    """

    def __init__(self, enum: Any, prefix: str) -> None:
        self.type_name = enum.DESCRIPTOR.name
        self.to_name: dict[int, str] = {
            v.number: v.name.removeprefix(prefix).lower()
            for v in enum.DESCRIPTOR.values
            if v.number != 0
        }
        # Any: the generated stubs type enum fields as NewTypes of int.
        self.to_number: dict[str, Any] = {name: number for number, name in self.to_name.items()}

    def required(self, number: int, field: str) -> str:
        """Return the name of a value that must be given. Raises InvalidArgument."""
        name = self.to_name.get(number)
        if name is None:
            raise self._error(number, field)
        return name

    def optional(self, number: int, field: str) -> str | None:
        """Return the name of a value, or None for the zero value. Raises InvalidArgument."""
        if number == 0:
            return None
        return self.required(number, field)

    def _error(self, number: int, field: str) -> InvalidArgument:
        allowed = ", ".join(sorted(self.to_name.values()))
        if number == 0:
            return InvalidArgument(field, f"is required: one of {allowed}")
        return InvalidArgument(field, f"{number} is not a known {self.type_name} value ({allowed})")
