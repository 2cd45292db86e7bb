"""Lazy reading and streaming writing of Hugging Face checkpoint directories.

A Hugging Face LLaDA directory holds ``config.json`` and either safetensors shards
with ``model.safetensors.index.json`` (its ``weight_map`` says which file holds each
key), a single ``model.safetensors``, or the same with PyTorch ``.bin`` pickles.

Safetensors files are read here directly: the header (8-byte little-endian length,
then JSON) is parsed and validated up front, and a tensor's bytes (or a range of
its rows) are read with ``readinto`` into a fresh numpy buffer only when asked for.
Nothing is memory-mapped, so resident memory holds only what is being converted.
The directory may be on a bucket (``gs://...``): files are then read through
``dsl_jax.storage`` with the same seeks and byte ranges. ``.bin`` pickles go through
``torch.load(mmap=True)`` when torch is installed (read whole into memory from a bucket).

Writing is streaming too: :class:`SafetensorsWriter` writes the header first (every
tensor's shape and dtype is known in advance) and then each tensor at its offset,
in any order, so one tensor at a time is in memory; a file for a bucket is written to a
local temporary file and uploaded (streamed) when closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from typing import Iterable

import ml_dtypes
import numpy as np

from dsl_jax import storage
from dsl_jax.conversion.torch_reference import TORCH_EXTRA
from dsl_jax.errors import UserError, require
from dsl_jax.textfiles import read_json

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SINGLE_FILE = "pytorch_model.bin"
MAX_HEADER_BYTES = 100 * 1024 * 1024

ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NP_TO_ST = {v: k for k, v in ST_DTYPES.items()}
# What a weight tensor may be stored as: every parameter of the model is a float.
FLOAT_ST = ("F32", "F16", "BF16")


def require_float(ref: "TensorRef") -> None:
    """One line naming the file, the key and the dtype unless tensor ``ref`` is stored as
    F32, F16 or BF16 (an integer tensor read as weights would be garbage, not an error)."""
    name = NP_TO_ST.get(np.dtype(ref.dtype), str(ref.dtype))
    require(name in FLOAT_ST, f"{ref.path}: tensor {ref.key} has dtype {name}, expected a "
            f"float tensor ({', '.join(FLOAT_ST)})")


def _errors(path: str):
    """A bucket's storage errors as one line; a local OSError unchanged (as before)."""
    return storage.user_errors(path) if storage.is_remote(path) else contextlib.nullcontext()


def st_dtype_name(dtype) -> str:
    dtype = np.dtype(dtype)
    require(dtype in NP_TO_ST, f"dtype {dtype} cannot be stored in safetensors")
    return NP_TO_ST[dtype]


@dataclass
class TensorRef:
    """Where one tensor lives: its file, key, dtype, shape and byte range."""

    key: str
    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int = 0  # absolute byte offset in the file (safetensors)
    nbytes: int = 0
    source: "HFCheckpoint | None" = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def read(self, rows: slice | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor (or rows ``rows`` of its first axis) as a fresh numpy array, or
        read into ``out`` (C-contiguous, this tensor's dtype and the rows' shape)."""
        if self.path.endswith(".bin"):
            value = self.source._read_bin(self, rows)
            if out is not None:
                out[...] = value
                return out
            return value
        shape = self.shape
        start, count = self.start, self.size
        if rows is not None and len(shape) >= 1:
            r0, r1, step = rows.indices(shape[0])
            require(step == 1, "internal: row slices must be contiguous")
            row = int(np.prod(shape[1:], dtype=np.int64))
            start += r0 * row * self.dtype.itemsize
            count = (r1 - r0) * row
            shape = (r1 - r0, *shape[1:])
        if out is None:
            out = np.empty(shape, self.dtype)
        else:
            require(out.dtype == self.dtype and tuple(out.shape) == tuple(shape)
                    and out.flags.c_contiguous, f"internal: bad buffer for {self.key}")
        buf = memoryview(out.reshape(-1).view(np.uint8))
        with _errors(self.path), storage.open(self.path, "rb") as f:
            f.seek(start)
            got = f.readinto(buf)
        require(got == count * self.dtype.itemsize,
                f"{self.path}: truncated while reading tensor {self.key} "
                f"(got {got} of {count * self.dtype.itemsize} bytes)")
        return out


def read_safetensors_header(path: str) -> dict[str, TensorRef]:
    """Parse and validate a safetensors header; returns key -> TensorRef.

    Catches truncated files (data ranges past the end of the file), garbage headers
    and overlapping ranges before any tensor data is read.
    """
    require(storage.isfile(path), f"{path}: missing safetensors file")
    with _errors(path), storage.open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(8)
        require(len(head) == 8, f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        require(0 < n <= MAX_HEADER_BYTES and 8 + n <= size,
                f"{path}: truncated or corrupt safetensors file (header of {n} bytes, "
                f"file of {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    require(isinstance(header, dict), f"{path}: corrupt safetensors header")
    base = 8 + n
    out: dict[str, TensorRef] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype_name, shape, (s, e) = info["dtype"], tuple(int(x) for x in info["shape"]), \
                info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: corrupt safetensors header entry for {key}") from None
        require(isinstance(dtype_name, str) and dtype_name in ST_DTYPES,
                f"{path}: tensor {key} has unsupported dtype {dtype_name}")
        require(all(type(x) is int and x >= 0 for x in (s, e)) and
                all(type(x) is int and x >= 0 for x in info["shape"]),
                f"{path}: corrupt safetensors header: tensor {key} has data_offsets "
                f"{[s, e]} and shape {info['shape']}, expected non-negative integers")
        dtype = ST_DTYPES[dtype_name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        require(e - s == nbytes,
                f"{path}: corrupt safetensors header: tensor {key} has {e - s} bytes for shape "
                f"{list(shape)} {dtype_name}")
        require(base + e <= size,
                f"{path}: truncated safetensors file: tensor {key} ends at byte {base + e} "
                f"but the file has {size} bytes")
        out[key] = TensorRef(key, path, dtype, shape, base + s, nbytes)
    spans = sorted((r.start, r.start + r.nbytes, k) for k, r in out.items() if r.nbytes)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        require(start >= end, f"{path}: corrupt safetensors header: tensors {a} and {b} "
                "overlap in data_offsets")
    return out


class HFCheckpoint:
    """A Hugging Face checkpoint directory, opened lazily.

    ``tensors`` maps every key to a :class:`TensorRef`; nothing is read until
    ``ref.read()``. ``config_path`` is the directory's ``config.json``.
    """

    def __init__(self, hf_dir: str):
        hf_dir = str(hf_dir).rstrip("/") if storage.is_remote(hf_dir) else hf_dir
        require(storage.isdir(hf_dir), f"{hf_dir}: no such directory")
        self.dir = hf_dir
        self.config_path = storage.join(hf_dir, "config.json")
        require(storage.isfile(self.config_path), f"{self.config_path}: missing config.json")
        self._bin_cache: dict[str, dict] = {}
        self.tensors: dict[str, TensorRef] = {}
        files = self._files()
        for name, keys in files.items():
            path = storage.join(hf_dir, name)
            require(storage.isfile(path), f"{path}: missing shard (listed in the index)")
            refs = self._bin_header(path) if name.endswith(".bin") else read_safetensors_header(path)
            if keys is not None:
                listed = set(keys)
                absent = sorted(listed - set(refs))
                if absent:
                    raise UserError(f"{path}: key {absent[0]} is listed in the index but not "
                                    "in this file")
                refs = {k: v for k, v in refs.items() if k in listed}
            for key, ref in refs.items():
                if key in self.tensors:
                    raise UserError(f"{path}: key {key} appears in two files "
                                    f"({self.tensors[key].path})")
                ref.source = self
                self.tensors[key] = ref

    def _files(self) -> dict[str, list[str] | None]:
        """file name -> keys it should hold (None: all of them)."""
        for index_name in (INDEX_FILE, BIN_INDEX_FILE):
            index_path = storage.join(self.dir, index_name)
            if storage.isfile(index_path):
                wm = read_json(index_path, obj=True).get("weight_map")
                require(isinstance(wm, dict) and wm, f"{index_path}: no weight_map")
                files: dict[str, list[str]] = {}
                for key, name in wm.items():
                    require(isinstance(name, str) and "/" not in name and name not in ("", ".", ".."),
                            f"{index_path}: bad file name {name!r} for key {key}")
                    files.setdefault(name, []).append(key)
                return files
        for single in (SINGLE_FILE, BIN_SINGLE_FILE):
            if storage.isfile(storage.join(self.dir, single)):
                return {single: None}
        raise UserError(f"{self.dir}: no {INDEX_FILE}, {SINGLE_FILE}, {BIN_INDEX_FILE} or "
                        f"{BIN_SINGLE_FILE}")

    # ---- .bin pickles through torch ----------------------------------------------

    def _bin_state(self, path: str) -> dict:
        if path not in self._bin_cache:
            try:
                import torch
            except ImportError:
                raise UserError(f"{path}: reading PyTorch .bin files needs torch: "
                                f"{TORCH_EXTRA}") from None
            try:
                if storage.is_remote(path):  # no mmap of a bucket object: read it whole
                    with storage.user_errors(path), storage.open(path, "rb") as f:
                        state = torch.load(f, map_location="cpu", weights_only=True)
                else:
                    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001  (corrupt pickles raise many types)
                raise UserError(f"{path}: cannot read PyTorch file ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
            require(isinstance(state, dict), f"{path}: expected a state dict")
            self._bin_cache[path] = state
        return self._bin_cache[path]

    def _bin_header(self, path: str) -> dict[str, TensorRef]:
        state = self._bin_state(path)  # checks that torch is there
        import torch
        names = {torch.float32: np.float32, torch.float16: np.float16,
                 torch.bfloat16: ml_dtypes.bfloat16, torch.float64: np.float64}
        out = {}
        for key, t in state.items():
            require(t.dtype in names, f"{path}: tensor {key} has unsupported dtype {t.dtype}")
            dt = np.dtype(names[t.dtype])
            out[key] = TensorRef(key, path, dt, tuple(t.shape), 0, t.numel() * dt.itemsize)
        return out

    def _read_bin(self, ref: TensorRef, rows: slice | None) -> np.ndarray:
        import torch
        t = self._bin_state(ref.path)[ref.key]
        if rows is not None:
            t = t[rows]
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
        return t.numpy().copy()

    # ---- helpers -------------------------------------------------------------------

    def total_bytes(self, keys: Iterable[str] | None = None) -> int:
        keys = self.tensors if keys is None else keys
        return sum(self.tensors[k].nbytes for k in keys)

    def read(self, key: str) -> np.ndarray:
        return self.tensors[key].read()


class SafetensorsWriter:
    """Write one safetensors file: header first, then tensors at their offsets, in any order."""

    def __init__(self, path: str, entries: list[tuple[str, np.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = path
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        self.offsets: dict[str, tuple[int, int, np.dtype, tuple[int, ...]]] = {}
        pos = 0
        for key, dtype, shape in entries:
            dtype = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[key] = {"dtype": st_dtype_name(dtype), "shape": list(shape),
                           "data_offsets": [pos, pos + n]}
            self.offsets[key] = (pos, n, dtype, tuple(shape))
            pos += n
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self.base = 8 + len(raw)
        self.data_bytes = pos
        # A bucket object cannot be written at offsets: stage it locally, upload on close.
        self.local = path
        if storage.is_remote(path):
            fd, self.local = tempfile.mkstemp(suffix=".safetensors")
            os.close(fd)
        with storage.named_errors(self.local):
            self.f = open(self.local, "wb")
        self.written: set[str] = set()
        self._write(struct.pack("<Q", len(raw)) + raw)
        with storage.named_errors(self.path):
            self.f.truncate(self.base + pos)

    def _write(self, data) -> None:
        """Write ``data`` at the file position; an OSError (a full disk) names the file."""
        with storage.named_errors(self.path):
            self.f.write(data)

    def write(self, key: str, value: np.ndarray) -> None:
        start, n, dtype, shape = self.offsets[key]
        value = np.ascontiguousarray(value).reshape(np.shape(value))
        require(value.dtype == dtype and tuple(value.shape) == shape,
                f"internal: {key} is {value.dtype}{list(value.shape)}, header says "
                f"{dtype}{list(shape)}")
        self.f.seek(self.base + start)
        self._write(memoryview(value.reshape(-1).view(np.uint8)))
        self.written.add(key)

    def write_rows(self, key: str, value, chunk_bytes: int = 16 * 1024 * 1024) -> None:
        """Write ``value`` (any array-like view, e.g. a transpose) row chunk by row chunk,
        so that no contiguous copy of the whole tensor is made."""
        start, n, dtype, shape = self.offsets[key]
        require(tuple(np.shape(value)) == shape,
                f"internal: {key} has shape {list(np.shape(value))}, header says {list(shape)}")
        if len(shape) < 2:
            return self.write(key, np.asarray(value, dtype))
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        step = max(1, chunk_bytes // max(1, row_bytes))
        self.f.seek(self.base + start)
        for a in range(0, shape[0], step):
            part = np.ascontiguousarray(value[a:a + step], dtype=dtype)
            self._write(memoryview(part.reshape(-1).view(np.uint8)))
        self.written.add(key)

    def close(self) -> None:
        missing = set(self.offsets) - self.written
        try:
            with storage.named_errors(self.path):
                self.f.flush()
                os.fsync(self.f.fileno())
                self.f.close()
            require(not missing,
                    f"internal: {self.path}: tensors never written: {sorted(missing)[:3]}")
            if self.local != self.path:
                with storage.user_errors(self.path), open(self.local, "rb") as src, \
                        storage.open(self.path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close the file without finishing it; a local staging copy is removed. Never
        raises (it runs while another error is on its way: a full disk fails the
        close's flush again)."""
        with contextlib.suppress(OSError):
            self.f.close()
        if self.local != self.path and os.path.exists(self.local):
            os.remove(self.local)


def plan_shards(entries: list[tuple[str, np.dtype, tuple[int, ...]]], max_shard_bytes: int
                ) -> list[list[tuple[str, np.dtype, tuple[int, ...]]]]:
    """Split (key, dtype, shape) entries, in order, into files of at most ``max_shard_bytes``
    (a single larger tensor gets a file of its own)."""
    shards: list[list] = [[]]
    size = 0
    for key, dtype, shape in entries:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, dtype, shape))
        size += n
    return shards


def shard_name(i: int, n: int) -> str:
    return SINGLE_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
