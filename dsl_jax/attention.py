"""Attention kernels behind one call, :func:`attend` (docs/method.md section 1).

LLaDA's attention is bidirectional with a key-padding mask only: every query sees every
real key of its row. :func:`attend` takes queries [B, T, heads, head_dim], keys and values
[B, S, kv_heads, head_dim] (S may differ from T when keys come from a cache) and a key
mask [B, S] (True: a real key), and runs the kernel that ``cfg.attention`` names:
``jax.nn.dot_product_attention`` with its ``auto`` / ``xla`` / ``cudnn`` implementations.
"""

from __future__ import annotations

import jax

from dsl_jax.config import ModelConfig


def attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
           cfg: ModelConfig) -> jax.Array:
    """Bidirectional attention of q over (k, v) with a key-padding mask -> [B, T, heads, head_dim]."""
    impl = None if cfg.attention == "auto" else cfg.attention
    mask = None if key_mask is None else key_mask.astype(jax.numpy.bool_)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
