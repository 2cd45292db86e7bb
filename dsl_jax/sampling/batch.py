"""Batches of prompts of different lengths for the samplers.

Prompts are left-padded to a common length P, rounded up to the next of a geometric
series of buckets (32, 48, 64, 96, 128, 192, 256, ...: factor 1.5 then 4/3, every one a
multiple of 16) so that a sweep compiles a handful of shapes (about two per doubling of
the prompt length, and at most a third of P wasted on padding), followed by the G
response positions. The attention mask
is 1 on real prompt tokens and on every response position; the RoPE positions are
``cumsum(mask) - 1`` (0 on padding), so each row computes exactly what it would alone.
Each row carries its own PRNG key, derived from its seed or from (seed, its index in the
caller's prompt list), never from its place in a batch; with ``shared_seed`` every row
takes the key of ``seed`` itself, as the authors' evaluation seeds each example alike.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from dsl_jax.errors import require

BUCKET = 32  # the smallest bucket


def buckets(bucket: int = BUCKET, limit: int | None = None, upto: int | None = None) -> list[int]:
    """The geometric series of bucket lengths ``bucket`` x (1, 1.5, 2, 3, 4, 6, 8, ...)
    (each 1.5 or 4/3 times the one before), up to the first one >= ``upto`` (default:
    ``limit``), capped at ``limit`` (which then ends the list)."""
    require(isinstance(bucket, (int, np.integer)) and bucket >= 2 and bucket % 2 == 0,
            f"bucket must be an even integer >= 2, got {bucket!r}")
    top = upto if upto is not None else limit
    require(top is not None, "buckets: give limit or upto")
    out, i = [], 0
    while True:
        p = (int(bucket) << (i // 2)) * (3 if i % 2 else 2) // 2  # bucket x 2^(i//2) (x 1.5)
        if limit is not None and p >= limit:
            out.append(int(limit))
            return out
        out.append(p)
        if p >= top:
            return out
        i += 1


def bucket_length(n: int, bucket: int = BUCKET, limit: int | None = None) -> int:
    """n rounded up to the next of the geometric bucket lengths (:func:`buckets`: with
    ``bucket`` 32: 32, 48, 64, 96, 128, 192, ...), but not above ``limit`` (if given)."""
    return buckets(bucket, limit, upto=max(int(n), 1))[-1]


@dataclasses.dataclass
class Batch:
    prompt_ids: np.ndarray  # [B, P] int32, left-padded
    attention_mask: np.ndarray  # [B, P + G] bool
    positions: np.ndarray  # [B, P + G] int32
    keys: np.ndarray  # [B, 2] uint32 raw PRNG keys
    n_real: int  # rows that are real prompts (the rest are dummies)


def row_key(seed: int, index: int, seeds: Sequence[int] | None = None,
            shared_seed: bool = False) -> np.ndarray:
    """The raw [2] uint32 PRNG key of prompt ``index``: ``seeds[index]``'s when given, else
    ``seed``'s for every prompt when ``shared_seed``, else (``seed``, ``index``)'s."""
    if seeds is not None:
        return np.asarray(jax.random.PRNGKey(int(seeds[index])))
    if shared_seed:
        return np.asarray(jax.random.PRNGKey(int(seed)))
    return np.asarray(jax.random.fold_in(jax.random.PRNGKey(int(seed)), int(index)))


def make_batch(prompts: Sequence[Sequence[int]], keys: Sequence[np.ndarray], gen_length: int,
               pad_id: int, rows: int, prompt_length: int) -> Batch:
    """Left-pad ``prompts`` to ``prompt_length`` and add dummy rows up to ``rows``."""
    n = len(prompts)
    require(n <= rows, f"{n} prompts do not fit a batch of {rows}")
    P, G = prompt_length, gen_length
    ids = np.full((rows, P), pad_id, np.int32)
    mask = np.zeros((rows, P + G), bool)
    mask[:, P:] = True
    key_arr = np.zeros((rows, 2), np.uint32)
    for i, (p, k) in enumerate(zip(prompts, keys)):
        require(len(p) <= P, f"prompt of {len(p)} tokens exceeds the batch's length {P}")
        if len(p):
            ids[i, P - len(p):] = np.asarray(p, np.int32)
            mask[i, P - len(p):P] = True
        key_arr[i] = k
    # Dummy rows: a one-token prompt, so no row has an empty attention set.
    for i in range(n, rows):
        if P:
            mask[i, P - 1] = True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return Batch(ids, mask, positions, key_arr, n)


def batch_devices(mesh) -> int:
    """How many ways the batch is split (the mesh's batch axes, ``sharding.batch_axes``)."""
    from dsl_jax.sharding import batch_axes_size
    return int(batch_axes_size(mesh))


def shard_batch(batch: Batch, mesh):
    """Device arrays of a batch, the batch dimension split over the mesh's batch axes."""
    from dsl_jax.sharding import batch_sharding
    put = lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim))  # noqa: E731
    return (put(batch.prompt_ids), put(batch.attention_mask), put(batch.positions),
            put(batch.keys))
