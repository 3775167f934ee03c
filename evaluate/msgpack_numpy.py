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


def _decode(obj: dict) -> Any:
    if obj.get(b"__ndarray__") or obj.get("__ndarray__"):
        dtype = np.dtype(_field(obj, "dtype"))
        _check_dtype(dtype)
        return np.frombuffer(_field(obj, "data"), dtype=dtype).reshape(_field(obj, "shape"))
    if obj.get(b"__npgeneric__") or obj.get("__npgeneric__"):
        dtype = np.dtype(_field(obj, "dtype"))
        _check_dtype(dtype)
        return dtype.type(_field(obj, "data"))
    return obj


def packb(obj: Any) -> bytes:
    """Serialise ``obj`` (dicts, lists, str, numbers, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Inverse of :func:`packb`; arrays come back read-only views of the message."""
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)


__all__ = ["packb", "unpackb"]
