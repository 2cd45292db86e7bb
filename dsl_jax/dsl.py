"""The DSL adaptation's model pieces (docs/method.md section 2).

- the noise embedding E [V, d]: Gaussian rows, L2-normalised, frozen;
- the soft-mask converter: converter(z) = W softmax(beta z K^T + b) + c with K = [E; 0],
  the softmax over V + 1 entries in float32, ``chunk_positions`` sequence positions at a
  time with every batch row together (so the batch sharding is kept) and recomputed in
  the backward pass (:func:`map_positions`; never materialised for a whole sequence,
  never stored), for the loss and the samplers alike; with ``DSLConfig.residual`` (the
  released "Highpass" variant) plus a linear map of z's high-pass part (docs/method.md
  section 2);
- the forward noising z = s E[x] + sqrt(s) eps;
- :class:`DSLModel`: LLaDA + noise embedding + converter, the tree that checkpoints
  store under ``model`` and ``dsl``.

Parameter layout of the ``dsl`` group (released DSL-LLaDA keys in brackets):

    noise_embed           [vocab, noise]        noise_embed.weight           (frozen)
    converter.beta        []                    converter.beta
    converter.logit_bias  [vocab_plus]          converter.logit_bias
    converter.w           [vocab_plus, embed]   converter.backbone_embedding.weight (transposed)
    converter.c           [embed]               converter.backbone_embedding.bias
    converter.residual.w  [noise, embed]        converter.residual_proj.weight (transposed)
    converter.residual.c  [embed]               converter.residual_proj.bias

(``converter.residual`` only with ``DSLConfig.residual``; its names ``w`` and ``c`` are the
converter's own, so ``optimizer.no_decay``'s ``c`` covers both biases.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsl_jax.config import ModelConfig
from dsl_jax.errors import require
from dsl_jax.model import LLaDA
from dsl_jax.sharding import constrain


class Frozen(nnx.Variable):
    """A parameter that is never trained (no gradient, no optimizer state)."""


@dataclasses.dataclass(frozen=True)
class DSLConfig:
    noise_dim: int = 100  # d: 100 in the headline "Beta1" model, 48 in other runs
    noise_seed: int = 0  # seed of the noise embedding's Gaussian rows
    beta_init: float = 1.0
    snr_max: float = 100.0  # s_max: ROAR's clean SNRs reach it; the LogNormal clamp follows it
    chunk_positions: int = 1024  # sequence positions (x every batch row) per chunk of the
    # converter's V+1 softmax
    # SNR sampler (training)
    roar_prob: float = 0.1
    roar_clean_frac: float = 0.8  # ROAR's clean positions draw s ~ U[frac * s_max, s_max]
    lognormal_mu: float = 1.69
    lognormal_sigma: float = 0.9
    per_sequence_snr: bool = False
    residual: bool = False  # the converter's high-pass residual path ("Highpass" release)

    @property
    def lognormal_clamp(self) -> float:
        return min(0.4 * self.snr_max, 40.0)

    @property
    def roar_clean_range(self) -> tuple[float, float]:
        """(low, high) of ROAR's clean SNRs: [0.8 s_max, s_max] by default."""
        return self.roar_clean_frac * self.snr_max, self.snr_max

    def __post_init__(self):
        require(self.noise_dim > 0, f"dsl config: noise_dim must be positive, got {self.noise_dim}")
        require(self.snr_max > 0, f"dsl config: snr_max must be positive, got {self.snr_max}")
        require(0 <= self.roar_clean_frac <= 1,
                f"dsl config: roar_clean_frac must be in [0, 1], got {self.roar_clean_frac}")
        require(self.chunk_positions > 0,
                f"dsl config: chunk_positions must be positive, got {self.chunk_positions}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DSLConfig":
        d = dict(d or {})
        if "converter_chunk" in d:  # checkpoints written before the field was renamed
            d.setdefault("chunk_positions", d.pop("converter_chunk"))
        if "roar_clean_min" in d or "roar_clean_max" in d:  # before the range followed s_max
            lo, hi = d.pop("roar_clean_min", 80.0), d.pop("roar_clean_max", 100.0)
            d.setdefault("roar_clean_frac", lo / hi if hi > 0 else 0.8)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        require(not unknown, f"dsl config: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def noise_embedding(vocab_size: int, dim: int, seed: int) -> np.ndarray:
    """E [V, d]: standard Gaussian rows (numpy, seeded), each L2-normalised to unit norm."""
    e = np.random.default_rng(seed).standard_normal((vocab_size, dim), dtype=np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def map_positions(fn, xs, chunk: int):
    """``fn`` applied ``chunk`` sequence positions at a time: ``xs`` is an array or a tuple
    of arrays [B, L, ...], each call gets [B, c, ...] (every batch row, so a batch-sharded
    input stays batch-sharded) and returns an array or a tuple of arrays [B, c, ...],
    put back together to [B, L, ...]. L is zero-padded to a multiple of c; each chunk is
    rematerialised in the backward pass instead of being stored."""
    xs = xs if isinstance(xs, tuple) else (xs,)
    B, L = xs[0].shape[:2]
    c = max(1, min(chunk, L))
    n = -(-L // c)

    def split(x):  # [B, L, ...] -> [n, B, c, ...]
        x = jnp.pad(x, [(0, 0), (0, n * c - L)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(B, n, c, *x.shape[2:]), 0, 1)

    def join(y):  # [n, B, c, ...] -> [B, L, ...]
        return jnp.swapaxes(y, 0, 1).reshape(B, n * c, *y.shape[3:])[:, :L]

    out = jax.lax.map(jax.checkpoint(lambda x: fn(*x)), tuple(split(x) for x in xs))
    return jax.tree.map(join, out)


def converter_apply(z: jax.Array, noise_embed: jax.Array, beta: jax.Array, logit_bias: jax.Array,
                    w: jax.Array, c: jax.Array, chunk: int = 1024,
                    out_dtype=jnp.float32, residual: tuple[jax.Array, jax.Array] | None = None
                    ) -> jax.Array:
    """converter(z) = W softmax(beta z K^T + b) + c for z [B, L, d] (or [L, d]); returns
    [B, L, d_model] (or [L, d_model]) in ``out_dtype``.

    The softmax over V + 1 = |vocab| + 1 entries (the last is the zero "mask slot") is
    computed in float32 for ``chunk`` sequence positions (of every row) at a time,
    rematerialised in the backward pass (:func:`map_positions`).

    ``residual`` = (R [d, d_model], r [d_model]) adds the high-pass path of the
    "Highpass" release: with p the softmax above, u = p E (the soft retrieval's point in
    noise space; the mask slot's row of K is zero), n = u / (|u| + 1e-8) and
    z_hi = z - (z . n) n, the output gains z_hi R + r (z_hi in float32, cast to R's dtype
    for the product).
    """
    require(z.ndim in (2, 3), f"converter: z must be [B, L, d] or [L, d], got shape {z.shape}")
    e32 = noise_embed.astype(jnp.float32)
    b32 = logit_bias.astype(jnp.float32)
    beta32 = jnp.asarray(beta, jnp.float32)
    if residual is not None:  # K = [E; 0]: p K = p[:V] E without slicing the large p
        k32 = jnp.concatenate([e32, jnp.zeros((1, e32.shape[1]), jnp.float32)], axis=0)

    def one(zc):  # [B, c, d] -> [B, c, d_model]
        z32 = zc.astype(jnp.float32)
        scores = beta32 * (z32 @ e32.T)  # the mask slot's score is beta * 0
        scores = jnp.concatenate([scores, jnp.zeros((*zc.shape[:2], 1), jnp.float32)], axis=-1)
        p = jax.nn.softmax(scores + b32, axis=-1)
        h = jnp.einsum("blv,ve->ble", p.astype(w.dtype), w, preferred_element_type=jnp.float32)
        h = h + c.astype(jnp.float32)
        if residual is not None:
            rw, rb = residual
            u = p @ k32  # [B, c, d]
            n = u / (jnp.linalg.norm(u, axis=-1, keepdims=True) + 1e-8)
            z_hi = z32 - jnp.sum(z32 * n, axis=-1, keepdims=True) * n
            h = h + jnp.einsum("bld,de->ble", z_hi.astype(rw.dtype), rw,
                               preferred_element_type=jnp.float32) + rb.astype(jnp.float32)
        return h.astype(out_dtype)

    out = constrain(map_positions(one, z if z.ndim == 3 else z[None], chunk),
                    ("batch", "length", "act_embed"))
    return out if z.ndim == 3 else out[0]


def add_noise(ids: jax.Array, snr: jax.Array, eps: jax.Array, noise_embed: jax.Array) -> jax.Array:
    """z_i = s_i E[x_i] + sqrt(s_i) eps_i in float32; ids [B, L], snr [B, L], eps [B, L, d]."""
    e = jnp.take(noise_embed.astype(jnp.float32), ids, axis=0)
    s = snr.astype(jnp.float32)[..., None]
    return s * e + jnp.sqrt(s) * eps.astype(jnp.float32)


class Residual(nnx.Module):
    """The converter's high-pass residual path: ``Linear(d -> d_model)``, initialised as the
    authors do (weight ~ N(0, 0.01^2), bias 0), drawn from ``rngs.params()``."""

    def __init__(self, noise_dim: int, d_model: int, param_dtype: str = "float32", *,
                 rngs: nnx.Rngs):
        dt = jnp.dtype(param_dtype)
        w = 0.01 * jax.random.normal(rngs.params(), (noise_dim, d_model), jnp.float32)
        self.w = nnx.Param(w.astype(dt), axes=("noise", "embed"))
        self.c = nnx.Param(jnp.zeros((d_model,), dt), axes=("norm",))


class Converter(nnx.Module):
    """The soft-mask converter; initialised from LLaDA's token embedding wte.

    ``c`` starts as a PyTorch ``Linear(V + 1, d_model)`` bias does in the authors' code
    (their W is overwritten by wte, their bias is not): uniform in +-1/sqrt(V + 1), drawn
    from ``rngs.params()``. ``residual_dim`` (the noise width d) adds the high-pass
    residual path (:class:`Residual`, drawn after ``c``); ``self.residual`` is None without.
    """

    def __init__(self, wte: jax.Array, mask_token_id: int, beta_init: float = 1.0,
                 param_dtype: str = "float32", *, rngs: nnx.Rngs,
                 residual_dim: int | None = None):
        V, D = wte.shape
        dt = jnp.dtype(param_dtype)
        self.beta = nnx.Param(jnp.asarray(beta_init, jnp.float32), axes=())
        bias = jnp.zeros((V + 1,), jnp.float32).at[V].set(math.log(V))
        self.logit_bias = nnx.Param(bias, axes=("vocab_plus",))
        self.w = nnx.Param(jnp.concatenate([wte, wte[mask_token_id][None]], axis=0).astype(dt),
                           axes=("vocab_plus", "embed"))
        bound = 1.0 / math.sqrt(V + 1)
        c = jax.random.uniform(rngs.params(), (D,), jnp.float32, -bound, bound)
        self.c = nnx.Param(c.astype(dt), axes=("norm",))
        self.residual = (Residual(residual_dim, D, param_dtype, rngs=rngs)
                         if residual_dim else None)

    def __call__(self, z: jax.Array, noise_embed: jax.Array, chunk: int = 1024,
                 beta_scale: float = 1.0, out_dtype=jnp.float32) -> jax.Array:
        res = None if self.residual is None else (self.residual.w[...], self.residual.c[...])
        return converter_apply(z, noise_embed, self.beta[...] * beta_scale, self.logit_bias[...],
                               self.w[...], self.c[...], chunk=chunk, out_dtype=out_dtype,
                               residual=res)


class DSLModel(nnx.Module):
    """LLaDA with the DSL noise embedding and converter.

    ``model.llada`` is the backbone, ``model.noise_embed`` the frozen E,
    ``model.converter`` the trainable converter.
    """

    def __init__(self, cfg: ModelConfig, dsl: DSLConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dsl = dsl
        self.llada = LLaDA(cfg, rngs=rngs)
        e = noise_embedding(cfg.vocab_size, dsl.noise_dim, dsl.noise_seed)
        self.noise_embed = Frozen(jnp.asarray(e), axes=("vocab", "noise"))
        self.converter = Converter(self.llada.embed[...], cfg.mask_token_id, dsl.beta_init,
                                   cfg.param_dtype, rngs=rngs,
                                   residual_dim=dsl.noise_dim if dsl.residual else None)

    def embed_noisy(self, z: jax.Array, beta_scale: float = 1.0) -> jax.Array:
        """Backbone input embeddings [B, L, d_model] for noisy states z [B, L, d]."""
        return self.converter(z, self.noise_embed[...], chunk=self.dsl.chunk_positions,
                              beta_scale=beta_scale, out_dtype=self.cfg.dtype)

    def __call__(self, z: jax.Array, attention_mask: jax.Array | None = None,
                 return_hidden: bool = False) -> jax.Array:
        """Logits [B, L, V] (float32) of LLaDA(inputs_embeds = converter(z))."""
        return self.llada(inputs_embeds=self.embed_noisy(z), attention_mask=attention_mask,
                          return_hidden=return_hidden)


def build_dsl(cfg: ModelConfig, dsl: DSLConfig, seed: int = 0):
    return lambda: DSLModel(cfg, dsl, rngs=nnx.Rngs(params=seed))


def create_dsl(cfg: ModelConfig, dsl: DSLConfig, mesh=None, seed: int = 0) -> DSLModel:
    """A DSL model (random LLaDA weights, converter initialised from them) sharded on ``mesh``."""
    from dsl_jax.sharding import create_sharded, make_mesh
    return create_sharded(build_dsl(cfg, dsl, seed), mesh if mesh is not None else make_mesh())


def dsl_params(model: DSLModel) -> dict:
    """The ``dsl`` checkpoint group of a DSL model (nested dict of arrays)."""
    return {"noise_embed": model.noise_embed[...],
            "converter": nnx.to_pure_dict(nnx.state(model.converter, nnx.Param))}
