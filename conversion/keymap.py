"""The key map between LLaDA's PyTorch checkpoint names and the dsl-jax parameter tree.

PyTorch ``Linear`` weights are [out, in]; dsl-jax keeps [in, out] with heads split out.
Per-layer tensors ``model.transformer.blocks.{i}.NAME`` are slices ``i`` of the stacked
``blocks/*`` arrays. Each entry gives the torch->jax transform for one layer's tensor
and its inverse, so conversion and export are one table read both ways.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dsl_jax.config import ModelConfig

PREFIX = "model.transformer."
BLOCK_RE = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Entry:
    jax_path: tuple[str, ...]  # path in the params tree under "model"
    torch_shape: Callable[[ModelConfig], tuple[int, ...]]
    to_jax: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_torch: Callable[[np.ndarray, ModelConfig], np.ndarray]


def _t(x, cfg):
    return x.T


def _same(x, cfg):
    return x


def _split_heads(n_heads_attr):
    def to_jax(x, cfg):  # [H*Dh, D] -> [D, H, Dh]
        return x.T.reshape(cfg.d_model, getattr(cfg, n_heads_attr), cfg.head_dim)

    def to_torch(x, cfg):  # [D, H, Dh] -> [H*Dh, D]
        return x.reshape(cfg.d_model, -1).T

    return to_jax, to_torch


_q = _split_heads("n_heads")
_kv = _split_heads("n_kv_heads")

# Whole-model tensors.
GLOBAL: dict[str, Entry] = {
    "wte.weight": Entry(("embed",), lambda c: (c.vocab_size, c.d_model), _same, _same),
    "ln_f.weight": Entry(("ln_f",), lambda c: (c.d_model,), _same, _same),
    "ff_out.weight": Entry(("lm_head",), lambda c: (c.vocab_size, c.d_model), _t, _t),
}

# One layer's tensors (stacked on the leading axis in dsl-jax).
BLOCK: dict[str, Entry] = {
    "attn_norm.weight": Entry(("blocks", "attn_norm"), lambda c: (c.d_model,), _same, _same),
    "ff_norm.weight": Entry(("blocks", "ff_norm"), lambda c: (c.d_model,), _same, _same),
    "q_proj.weight": Entry(("blocks", "wq"), lambda c: (c.d_model, c.d_model), *_q),
    "k_proj.weight": Entry(("blocks", "wk"), lambda c: (c.n_kv_heads * c.head_dim, c.d_model), *_kv),
    "v_proj.weight": Entry(("blocks", "wv"), lambda c: (c.n_kv_heads * c.head_dim, c.d_model), *_kv),
    "attn_out.weight": Entry(
        ("blocks", "wo"), lambda c: (c.d_model, c.d_model),
        lambda x, c: x.T.reshape(c.n_heads, c.head_dim, c.d_model),
        lambda x, c: x.reshape(-1, c.d_model).T),
    "ff_proj.weight": Entry(("blocks", "w_gate"), lambda c: (c.mlp_hidden_size, c.d_model), _t, _t),
    "up_proj.weight": Entry(("blocks", "w_up"), lambda c: (c.mlp_hidden_size, c.d_model), _t, _t),
    "ff_out.weight": Entry(("blocks", "w_down"), lambda c: (c.d_model, c.mlp_hidden_size), _t, _t),
}


def torch_keys(cfg: ModelConfig) -> list[str]:
    """Every LLaDA checkpoint key for this config, in checkpoint order."""
    keys = [PREFIX + "wte.weight"]
    for i in range(cfg.n_layers):
        keys += [f"{PREFIX}blocks.{i}.{name}" for name in BLOCK]
    return keys + [PREFIX + "ln_f.weight", PREFIX + "ff_out.weight"]


def lookup(key: str) -> tuple[Entry, int | None] | None:
    """(entry, layer index or None) for a LLaDA key, or None when it is not a LLaDA key."""
    m = BLOCK_RE.match(key)
    if m:
        entry = BLOCK.get(m.group(2))
        return (entry, int(m.group(1))) if entry else None
    if key.startswith(PREFIX):
        entry = GLOBAL.get(key[len(PREFIX):])
        return (entry, None) if entry else None
    return None


def params_to_torch(params: dict, cfg: ModelConfig):
    """Yield (LLaDA key, numpy array [out, in]) from a dsl-jax ``model`` params dict."""
    for key in torch_keys(cfg):
        entry, layer = lookup(key)
        node = params
        for p in entry.jax_path:
            node = node[p]
        value = np.asarray(node if layer is None else node[layer])
        yield key, np.ascontiguousarray(entry.to_torch(value, cfg))


def torch_to_params(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
    """A dsl-jax ``model`` params dict from a complete dict of LLaDA tensors (small models)."""
    out: dict = {}
    stacks: dict[tuple[str, ...], list] = {}
    for key in torch_keys(cfg):
        entry, layer = lookup(key)
        value = entry.to_jax(np.asarray(tensors[key]), cfg)
        if layer is None:
            _set(out, entry.jax_path, value)
        else:
            stacks.setdefault(entry.jax_path, [None] * cfg.n_layers)[layer] = value
    for path, layers in stacks.items():
        _set(out, path, np.stack(layers))
    return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


# ---- DSL-LLaDA (docs/checkpoint.md section 2) ---------------------------------------
# Released DSL-LLaDA checkpoints add these keys to LLaDA's. Paths are under the
# checkpoint's ``dsl`` group; ``None`` in a shape is the free noise width d.
DSL: dict[str, Entry] = {
    "noise_embed.weight": Entry(("noise_embed",), lambda c: (c.vocab_size, None), _same, _same),
    "converter.beta": Entry(("converter", "beta"), lambda c: (), _same, _same),
    "converter.logit_bias": Entry(("converter", "logit_bias"), lambda c: (c.vocab_size + 1,),
                                  _same, _same),
    # W is [d_model, V+1] in PyTorch (Linear(V+1 -> d_model) weight); dsl-jax keeps [V+1, d_model].
    "converter.backbone_embedding.weight": Entry(
        ("converter", "w"), lambda c: (c.d_model, c.vocab_size + 1), _t, _t),
    "converter.backbone_embedding.bias": Entry(("converter", "c"), lambda c: (c.d_model,),
                                               _same, _same),
}
# The "Highpass" release's residual path (``DSLConfig.residual``): Linear(d -> d_model),
# weight [d_model, d] in PyTorch, [d, d_model] in dsl-jax.
DSL_RESIDUAL: dict[str, Entry] = {
    "converter.residual_proj.weight": Entry(("converter", "residual", "w"),
                                            lambda c: (c.d_model, None), _t, _t),
    "converter.residual_proj.bias": Entry(("converter", "residual", "c"), lambda c: (c.d_model,),
                                          _same, _same),
}


def dsl_entries(residual: bool) -> dict[str, Entry]:
    """The DSL keys of a checkpoint with (``residual``) or without the residual path."""
    return {**DSL, **DSL_RESIDUAL} if residual else dict(DSL)


# Also in the authors' saves, not parameters of the dsl-jax tree:
# - ``log_snr_max``: a scalar holding log(s_max), the training SNR maximum (the checkpoint
#   meta's ``dsl.snr_max``); export writes it, in float32, for every DSL checkpoint;
# - ``converter.embed.weight``: the converter's reference to the noise embedding, the same
#   tensor as ``noise_embed.weight`` (present in some saves; never written).
LOG_SNR_MAX = "log_snr_max"
EMBED_ALIAS = "converter.embed.weight"


def log_snr_max_tensor(snr_max: float) -> np.ndarray:
    """The ``log_snr_max`` tensor for ``snr_max``: shape [], float32, as the authors store it."""
    return np.asarray(np.log(float(snr_max)), np.float32)


def snr_max_from_log(value: np.ndarray) -> float:
    """s_max from a stored ``log_snr_max`` (shape [] or [1], any float dtype).

    The shortest decimal whose log rounds to the stored value in its dtype: a float32
    log(80) reads back as 80.0, and a bfloat16 one, which keeps about 3 significant digits
    of the log, as the round number it was made from (log(100) -> 4.59375 -> 100.0) rather
    than exp(4.59375) = 98.87.
    """
    value = np.asarray(value).reshape(())
    stored = value.astype(np.float64)
    exact = float(np.exp(stored))
    for digits in range(1, 18):
        e = math.floor(math.log10(exact)) - digits + 1
        base = round(exact / 10.0 ** e)
        hits = [x for x in (float(f"{c}e{e}") for c in (base - 1, base, base + 1) if c > 0)
                if np.asarray(np.log(x)).astype(value.dtype) == value]
        if hits:
            return min(hits, key=lambda x: abs(x - exact))
    return exact


def get_path(tree: dict, path: tuple[str, ...]):
    """The value at ``path`` in a nested dict."""
    for p in path:
        tree = tree[p]
    return tree


def nest(path: tuple[str, ...], value) -> dict:
    """A nested dict holding only ``value`` at ``path``."""
    for p in reversed(path):
        value = {p: value}
    return value
