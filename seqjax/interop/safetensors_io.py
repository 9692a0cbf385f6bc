"""Read and write the safetensors format with NumPy only (no torch, no pickle).

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
into the byte buffer that follows the header), and the buffer itself. ``__metadata__``
holds optional string metadata. That is the whole format, so seqjax parses it itself
instead of depending on the ``safetensors`` package; bfloat16 comes from ``ml_dtypes``
(a JAX dependency).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """The file is not valid safetensors; the message names the file and the problem."""


def _read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a ``.safetensors`` file and its length in bytes."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise SafetensorsError(f"{path}: header of {n} bytes is not plausible")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(
            f"{path}: header is a JSON {type(header).__name__}, not an object of tensors"
        )
    return header, n


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file (``{}`` when it has none); reads
    only the header."""
    path = Path(path)
    meta = _read_header(path)[0].get("__metadata__", {})
    if not isinstance(meta, dict):
        raise SafetensorsError(f"{path}: __metadata__ is not an object of strings")
    return meta


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as NumPy arrays (memory-mapped, read-only)."""
    path = Path(path)
    header, n = _read_header(path)
    buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(path, name, info)
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or end > buffer.size:
            raise SafetensorsError(f"{path}: tensor {name}: data_offsets do not match its shape")
        out[name] = buffer[begin:end].view(dtype).reshape(shape)
    return out


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _entry(path: Path, name: str, info: object) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, checked (hostile files included)."""

    def bad(what: str) -> SafetensorsError:
        return SafetensorsError(f"{path}: tensor {name}: {what}")

    if not isinstance(info, dict):
        raise bad(f"entry is a JSON {type(info).__name__}, not an object")
    dtype = _DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise bad(f"unsupported dtype {info.get('dtype')}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"shape must be a list of non-negative integers, got {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def write_safetensors(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write NumPy arrays as a ``.safetensors`` file (C order, little-endian)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs, offset = [], 0
    for name, array in tensors.items():
        a = np.ascontiguousarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        key = _NAMES.get(a.dtype)
        if key is None:
            raise SafetensorsError(f"tensor {name}: dtype {a.dtype} cannot be written")
        data = a.tobytes()
        header[name] = {
            "dtype": key,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the buffer to 8 bytes, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)
