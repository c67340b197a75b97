"""cattrs conversion between message objects and JSON-compatible data, strict about types.

cattrs converts leniently by default (``int("5")``, ``int(5.7)``); money and identities deserve
better, so the primitive hooks here accept only values of the right JSON type, and every failure
becomes a :class:`SerializationError` that names the field path (``$.lines[2].amount``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import json
import math
import types
import typing
import weakref
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from uuid import UUID

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.gen import make_mapping_structure_fn
from cattrs.strategies import configure_union_passthrough

from .errors import SerializationError

__all__ = ["converter", "dumps", "loads", "structure", "unstructure"]

T = TypeVar("T")

converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)


def _expect(value: Any, kinds: tuple[type, ...], name: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise TypeError(f"expected {name}, got a boolean")
    if not isinstance(value, kinds):
        raise TypeError(f"expected {name}, got {type(value).__name__} {value!r:.40}")


# These hooks are found for subclasses too (IntEnum, StrEnum, ``class C(str, Enum)``): build the
# target class then, as cattrs' own hooks do, so an enum field gets a checked member.


def _int(value: Any, cls: Any) -> int:
    _expect(value, (int,), "an integer")
    return int(value) if cls is int else cls(value)


def _float(value: Any, cls: Any) -> float:
    _expect(value, (int, float), "a number")
    return float(value) if cls is float else cls(value)


def _str(value: Any, cls: Any) -> str:
    _expect(value, (str,), "a string")
    return str(value) if cls is str else cls(value)


def _bool(value: Any, _: Any) -> bool:
    _expect(value, (bool,), "true or false")
    return bool(value)


def _decimal(value: Any, _: Any) -> Decimal:
    _expect(value, (str, int, float), "a decimal number (string)")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {value!r:.40}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite decimal number: {value!r:.40}")
    return result


def _uuid(value: Any, _: Any) -> UUID:
    _expect(value, (str,), "a UUID string")
    return UUID(value)


def _datetime(value: Any, _: Any) -> datetime:
    _expect(value, (str,), "an ISO-8601 date-time string")
    return datetime.fromisoformat(value)


def _date(value: Any, _: Any) -> date:
    _expect(value, (str,), "an ISO-8601 date string")
    return date.fromisoformat(value)


def _time(value: Any, _: Any) -> time:
    _expect(value, (str,), "an ISO-8601 time string")
    return time.fromisoformat(value)


for _type, _hook in (
    (int, _int),
    (float, _float),
    (str, _str),
    (bool, _bool),
    (Decimal, _decimal),
    (UUID, _uuid),
    (datetime, _datetime),
    (date, _date),
    (time, _time),
):
    converter.register_structure_hook(_type, _hook)

_ARRAYS = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_SETS = (set, frozenset, collections.abc.Set, collections.abc.MutableSet)


def _is_array_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in _ARRAYS or origin in _SETS:
        return True
    args = typing.get_args(tp)
    return origin is tuple and len(args) == 2 and args[1] is Ellipsis


def _array_hook(tp: Any) -> Any:
    # cattrs iterates any iterable into a list field: "vip" -> ["v", "i", "p"]. Only arrays do.
    item_type = typing.get_args(tp)[0] if typing.get_args(tp) else Any
    origin = typing.get_origin(tp)
    make: Any = {tuple: tuple, frozenset: frozenset}.get(origin, set if origin in _SETS else list)

    def structure_array(value: Any, _: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected an array, got {type(value).__name__} {value!r:.40}")
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, item_type))
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote(f"Structuring {tp} @ index {index}", index, item_type),
                ]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
        return make(items)

    return structure_array


converter.register_structure_hook_factory(_is_array_type, _array_hook)


def _is_set_type(tp: Any) -> bool:
    return tp in (set, frozenset) or typing.get_origin(tp) in _SETS


def _set_unstructure_hook(tp: Any) -> Any:
    # JSON has no sets: a set is stored as an array (sorted where its items sort, so that the
    # same set is always the same JSON), and structured back into a set.
    args = typing.get_args(tp)
    item_type = args[0] if args else Any

    def unstructure_set(value: Any) -> list[Any]:
        items = [converter.unstructure(item, item_type) for item in value]
        try:
            return sorted(items)
        except TypeError:  # (dicts of attrs values, mixed types): ordered by their JSON, so
            return sorted(items, key=_json_order)  # that equal sets are the same JSON anywhere

    return unstructure_set


def _json_order(item: Any) -> str:
    try:
        return json.dumps(item, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # (keys of mixed types: no JSON order; its repr)
        return repr(item)


converter.register_unstructure_hook_factory(_is_set_type, _set_unstructure_hook)

# A union of JSON scalars (``int | str``) takes a value of one of its types as it is (cattrs
# has no hook for it otherwise: every class with such a field was refused).
configure_union_passthrough(str | int | float | bool | None, converter, accept_ints_as_floats=False)

_JSON_SCALARS = (str, int, float, bool, type(None))


def _is_float_union(tp: Any) -> bool:
    """A union of JSON scalars with ``float`` and without ``int`` (``float | str``): the
    passthrough takes a float as it is but refuses an int, which a ``float`` field takes."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    members = typing.get_args(tp)
    return (
        float in members
        and int not in members
        and set(members) != {float, type(None)}  # (float | None: cattrs' own, which takes ints)
        and all(m in _JSON_SCALARS or typing.get_origin(m) is typing.Literal for m in members)
    )


def _float_union_hook(tp: Any) -> Any:
    none = type(None) in typing.get_args(tp)
    others = tuple(m for m in typing.get_args(tp) if m is not float and m is not type(None))
    rest: Any = others[0] if len(others) == 1 else typing.Union[others]  # noqa: UP007

    def structure_float_union(value: Any, _: Any) -> Any:
        if value.__class__ is int or value.__class__ is float:  # (not a bool)
            return _float(value, float)  # as a float field: 5 is 5.0, a huge int an error
        if value is None and none:
            return None
        try:
            return converter.structure(value, rest)
        except Exception:
            raise TypeError(f"expected {tp}, got {type(value).__name__} {value!r:.40}") from None

    return structure_float_union


converter.register_structure_hook_factory(_is_float_union, _float_union_hook)


def _is_scalar(tp: Any) -> bool:
    return tp in _JSON_SCALARS or typing.get_origin(tp) is typing.Literal


def _never_scalar(tp: Any) -> bool:
    """Whether a value of ``tp`` is never a JSON scalar once unstructured (an array, an object)."""
    origin = typing.get_origin(tp) or tp
    if attrs.has(origin) or dataclasses.is_dataclass(origin):
        return True
    containers = (list, tuple, dict, set, frozenset, collections.abc.Collection)
    return (
        isinstance(origin, type)
        and issubclass(origin, containers)
        and not issubclass(origin, (str, bytes, bytearray))
    )


def _is_ambiguous_union(tp: Any) -> bool:
    """A union of a JSON scalar and a type stored as a scalar too (``Colour | str``,
    ``datetime | str``): the passthrough would read the stored value back as the scalar."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    members = typing.get_args(tp)
    if not any(_is_scalar(m) and m is not type(None) for m in members):
        return False
    return not all(_is_scalar(m) or _never_scalar(m) for m in members)


def _ambiguous_union_hook(tp: Any) -> Any:
    def refuse(value: Any, _: Any) -> Any:
        raise TypeError(
            f"{tp} cannot be read back: its members are stored as the same JSON scalars; "
            "give them fields of their own"
        )

    return refuse


converter.register_structure_hook_factory(_is_ambiguous_union, _ambiguous_union_hook)

_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_int_keyed(tp: Any) -> bool:
    args = typing.get_args(tp)
    return (
        typing.get_origin(tp) in _MAPPINGS
        and len(args) == 2
        and isinstance(args[0], type)
        and issubclass(args[0], int)
        and not issubclass(args[0], bool)
    )


def _int_keyed_hook(tp: Any) -> Any:
    # JSON keys are strings: a stored ``dict[int, ...]`` comes back as {"1": ...}. A key that
    # is an integer written out is taken as that integer; any other string is refused below.
    inner = make_mapping_structure_fn(tp, converter, detailed_validation=True)

    def structure_int_keyed(value: Any, cls: Any) -> Any:
        if isinstance(value, dict):
            value = {_integer_key(key): item for key, item in value.items()}
        return inner(value, cls)

    return structure_int_keyed


def _integer_key(key: Any) -> Any:
    if type(key) is str and key.lstrip("-").isdigit() and key.isascii():
        try:
            return int(key)
        except ValueError:  # more digits than int() takes
            return key
    return key


converter.register_structure_hook_factory(_is_int_keyed, _int_keyed_hook)
#: The digits of a Decimal before and after its point that a PostgreSQL ``numeric`` holds: the
#: column a projection writes one to. Past them nothing computes with it either: arithmetic in the
#: default context raises ``decimal.Overflow`` from 10**1,000,000 on, ``int()`` of 1E+1000000 took
#: 27 s (of 1E+999999999: minutes, holding its shard), ``f"{d:f}"`` of 1E-999999999 is 1 GB.
MAX_DECIMAL_DIGITS_BEFORE_POINT = 131_072
MAX_DECIMAL_DIGITS_AFTER_POINT = 16_383


class UnstorableDecimal(str):
    """The text of a Decimal no column holds (not finite, or too many digits), unstructured
    with what is wrong (``problem``) so that :func:`~backstage_actors.limits.problems` names its
    field path among every other bad field; written out, it is the Decimal's text."""

    problem: str


def decimal_problem(value: Decimal) -> str | None:
    """What makes ``value`` unstorable, or None."""
    if not value.is_finite():
        return f"the decimal {value} is not a finite number"
    before = value.adjusted() + 1
    if before > MAX_DECIMAL_DIGITS_BEFORE_POINT:
        return (
            f"the decimal {str(value)[:40]} has {before:,} digits before the point (at most"
            f" {MAX_DECIMAL_DIGITS_BEFORE_POINT:,}: a PostgreSQL numeric's)"
        )
    exponent = value.as_tuple().exponent  # (an int: the value is finite)
    after = -exponent if isinstance(exponent, int) else 0
    if after > MAX_DECIMAL_DIGITS_AFTER_POINT:
        return (
            f"the decimal {str(value)[:40]} has {after:,} digits after the point (at most"
            f" {MAX_DECIMAL_DIGITS_AFTER_POINT:,}: a PostgreSQL numeric's)"
        )
    return None


def _unstructure_decimal(value: Decimal) -> str:
    text = str(value)
    if not isinstance(value, Decimal):  # (an int given for a Decimal field: its text, as ever)
        return text
    # Most decimals: finite, and written out in full in fewer characters than either bound.
    if "E" not in text and len(text) < MAX_DECIMAL_DIGITS_AFTER_POINT and value.is_finite():
        return text
    problem = decimal_problem(value)
    if problem is None:
        return text
    marked = UnstorableDecimal(text)
    marked.problem = problem
    return marked


converter.register_unstructure_hook(Decimal, _unstructure_decimal)
converter.register_unstructure_hook(UUID, str)
converter.register_unstructure_hook(datetime, datetime.isoformat)
converter.register_unstructure_hook(date, date.isoformat)
converter.register_unstructure_hook(time, time.isoformat)


def _is_float_type(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def structure(data: Any, cls: type[T], what: str | None = None) -> T:
    """``data`` as an instance of ``cls``; :class:`SerializationError` names the failing field."""
    try:
        return converter.structure(data, cls)
    except SerializationError:
        raise
    except Exception as exc:
        messages = (
            cattrs.transform_error(exc) if isinstance(exc, cattrs.BaseValidationError) else []
        )
        label = what or getattr(cls, "__name__", str(cls))
        if messages:
            # Every bad field at once, in one error: a user fixes them all in one go.
            problems = [message.rpartition(" @ ") for message in messages]
            described = "; ".join(f"{message} at {path}" for message, _, path in problems)
            paths = [_one_line(path) for _, _, path in problems]
            raise SerializationError(f"{label}: {_one_line(described)}", paths[0], paths) from None
        raise SerializationError(f"{label}: {type(exc).__name__}: {exc}") from None


def _one_line(text: str) -> str:
    """``text`` with its unprintable characters escaped: field names come from the input, and an
    error stays one line (``\\n``, ``\\x85``) whatever keys a caller sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def unstructure(obj: Any) -> Any:
    """``obj`` as JSON-compatible data (dicts, lists, strings, numbers, booleans, None)."""
    try:
        return converter.unstructure(obj)
    except Exception as exc:
        raise SerializationError(f"{type(obj).__name__}: cannot unstructure: {exc}") from None


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON (no NaN, non-ASCII kept). The standard encoder builds its C encoder anew
    at each call; this one is built once. Without the circular-reference check: a value nested
    in itself raises RecursionError, like one nested too deeply."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return encoder.encode
    encode = make(
        None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    return lambda data: "".join(encode(data, 0))


_ENCODE = _compact_encoder()


def dumps(data: Any, what: str = "value") -> str:
    """Compact JSON of unstructured ``data``; a value JSON cannot hold is named by its path."""
    try:
        return _ENCODE(data)
    except RecursionError:
        raise SerializationError(f"{what}: nested too deeply to store as JSON") from None
    except (TypeError, ValueError) as exc:
        path = _first_bad_path(data, "$") or "$"
        raise SerializationError(f"{what}: not JSON-serializable at {path}: {exc}", path) from None


def loads(text: str | bytes) -> Any:
    return json.loads(text)


def _first_bad_path(value: Any, path: str) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]"
            found = _first_bad_path(item, f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_bad_path(item, f"{path}[{index}]")
            if found:
                return found
        return None
    if value is None or isinstance(value, (str, int, bool)):
        return None
    if isinstance(value, float):
        return path if _is_float_type(value) else None
    return path


def is_message_class(cls: Any) -> bool:
    """Whether ``cls`` is a class cattrs can treat as a record (attrs class or dataclass)."""
    if not isinstance(cls, type):
        return False
    known = _message_classes.get(cls)
    if known is None:
        known = _message_classes[cls] = attrs.has(cls) or dataclasses.is_dataclass(cls)
    return known


_message_classes: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def is_enum(value: Any) -> bool:
    return isinstance(value, enum.Enum)


def attributes_state(obj: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``obj``'s public instance attributes, unstructured (what snapshots store); a set is a
    list (JSON has no sets; restored as a set by annotation or the fresh instance's value)."""
    return {
        name: unstructure(value)
        for name, value in vars(obj).items()
        if name not in exclude and not name.startswith("_")
    }


def _hints_of(cls: type) -> dict[str, Any]:
    """``cls``'s resolved annotations, kept once resolved (a process manager restores an
    instance per event; resolving them each time was 7 % of its CPU). One that does not
    resolve yet (a name defined later) is tried again next time."""
    hints = _hints.get(cls)
    if hints is None:
        try:
            hints = _hints[cls] = typing.get_type_hints(cls)
        except Exception:
            return {}
    return hints


_hints: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def restore_attributes(obj: Any, state: dict[str, Any]) -> None:
    """Set ``obj``'s attributes from :func:`attributes_state` output.

    Types come from class annotations when present, else from the value a fresh instance holds
    (so a ``Decimal`` set in ``__init__`` comes back as a ``Decimal``).
    """
    hints = _hints_of(type(obj))
    for name, value in state.items():
        hint = hints.get(name)
        if hint is None:
            current = getattr(obj, name, None)
            plain = current is None or isinstance(current, (dict, list))
            hint = None if plain else type(current)
        label = f"{type(obj).__name__}.{name}"
        if hint is not None:
            value = structure(value, hint, label)
        setattr(obj, name, value)
