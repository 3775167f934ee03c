"""msgpack with numpy arrays: the wire format of openpi's policy server and client.

An array travels as the map ``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": <dtype.str>,
b"shape": [...]}`` and a numpy scalar as ``{b"__npgeneric__": True, b"data": <item>, b"dtype": ...}``.
Object, void and complex dtypes are refused both ways (no pickle, nothing that could run code).

A server unpacks what strangers send: :class:`DecodeLimits` caps every container, string and blob, and the
number of arrays and maps in one message. msgpack's own caps grow with the message: an 8 MiB frame of empty
arrays would unpack into eight million lists (~0.5 GB and seconds of decoding with the GIL held).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = ("O", "V", "c")


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind in _REFUSED_KINDS:
        raise ValueError(f"unsupported dtype {dtype} (object, void and complex arrays are not sent)")


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype)
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype)
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _field(obj: dict, name: str) -> Any:
    return obj[name.encode()] if name.encode() in obj else obj[name]


def _wire_dtype(obj: dict) -> np.dtype:
    """The dtype a received map names; only a dtype string (``dtype.str``, e.g. ``"<f4"``) is accepted.

    ``np.dtype`` also builds dtypes from lists and dicts; a sender has no business sending those.
    """
    name = _field(obj, "dtype")
    if not isinstance(name, str):
        raise ValueError(f"array dtype must be a dtype string such as '<f4', got {type(name).__name__}")
    try:
        dtype = np.dtype(name)
    except TypeError as err:
        raise ValueError(f"unknown dtype {name!r}") from err
    _check_dtype(dtype)
    return dtype


def _decode(obj: dict) -> Any:
    if obj.get(b"__ndarray__") or obj.get("__ndarray__"):
        return np.frombuffer(_field(obj, "data"), dtype=_wire_dtype(obj)).reshape(_field(obj, "shape"))
    if obj.get(b"__npgeneric__") or obj.get("__npgeneric__"):
        return _wire_dtype(obj).type(_field(obj, "data"))
    return obj


@dataclass(frozen=True)
class DecodeLimits:
    """Caps on one received message, sized for an observation (a few cameras, a state, a prompt).

    Args:
        max_bin_len: longest binary blob (an image's pixels); a server sets it to its frame limit.
        max_str_len: longest string, in bytes (keys, dtype names, the prompt).
        max_array_len: longest array (shapes, a state sent as a list).
        max_map_len: most keys in one map (the observation, its cameras, an array's fields).
        max_containers: most arrays and maps in the whole message (bounds the objects a small frame unpacks into).
    Extension types are refused (the format uses none).
    """

    max_bin_len: int = 64 << 20
    max_str_len: int = 64 << 10
    max_array_len: int = 1024
    max_map_len: int = 256
    max_containers: int = 1024


class _ContainerBudget:
    """Counts the arrays and maps msgpack builds; raises once there are more than ``limit``."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.limit = limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ValueError(f"more than {self.limit} arrays and maps in one message")

    def list_hook(self, obj: list) -> list:
        self.spend()
        return obj

    def object_hook(self, obj: dict) -> Any:
        self.spend()
        return _decode(obj)


def packb(obj: Any) -> bytes:
    """Serialise ``obj`` (dicts, lists, str, numbers, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes, limits: DecodeLimits | None = None) -> Any:
    """Inverse of :func:`packb`; arrays come back read-only views of the message.

    ``limits``: caps for data from an untrusted sender (a message over one raises ``ValueError``); ``None``
    keeps msgpack's defaults (a client reading its own server's replies).
    """
    if limits is None:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    budget = _ContainerBudget(limits.max_containers)
    return msgpack.unpackb(
        data,
        object_hook=budget.object_hook,
        list_hook=budget.list_hook,
        raw=False,
        strict_map_key=False,
        max_bin_len=limits.max_bin_len,
        max_str_len=limits.max_str_len,
        max_array_len=limits.max_array_len,
        max_map_len=limits.max_map_len,
        max_ext_len=0,
    )


__all__ = ["DecodeLimits", "packb", "unpackb"]
