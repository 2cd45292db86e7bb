"""``dsl-jax verify``: the converted Flax model's logits against the PyTorch reference.

Runs a few random token sequences through the checkpoint (loaded in float32 compute
on the current devices) and through ``transformers``' Llama with a zero 4-D mask
built from the same Hugging Face files (weights rounded to the checkpoint's stored
dtype, computing in float32), then prints the largest absolute logit
difference and the mean KL(torch || flax) of the next-token distributions. Exits
with status 1 beyond tolerance. Needs the ``verify`` extra (torch, transformers).
For a DSL-LLaDA checkpoint the DSL tensors (the residual path's too) are also compared
exactly.
"""

from __future__ import annotations

import numpy as np

from dsl_jax import storage
from dsl_jax.errors import require


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax p || softmax q), in float64."""
    p = p_logits.astype(np.float64)
    q = q_logits.astype(np.float64)
    lp = p - p.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = q - q.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def verify(hf_dir: str, ckpt: str, batch: int = 2, length: int = 32, seed: int = 0,
           atol: float = 1e-2, kl_tol: float = 1e-4, mesh=None, progress: bool = True) -> dict:
    """Compare logits of checkpoint ``ckpt`` with the PyTorch reference of ``hf_dir``.

    Returns max_abs_diff, kl, max_abs_logit (reference scale), dsl_max_abs_diff (or
    None) and ok (both within tolerance, and DSL tensors equal within ``atol``).
    """
    from dsl_jax.conversion import keymap, torch_reference
    torch_reference.import_torch("verify")
    import jax.numpy as jnp

    from dsl_jax.conversion.convert import has_residual, plan
    from dsl_jax.conversion.hf_io import HFCheckpoint
    from dsl_jax import checkpoint
    from dsl_jax.config import ModelConfig

    require(batch > 0 and length > 0, "--batch and --length must be positive")
    hf = HFCheckpoint(hf_dir)
    hf_cfg = ModelConfig.from_hf_json(hf.config_path, dtype="float32", param_dtype="float32")
    llada, dsl, _, _ = plan(hf, hf_cfg)
    meta = checkpoint.read_meta(ckpt)
    cfg = checkpoint.model_config(meta, source=storage.join(ckpt, checkpoint.META_FILE))
    require(cfg.to_hf_dict() == hf_cfg.to_hf_dict(),
            f"{ckpt}: its model config differs from {hf.config_path}")
    length = min(length, cfg.max_sequence_length)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length))

    # The reference gets the weights as the checkpoint stores them (rounded to bfloat16
    # for a bfloat16 checkpoint), so that the comparison checks the conversion, not
    # the precision chosen for it; both sides then compute in float32.
    stored = np.dtype(jnp.dtype(cfg.param_dtype))
    tensors = {k: ref.read().astype(stored).astype(np.float32) for k, ref in llada.items()}
    ref_model = torch_reference.build_llama(hf_cfg, tensors, dtype="float32")
    del tensors
    ref = torch_reference.llama_logits(ref_model, ids)
    del ref_model

    model = checkpoint.load(ckpt, mesh=mesh, kind="llada", dtype="float32")
    from flax import nnx
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids, jnp.int32)))
    del model
    diff = float(np.max(np.abs(got - ref)))
    kl = _kl(ref, got)
    dsl_diff = None
    if dsl is not None:
        m = checkpoint.load(ckpt, mesh, kind="dsl", why=f"{hf_dir} has them")
        require(m.dsl.residual == has_residual(dsl),
                f"{ckpt}: {'no' if has_residual(dsl) else 'a'} converter residual path, unlike "
                f"{hf_dir}")
        dsl_diff = 0.0
        for key, entry in keymap.dsl_entries(has_residual(dsl)).items():
            node = m
            for p in entry.jax_path:
                node = getattr(node, p)
            mine = entry.to_torch(np.asarray(node[...], np.float32), hf_cfg)
            theirs = dsl[key].read().astype(node[...].dtype).astype(np.float32).reshape(
                np.shape(mine))
            dsl_diff = max(dsl_diff, float(np.max(np.abs(mine - theirs))))
    ok = diff <= atol and kl <= kl_tol and (dsl_diff is None or dsl_diff <= atol)
    return {"max_abs_diff": diff, "kl": kl, "max_abs_logit": float(np.max(np.abs(ref))),
            "dsl_max_abs_diff": dsl_diff, "ok": ok, "batch": batch, "length": length,
            "atol": atol, "kl_tol": kl_tol}
