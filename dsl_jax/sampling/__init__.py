"""Jitted, batched samplers (docs/method.md section 3).

``generate(model, prompts, sampler=..., nfe=..., gen_length=...)`` returns, per prompt,
the ``gen_length`` response token ids (raw: EOS/EoT tails included; the tokenizer's
``decode`` strips specials). Samplers (the table is :data:`registry.REGISTRY`):

- ``sde``: DSL-SDE, N = nfe // 2 Heun steps on the SNR grid plus one final argmax pass
  (2 N + 1 forward passes); needs a :class:`dsl_jax.dsl.DSLModel`.
- ``ode``: DSL-SDE with noise scale 0, the authors' deterministic sampler, same budget.
- ``pf_ode``: the probability-flow ODE (halved drift, ns = 0; not the paper's), same budget.
- ``remask``: LLaDA low-confidence remasking, one block, steps = nfe, temperature 0.
- ``random``: LLaDA random remasking, one block, steps = nfe.
- ``eos_block``: low-confidence remasking with the EOS logit at -inf and blocks of 32;
  nfe steps split over the blocks, the remainder to the first blocks.

One batch is one jitted computation (the steps are a ``lax.fori_loop``), compiled once
per (batch rows, prompt-length bucket, sampler, :class:`Request`: nfe, gen_length and
the DSL knobs: grid, s_min, s_max, beta scale, noise scale, top-k). Prompts are
left-padded with an attention mask and positions ``cumsum(mask) - 1``; every row has its
own key, so a prompt's tokens do not depend on the rest of its batch.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from dsl_jax.errors import require
from dsl_jax.sampling import batch as batching
from dsl_jax.sampling import registry, schedules
from dsl_jax.sampling.registry import DSL_SAMPLERS, REGISTRY, SAMPLERS, Request, forward_passes
from dsl_jax.sampling.sde import BETA_INFER_SCALE, TOP_K
from dsl_jax.sharding import host_array

_JIT_CACHE: dict = {}

__all__ = ["generate", "REGISTRY", "SAMPLERS", "DSL_SAMPLERS", "Request",
           "forward_passes", "BETA_INFER_SCALE"]


def _is_dsl(model) -> bool:
    from dsl_jax.dsl import DSLModel
    return isinstance(model, DSLModel)


def _jitted(graphdef, state, mesh, sampler: str, request: Request):
    """The jitted (state, prompt_ids, mask, positions, keys) -> tokens of one run (cached)."""
    from dsl_jax.sharding import batch_sharding
    key = (graphdef, sampler, request, mesh)
    if key not in _JIT_CACHE:
        run = REGISTRY[sampler].run

        def fn(state, prompt_ids, mask, positions, keys):
            return run(nnx.merge(graphdef, state), prompt_ids, mask, positions, keys, request)

        state_sh = jax.tree.map(lambda a: a.sharding, state)
        rows = batch_sharding(mesh, 2)  # ids, mask, positions, keys [B, 2]; out [B, G]
        _JIT_CACHE[key] = jax.jit(fn, in_shardings=(state_sh, rows, rows, rows, rows),
                                  out_shardings=rows)
    return _JIT_CACHE[key]


def _model_mesh(state):
    leaf = jax.tree.leaves(state)[0]
    return getattr(leaf.sharding, "mesh", None)


def check_request(model, prompts, sampler, nfe, gen_length, seeds=None,
                  shared_seed=False, block_length=None) -> None:
    """Every bad-input check of :func:`generate`, each with one clear line."""
    spec = registry.get(sampler)
    schedules.check_nfe(nfe)
    require(isinstance(gen_length, (int, np.integer)) and gen_length > 0,
            f"gen_length must be a positive integer, got {gen_length!r}")
    if spec.needs_dsl:
        require(_is_dsl(model),
                f"sampler {sampler!r} needs a model with DSL parameters (noise embedding and "
                f"converter); this model has none: {registry.dsl_hint()}")
    spec.check(nfe, gen_length, block_length)
    cfg = model.cfg
    require(isinstance(prompts, (list, tuple)), "prompts must be a list of token-id lists")
    for i, p in enumerate(prompts):
        arr = np.asarray(p)
        require(arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)),
                f"prompt {i}: expected a list of token ids")
        if arr.size:
            require(arr.min() >= 0 and arr.max() < cfg.vocab_size,
                    f"prompt {i}: token id {int(arr.max() if arr.max() >= cfg.vocab_size else arr.min())}"
                    f" is out of range for vocabulary size {cfg.vocab_size}")
        require(len(p) + gen_length <= cfg.max_sequence_length,
                f"prompt {i}: {len(p)} prompt tokens + gen_length {gen_length} exceed the "
                f"model's maximum sequence length {cfg.max_sequence_length}")
    if seeds is not None:
        require(not shared_seed, "seeds and shared_seed exclude each other")
        require(len(seeds) == len(prompts),
                f"seeds: got {len(seeds)} seeds for {len(prompts)} prompts")


def generate(model, prompts: Sequence[Sequence[int]], *, sampler: str, nfe: int,
             gen_length: int, seed: int = 0, seeds: Sequence[int] | None = None,
             batch_size: int | None = None, mesh=None, snr_grid: str = "sensitive",
             progress: bool = False, temperature: float = 0.0,
             bucket: int = batching.BUCKET, shared_seed: bool = False,
             beta_scale: float = BETA_INFER_SCALE, noise_scale: float | None = None,
             s_min: float = schedules.SNR_MIN, s_max: float = schedules.SNR_MAX,
             top_k: int = TOP_K, cache_refresh: int = registry.CACHE_REFRESH,
             block_length: int | None = None, remask_cache: str = "none",
             threshold: float | None = None, cfg_scale: float = 0.0,
             confidence_eos_eot_inf: bool = False) -> list[list[int]]:
    """Response token ids (``gen_length`` per prompt) for chat-templated ``prompts``.

    ``model``: a DSLModel (``sde``/``ode``/``pf_ode``), a LLaDA or a DSLModel (its ``.llada``
    is used) for ``remask``/``random``/``eos_block``. ``nfe``: forward passes (the DSL
    samplers make 2 (nfe // 2) + 1, 5 at NFE 2-3 on the sensitive grid). Prompt i's
    randomness (start state and noise) comes from ``seeds[i]`` if given, else from ``seed``
    alone when ``shared_seed`` (every prompt draws alike, as the authors' evaluation does),
    else from (``seed``, i). ``batch_size`` defaults to all prompts; the last batch is filled with
    dummy rows, and rows are padded up to a multiple of the mesh's data-parallel size.
    ``temperature`` (remasking only): 0 is argmax, > 0 Gumbel-max sampling.
    The DSL samplers' knobs (defaults: the paper's; set on another sampler: an error):
    ``snr_grid`` (sensitive / loglinear) from ``s_min`` to ``s_max``, ``beta_scale``
    (beta_infer = beta_scale x beta), ``top_k`` (x_hat's top-k), ``noise_scale`` (``sde``
    only; None: by NFE, :func:`schedules.noise_scale`), ``cache_refresh`` (the prompt's
    keys/values recomputed every k Heun steps; 1: every pass, exact; 0: once; default 8).
    The remasking samplers' knobs (defaults: LLaDA's): ``block_length`` (None: the
    sampler's own), ``remask_cache`` (none / prefix / dual), ``threshold`` (commit every
    masked position of the block whose confidence is >= it, at least one a step), ``cfg_scale``
    (unsupervised classifier-free guidance), ``confidence_eos_eot_inf``.
    """
    check_request(model, prompts, sampler, nfe, gen_length, seeds, shared_seed, block_length)
    knobs = dict(snr_grid=snr_grid, beta_scale=beta_scale,
                 noise_scale=None if noise_scale is None else float(noise_scale),
                 s_min=float(s_min), s_max=float(s_max), top_k=top_k,
                 cache_refresh=cache_refresh, block_length=block_length,
                 remask_cache=remask_cache,
                 threshold=None if threshold is None else float(threshold),
                 cfg_scale=float(cfg_scale), confidence_eos_eot_inf=confidence_eos_eot_inf)
    registry.check_knobs(sampler, **knobs)
    require(temperature >= 0, f"temperature must be >= 0, got {temperature}")
    if not prompts:
        return []
    if not REGISTRY[sampler].needs_dsl and _is_dsl(model):
        model = model.llada
    cfg = model.cfg
    graphdef, state = nnx.split(model)
    model_mesh = _model_mesh(state)
    if mesh is None:
        if model_mesh is None:
            from dsl_jax.sharding import make_mesh
            mesh = make_mesh()
        else:
            mesh = model_mesh
    if model_mesh != mesh:  # move the parameters onto the requested mesh, as in training
        from dsl_jax.sharding import state_shardings
        state = jax.device_put(state, state_shardings(state, mesh))
    n = len(prompts)
    batch_size = n if batch_size is None else int(batch_size)
    require(batch_size > 0, f"batch_size must be positive, got {batch_size}")
    dp = batching.batch_devices(mesh)
    rows = -(-batch_size // dp) * dp
    knobs["beta_scale"] = float(beta_scale)
    request = Request(int(nfe), int(gen_length), temperature=float(temperature), **knobs)
    fn = _jitted(graphdef, state, mesh, sampler, request)
    keys = [batching.row_key(seed, i, seeds, shared_seed) for i in range(n)]
    chunks = [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc=f"{sampler} nfe={nfe}", unit="batch")
    limit = cfg.max_sequence_length - gen_length
    out: list[list[int]] = []
    for chunk in chunks:
        ps = [list(prompts[i]) for i in chunk]
        P = batching.bucket_length(max(len(p) for p in ps), bucket, limit)
        b = batching.make_batch(ps, [keys[i] for i in chunk], gen_length, cfg.pad_token_id,
                                rows, P)
        with jax.set_mesh(mesh):
            tokens = fn(state, *batching.shard_batch(b, mesh))
        out.extend(host_array(tokens)[: b.n_real].tolist())  # on a pod: gathered on every host
    return out
