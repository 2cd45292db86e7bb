"""Attention kernels behind one call, :func:`attend` (docs/method.md section 1).

LLaDA's attention is bidirectional with a key-padding mask only: every query sees every
real key of its row. :func:`attend` takes queries [B, T, heads, head_dim], keys and values
[B, S, kv_heads, head_dim] (S may differ from T when keys come from a cache) and a key
mask [B, S] (True: a real key), and runs the kernel that ``cfg.attention`` names:

- ``xla`` / ``cudnn``: ``jax.nn.dot_product_attention`` with that implementation;
- ``splash``: the Pallas TPU splash-attention kernel
  (``jax.experimental.pallas.ops.tpu.splash_attention``), :func:`splash_attend`; off a TPU
  target it runs in Pallas interpret mode (slow: for tests);
- ``auto``: ``splash`` when the program is for TPU (:func:`target_platform`: the mesh's
  devices, which are TPUs also when compiling ahead of time on a CPU host), else
  ``jax.nn.dot_product_attention``'s own choice.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P

from dsl_jax.config import ModelConfig

SPLASH_BLOCKS = (512, 256, 128)  # block sizes tried, largest first; all multiples of 128
_LANES = 128  # the kernel's sequence blocks (and so T and S) are multiples of this


def target_platform() -> str:
    """The platform the program being traced is for: the devices of the mesh set with
    ``jax.set_mesh`` (compile-only TPU devices when compiling ahead of time), else
    ``jax.default_backend()``."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty:
        platform = getattr(getattr(mesh, "abstract_device", None), "platform", None)
        if platform:
            return platform
    return jax.default_backend()


def kernel_for(attention: str) -> str:
    """The kernel ``attention`` (a :data:`dsl_jax.config.ATTENTION_IMPLS` name) runs as
    here: ``splash``, ``xla``, ``cudnn``, or ``auto`` (dot_product_attention's choice)."""
    if attention == "auto" and target_platform() == "tpu":
        return "splash"
    return attention


def attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
           cfg: ModelConfig) -> jax.Array:
    """Bidirectional attention of q over (k, v) with a key-padding mask -> [B, T, heads, head_dim]."""
    impl = kernel_for(cfg.attention)
    if impl == "splash":
        return splash_attend(q, k, v, key_mask, interpret=target_platform() != "tpu")
    mask = None if key_mask is None else key_mask.astype(jnp.bool_)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask,
                                        implementation=None if impl == "auto" else impl)


# ---- splash attention (Pallas, TPU) ------------------------------------------------------

def splash_blocks(n: int) -> tuple[int, int]:
    """(block size, padded length) of a sequence of ``n`` for the kernel: the length is
    rounded up to a multiple of 128 and the block is the largest of
    :data:`SPLASH_BLOCKS` that divides it."""
    padded = -(-n // _LANES) * _LANES
    return next(b for b in SPLASH_BLOCKS if padded % b == 0), padded


def splash_attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, *,
                  interpret: bool = False) -> jax.Array:
    """:func:`attend` with the splash kernel. Under a mesh the kernel runs per device
    (``shard_map``): the batch split as the activations are (``batch`` rule), the heads
    over ``tensor`` when both head counts divide over it, the rest replicated."""
    fn = functools.partial(_splash_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1 or any(
            t != AxisType.Auto for t in mesh.axis_types):
        return fn(q, k, v, key_mask)
    from dsl_jax.sharding import spec_for

    B, _, H, _ = q.shape
    K = k.shape[2]
    batch = spec_for(("batch",), (B,), mesh)[0]
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    t = sizes.get("tensor", 1)
    heads = "tensor" if t > 1 and H % t == 0 and K % t == 0 else None
    qspec, kspec = P(batch, None, heads, None), P(batch, None, heads, None)
    if key_mask is None:
        key_mask = jnp.ones(k.shape[:2], jnp.bool_)
    return jax.shard_map(fn, mesh=mesh, in_specs=(qspec, kspec, kspec, P(batch, None)),
                         out_specs=qspec, check_vma=False)(q, k, v, key_mask)


def _splash_local(q, k, v, key_mask, *, interpret: bool):
    """The kernel on one device's q [B, T, H, Dh], k/v [B, S, K, Dh], key_mask [B, S]."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    bq, Tp = splash_blocks(T)
    bkv, Sp = splash_blocks(S)
    # The kernel takes no softmax scale: scale q (in float32, then back) by 1/sqrt(Dh),
    # the scale of the XLA path.
    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(Dh))).astype(q.dtype)
    # Head-major layout [B, heads, length, Dh], lengths padded to whole blocks.
    q = jnp.pad(jnp.swapaxes(q, 1, 2), ((0, 0), (0, 0), (0, Tp - T), (0, 0)))
    k = jnp.pad(jnp.swapaxes(k, 1, 2), ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
    v = jnp.pad(jnp.swapaxes(v, 1, 2), ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
    # Key padding as segment ids: every query (real, padded or block padding) is segment
    # 1, real keys 1, masked and block-padding keys 0, so each query sees exactly its
    # row's real keys. A row with no real key at all gets the mean of the Sp values (the
    # kernel's mask value is finite): no NaN.
    real = (jnp.ones((B, S), jnp.int32) if key_mask is None
            else key_mask.astype(jnp.int32))
    segments = sa.SegmentIds(q=jnp.ones((B, Tp), jnp.int32),
                             kv=jnp.pad(real, ((0, 0), (0, Sp - S))))
    mask = sa.MultiHeadMask([sa.FullMask((Tp, Sp))] * H)
    blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                           block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                           block_q_dq=bq, block_kv_dq=bkv)
    # GQA: the kernel maps query head h to kv head h // (H / K) itself.
    kernel = sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                interpret=interpret)
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=s1))(q, k, v, segments)
    return jnp.swapaxes(out[:, :, :T], 1, 2)
