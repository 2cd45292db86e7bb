"""LLaDA, the masked-diffusion transformer, in Flax NNX (docs/method.md section 1).

A Llama-style block with bidirectional attention: RMSNorm (float32 island), q/k/v
projections, half-split RoPE in float32, attention with an optional key-padding mask
(:func:`dsl_jax.attention.attend`: XLA/cuDNN, or the Pallas splash kernel on TPU, as
``cfg.attention`` says; keys may include a :class:`KVCache`), output projection, SwiGLU MLP, untied LM head, no
biases. The layers' weights are stacked on a leading ``layers`` axis and run by
``jax.lax.scan`` with a configurable rematerialisation policy.

Parameter layout (logical axes in brackets, PyTorch ``Linear`` weights transposed):

    embed      [vocab, embed]                 model.transformer.wte.weight
    blocks.wq  [layers, embed, heads, head_dim]      blocks.i.q_proj.weight
    blocks.wk  [layers, embed, kv_heads, head_dim]   blocks.i.k_proj.weight
    blocks.wv  [layers, embed, kv_heads, head_dim]   blocks.i.v_proj.weight
    blocks.wo  [layers, heads, head_dim, embed]      blocks.i.attn_out.weight
    blocks.w_gate [layers, embed, mlp]               blocks.i.ff_proj.weight
    blocks.w_up   [layers, embed, mlp]               blocks.i.up_proj.weight
    blocks.w_down [layers, mlp, embed]               blocks.i.ff_out.weight
    blocks.attn_norm, blocks.ff_norm [layers, norm]  blocks.i.{attn,ff}_norm.weight
    ln_f       [norm]                         model.transformer.ln_f.weight
    lm_head    [embed, vocab]                 model.transformer.ff_out.weight
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsl_jax.attention import attend
from dsl_jax.config import ModelConfig
from dsl_jax.errors import UserError, require
from dsl_jax.sharding import constrain

INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape, axes, dtype, init: str = "normal") -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = (INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=tuple(axes))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """LLaDA's RMSNorm: normalise in float32, cast back to x's dtype, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return x32.astype(x.dtype) * weight.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, head_dim // 2] in float32 for integer positions [B, T]."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Half-split ("rotate_half") rotary embedding on [B, T, heads, head_dim], in float32."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(dtype)


_REMAT = {
    "full": None,  # save nothing inside a layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Blocks(nnx.Module):
    """The transformer layers' weights, stacked on a leading ``layers`` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        L, D, H, K, Dh, F = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads,
                             cfg.head_dim, cfg.mlp_hidden_size)
        dt = jnp.dtype(cfg.param_dtype)
        self.attn_norm = _param(rngs, (L, D), ("layers", "norm"), dt, "ones")
        self.wq = _param(rngs, (L, D, H, Dh), ("layers", "embed", "heads", "head_dim"), dt)
        self.wk = _param(rngs, (L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.wv = _param(rngs, (L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.wo = _param(rngs, (L, H, Dh, D), ("layers", "heads", "head_dim", "embed"), dt)
        self.ff_norm = _param(rngs, (L, D), ("layers", "norm"), dt, "ones")
        self.w_gate = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), dt)
        self.w_up = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), dt)
        self.w_down = _param(rngs, (L, F, D), ("layers", "mlp", "embed"), dt)

    def weights(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in (
            "attn_norm", "wq", "wk", "wv", "wo", "ff_norm", "w_gate", "w_up", "w_down")}


class KVCache(NamedTuple):
    """Keys (after RoPE) and values of some positions, every layer stacked, and their mask.

    ``k``, ``v`` [layers, B, S, kv_heads, head_dim]; ``mask`` [B, S] bool (True: a real
    position). The positions need not be contiguous nor ordered: attention is
    bidirectional and each key carries its own rotary position.
    """
    k: jax.Array
    v: jax.Array
    mask: jax.Array

    def take(self, start: int, stop: int) -> "KVCache":
        """The positions ``start:stop`` (static ints) of the length axis."""
        return KVCache(self.k[:, :, start:stop], self.v[:, :, start:stop],
                       self.mask[:, start:stop])

    @staticmethod
    def concat(caches) -> "KVCache":
        """Several caches' positions side by side (same layers and batch)."""
        caches = list(caches)
        return KVCache(jnp.concatenate([c.k for c in caches], axis=2),
                       jnp.concatenate([c.v for c in caches], axis=2),
                       jnp.concatenate([c.mask for c in caches], axis=1))


def block_forward(x, p, cos, sin, mask, cfg: ModelConfig, cached=None):
    """One LLaDA layer on x [B, T, D] with this layer's weights ``p``; ``mask`` [B, T] is
    x's key mask (None: all real). ``cached`` (k [B, S, K, Dh], v, mask [B, S]) are
    extra keys/values the queries also attend to. Returns (x, (k, v) of x's positions)."""
    dt = x.dtype
    h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dhk->bthk", h, p["wq"].astype(dt))
    k = jnp.einsum("btd,dhk->bthk", h, p["wk"].astype(dt))
    v = jnp.einsum("btd,dhk->bthk", h, p["wv"].astype(dt))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    keys, values, key_mask = k, v, mask
    if cached is not None:
        ck, cv, cmask = cached
        keys = jnp.concatenate([ck.astype(dt), k], axis=1)
        values = jnp.concatenate([cv.astype(dt), v], axis=1)
        own = jnp.ones(x.shape[:2], jnp.bool_) if mask is None else mask.astype(jnp.bool_)
        key_mask = jnp.concatenate([cmask.astype(jnp.bool_), own], axis=1)
    a = attend(q, keys, values, key_mask, cfg)
    x = x + jnp.einsum("bthk,hkd->btd", a, p["wo"].astype(dt))
    x = constrain(x, ("batch", "length", "act_embed"))
    m = rms_norm(x, p["ff_norm"], cfg.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", m, p["w_gate"].astype(dt))
    up = jnp.einsum("btd,df->btf", m, p["w_up"].astype(dt))
    x = x + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["w_down"].astype(dt))
    return constrain(x, ("batch", "length", "act_embed")), (k, v)


class LLaDA(nnx.Module):
    """LLaDA-8B-Instruct's architecture at any size.

    ``model(ids)`` maps int32 ids [B, T] to float32 logits [B, T, vocab].
    ``model(inputs_embeds=e)`` takes embeddings [B, T, d_model] instead (the DSL
    converter's output); ``return_hidden=True`` returns the final residual stream
    [B, T, d_model] so that :meth:`head` runs only where logits are needed.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = jnp.dtype(cfg.param_dtype)
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), dt)
        self.blocks = Blocks(cfg, rngs)
        self.ln_f = _param(rngs, (cfg.d_model,), ("norm",), dt, "ones")
        self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), dt)

    # -- pieces -------------------------------------------------------------------

    def embed_ids(self, ids: jax.Array) -> jax.Array:
        """Token embeddings wte[ids] in the compute dtype."""
        return jnp.take(self.embed[...], ids, axis=0).astype(self.cfg.dtype)

    def head(self, hidden: jax.Array) -> jax.Array:
        """Final norm and LM head: hidden [..., d_model] -> float32 logits [..., vocab]."""
        h = rms_norm(hidden, self.ln_f[...], self.cfg.rms_norm_eps)
        return jnp.einsum("...d,dv->...v", h, self.lm_head[...].astype(h.dtype),
                          preferred_element_type=jnp.float32)

    def hidden_states(self, x: jax.Array, attention_mask: jax.Array | None = None,
                      positions: jax.Array | None = None, *, cache: KVCache | None = None,
                      return_kv: bool = False):
        """Run the layers on input embeddings x [B, T, d_model] -> [B, T, d_model].

        ``cache``: keys/values of other positions (a prompt's, say) that x's positions
        attend to as well, computed by an earlier call; ``positions`` are then x's own
        RoPE positions. ``return_kv``: also return the :class:`KVCache` of x's positions
        (mask: ``attention_mask`` or all True)."""
        cfg = self.cfg
        B, T = x.shape[:2]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        mask = None if attention_mask is None else attention_mask.astype(jnp.bool_)
        x = constrain(x.astype(cfg.dtype), ("batch", "length", "act_embed"))

        def layer(carry, xs):
            p, cached = xs
            carry, kv = block_forward(carry, p, cos, sin, mask, cfg, cached)
            return carry, (kv if return_kv else None)

        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=_REMAT[cfg.remat], prevent_cse=False)
        cached = None if cache is None else (cache.k, cache.v,
                                             jnp.broadcast_to(cache.mask, (cfg.n_layers,)
                                                              + cache.mask.shape))
        x, kv = jax.lax.scan(layer, x, (self.blocks.weights(), cached))
        if not return_kv:
            return x
        own = jnp.ones((B, T), jnp.bool_) if mask is None else mask
        return x, KVCache(kv[0], kv[1], own)

    # -- the forward --------------------------------------------------------------

    def __call__(self, ids: jax.Array | None = None, *, inputs_embeds: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 return_hidden: bool = False, cache: KVCache | None = None,
                 return_kv: bool = False):
        """Logits [B, T, vocab] (float32), or hidden states with ``return_hidden``.

        ``attention_mask`` [B, T] is a key-padding mask: True (or 1) for real tokens.
        ``positions`` [B, T] are the RoPE positions (default 0..T-1); with left padding,
        pass ``cumsum(mask) - 1`` so each row's real tokens sit at 0, 1, ...
        ``cache`` / ``return_kv``: see :meth:`hidden_states` (with ``return_kv`` the result
        is a pair (logits or hidden, :class:`KVCache`)).
        """
        require((ids is None) != (inputs_embeds is None),
                "LLaDA: pass exactly one of ids or inputs_embeds")
        if ids is not None:
            check_ids(ids, self.cfg)
            x = self.embed_ids(ids)
        else:
            require(inputs_embeds.ndim == 3 and inputs_embeds.shape[-1] == self.cfg.d_model,
                    f"LLaDA: inputs_embeds must be [batch, length, {self.cfg.d_model}], "
                    f"got {list(inputs_embeds.shape)}")
            check_length(inputs_embeds.shape[1], self.cfg)
            x = inputs_embeds
        if attention_mask is not None:
            require(tuple(attention_mask.shape) == tuple(x.shape[:2]),
                    f"LLaDA: attention_mask shape {list(attention_mask.shape)} does not match "
                    f"the input's [batch, length] {list(x.shape[:2])}")
        out = self.hidden_states(x, attention_mask, positions, cache=cache, return_kv=return_kv)
        h, kv = out if return_kv else (out, None)
        h = h if return_hidden else self.head(h)
        return (h, kv) if return_kv else h


def check_length(length: int, cfg: ModelConfig) -> None:
    require(length <= cfg.max_sequence_length,
            f"sequence length {length} exceeds the model's maximum {cfg.max_sequence_length}")


def check_ids(ids, cfg: ModelConfig) -> None:
    """Shape, dtype and (for concrete arrays) range checks on token ids."""
    require(getattr(ids, "ndim", None) == 2, f"LLaDA: ids must be [batch, length], got shape "
            f"{list(getattr(ids, 'shape', []))}")
    require(jnp.issubdtype(ids.dtype, jnp.integer), f"LLaDA: ids must be integers, got {ids.dtype}")
    check_length(ids.shape[1], cfg)
    if not isinstance(ids, jax.core.Tracer) and ids.size:
        lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise UserError(f"token id {bad} is out of range for vocabulary size {cfg.vocab_size}")


def build(cfg: ModelConfig, seed: int = 0):
    """A zero-argument constructor (for ``nnx.eval_shape`` and sharded creation)."""
    return lambda: LLaDA(cfg, rngs=nnx.Rngs(params=seed))


def create(cfg: ModelConfig, mesh=None, seed: int = 0) -> LLaDA:
    """A randomly initialised LLaDA with parameters created sharded on ``mesh``."""
    from dsl_jax.sharding import create_sharded, make_mesh
    return create_sharded(build(cfg, seed), mesh if mesh is not None else make_mesh())


def forward_fn(graphdef):
    """A pure (state, ids, mask) -> logits function for jit and AOT compilation."""

    def fwd(state, ids, attention_mask=None):
        model = nnx.merge(graphdef, state)
        return model(ids, attention_mask=attention_mask)

    return fwd
