"""msgpack with numpy arrays: the wire format of openpi's policy server and client.

An array travels as the map ``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": <dtype.str>,
b"shape": [...]}`` and a numpy scalar as ``{b"__npgeneric__": True, b"data": <item>, b"dtype": ...}``.
Object, void and complex dtypes are refused both ways (no pickle, nothing that could run code).
"""

from __future__ import annotations

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


def packb(obj: Any) -> bytes:
    """Serialise ``obj`` (dicts, lists, str, numbers, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Inverse of :func:`packb`; arrays come back read-only views of the message."""
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)


__all__ = ["packb", "unpackb"]
