"""The functional training step: ``train_step(state, batch, rng) -> (state, metrics)``.

A pure function jitted with ``in_shardings``/``out_shardings`` and the state donated.
The batch is int32 ids [micro_batches, global_batch / micro_batches, seq_len], the
rows sharded over the mesh's batch axes (``data``, ``fsdp``); gradients are
accumulated over the micro-batches with ``lax.scan`` and averaged, then clipped
(global norm) and applied by AdamW. The objective (``dsl`` or ``mdm``) only changes
the loss function; everything else is shared. The step's randomness is
``fold_in(rng, state.step)`` split per micro-batch, so a resumed run draws the same
noise as an uninterrupted one.

:func:`build_train_step` builds it all from a run config and a mesh without
materialising any parameter (``nnx.eval_shape``), so that

    setup = build_train_step(cfg, mesh)
    setup.step.lower(*setup.abstract_args()).compile()

compiles the real 8B step ahead of time for a TPU topology mesh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dsl_jax import config as config_lib
from dsl_jax import storage
from dsl_jax.dsl import DSLConfig, add_noise, build_dsl
from dsl_jax.errors import require
from dsl_jax.losses import dsl_loss, dsl_loss_from_noisy, mdm_loss, response_mask, token_nll
from dsl_jax.model import build
from dsl_jax.sharding import batch_axes, batch_axes_size
from dsl_jax.train.state import (OBJECTIVES, Partition, TrainState, abstract_train_state,
                                 make_optimizer, schedule)

ARCH_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size")
DSL_STRUCTURAL = ("noise_dim", "noise_seed", "residual")


# ---- run config -> model config ----------------------------------------------------

def run_overrides(cfg) -> dict:
    out = {"param_dtype": "float32"}
    if cfg.dtype:
        out["dtype"] = cfg.dtype
    if cfg.remat:
        out["remat"] = cfg.remat
    return out


def _arch(m: config_lib.ModelConfig) -> str:
    return ", ".join(f"{k} {getattr(m, k)}" for k in ARCH_FIELDS)


def model_config(cfg) -> config_lib.ModelConfig:
    """The model of a run: ``init_ckpt``'s (checked against ``model`` when both are set),
    else ``model`` (a preset name or a config.json path)."""
    from dsl_jax import checkpoint

    run = run_overrides(cfg)
    if cfg.init_ckpt:
        meta = checkpoint.read_meta(cfg.init_ckpt)
        mc = checkpoint.model_config(meta, source=storage.join(cfg.init_ckpt, checkpoint.META_FILE),
                                     **run)
        if cfg.model:
            want = config_lib.resolve(cfg.model, **run)
            mismatch = [k for k in ARCH_FIELDS if getattr(want, k) != getattr(mc, k)]
            require(not mismatch,
                    f"init_ckpt {cfg.init_ckpt} holds a different model size than config.model "
                    f"{cfg.model!r}: checkpoint {_arch(mc)}; config {_arch(want)} "
                    f"(set --config.model= to use the checkpoint's)")
        return mc
    require(bool(cfg.model), "config: set model (a preset or config.json) or init_ckpt")
    return config_lib.resolve(cfg.model, **run)


def dsl_config(cfg) -> DSLConfig:
    """The run's DSL fields; the noise embedding's width and seed, ``beta_init`` and
    ``snr_max`` come from ``init_ckpt`` when it holds DSL parameters."""
    from dsl_jax import checkpoint

    fields = cfg.dsl.to_dict()
    if cfg.init_ckpt and cfg.objective == "dsl":
        stored = checkpoint.read_meta(cfg.init_ckpt).get("dsl")
        if stored:
            # snr_max is the trained model's s_max (the authors' log_snr_max): a DSL
            # checkpoint's value wins; the run's dsl.snr_max applies only to a run that
            # starts without DSL parameters (random init or a plain LLaDA).
            for k in DSL_STRUCTURAL + ("beta_init", "snr_max"):
                if k in stored:
                    fields[k] = stored[k]
    return DSLConfig.from_dict(fields)


def model_builder(cfg, mc: config_lib.ModelConfig | None = None):
    """Zero-argument constructor of the run's model (DSLModel or LLaDA)."""
    mc = mc or model_config(cfg)
    seed = int(cfg.seed)
    if cfg.objective == "dsl":
        return build_dsl(mc, dsl_config(cfg), seed)
    return build(mc, seed)


def check_batch(cfg, mesh, mc: config_lib.ModelConfig) -> tuple[int, int, int]:
    """(micro_batches, rows per micro-batch, seq_len), or one clear error."""
    B, M, L = int(cfg.global_batch), int(cfg.micro_batches), int(cfg.seq_len)
    require(B > 0 and M > 0 and L > 0, f"global_batch ({B}), micro_batches ({M}) and seq_len "
            f"({L}) must be positive")
    require(B % M == 0, f"global_batch {B} does not divide into micro_batches {M}")
    n = batch_axes_size(mesh)
    axes = " x ".join(batch_axes(mesh))
    require((B // M) % n == 0,
            f"global_batch {B} / micro_batches {M} = {B // M} rows per micro-batch do not divide "
            f"over the mesh's batch axes ({axes} = {n} devices); use a multiple of {n * M}")
    require((B // M) % jax.process_count() == 0,
            f"global_batch {B} / micro_batches {M} = {B // M} rows per micro-batch does not "
            f"divide over {jax.process_count()} hosts")
    require(L <= mc.max_sequence_length,
            f"seq_len {L} exceeds the model's maximum sequence length {mc.max_sequence_length}")
    require(cfg.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got "
            f"{cfg.objective!r}")
    require(int(cfg.loss_chunk) > 0,
            f"loss_chunk must be positive (positions per loss chunk), got {cfg.loss_chunk}")
    return M, B // M, L


# ---- the step ------------------------------------------------------------------------

def loss_fn_for(part: Partition, objective: str, chunk: int, prompt_end_id: int = -1):
    """The objective's loss; with ``prompt_end_id`` >= 0, chat rows train on their
    responses only (:func:`dsl_jax.losses.response_mask`)."""
    def loss_fn(params, frozen, ids, rng):
        model = part.merge(params, frozen)
        response = response_mask(ids, prompt_end_id) if prompt_end_id >= 0 else None
        if objective == "dsl":
            return dsl_loss(model, ids, rng, chunk, response=response)
        return mdm_loss(model, ids, rng, chunk=chunk, response=response)

    return loss_fn


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def make_train_step(part: Partition, optimizer, opt_cfg, chunk: int, mesh=None,
                    prompt_end_id: int = -1):
    """The pure ``train_step(state, batch, rng) -> (state, metrics)`` (not yet jitted)."""
    loss_fn = loss_fn_for(part, part.objective, chunk, prompt_end_id)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    lr_at = schedule(opt_cfg)

    def train_step(state: TrainState, batch: jax.Array, rng: jax.Array):
        ctx = jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if mesh is not None else None
        if ctx is not None:
            ctx.__enter__()
        try:
            M = batch.shape[0]
            keys = jax.random.split(jax.random.fold_in(rng, state.step), M)
            _, metric_shapes = jax.eval_shape(loss_fn, state.params, state.frozen, batch[0], keys[0])
            g0 = jax.tree.map(jnp.zeros_like, state.params)
            m0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes)

            def micro(carry, xs):
                g_acc, m_acc = carry
                ids, key = xs
                (_, metrics), g = grad_fn(state.params, state.frozen, ids, key)
                metrics = jax.tree.map(lambda x: x.astype(jnp.float32), metrics)
                return (_tree_add(g_acc, g), _tree_add(m_acc, metrics)), None

            (grads, metrics), _ = jax.lax.scan(micro, (g0, m0), (batch, keys))
            grads = jax.tree.map(lambda g: g / M, grads)
            metrics = jax.tree.map(lambda m: m / M, metrics)
            metrics["grad_norm"] = optax.tree.norm(grads)
            metrics["lr"] = jnp.asarray(lr_at(state.step), jnp.float32)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            new = TrainState(step=state.step + 1, params=params, frozen=state.frozen,
                             opt_state=opt_state)
            return new, metrics
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)

    return train_step


@dataclasses.dataclass
class TrainSetup:
    """What :func:`build_train_step` returns: the jitted step and its abstract arguments."""

    step: Any  # jax.jit(train_step, in/out shardings, donate_argnums=0)
    partition: Partition
    optimizer: Any
    mesh: Any
    model_cfg: config_lib.ModelConfig
    dsl_cfg: DSLConfig | None
    abstract_state: TrainState  # ShapeDtypeStructs carrying shardings
    state_shardings: TrainState
    batch_sharding: NamedSharding
    batch_shape: tuple[int, int, int]  # (micro_batches, rows per micro-batch, seq_len)
    rng_sharding: NamedSharding
    _eval: dict = dataclasses.field(default_factory=dict)

    def abstract_args(self):
        """(abstract_state, abstract_batch, abstract_rng) for ``step.lower``."""
        batch = jax.ShapeDtypeStruct(self.batch_shape, jnp.int32, sharding=self.batch_sharding)
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=self.rng_sharding)
        return self.abstract_state, batch, rng

    @property
    def tokens_per_step(self) -> int:
        return math.prod(self.batch_shape)

    def eval_step(self, snrs: tuple[float, ...], chunk: int, eval_sharding):
        """The jitted held-out evaluation (cached per arguments)."""
        key = (tuple(snrs), chunk, eval_sharding)
        if key not in self._eval:
            rep = NamedSharding(self.mesh, P())
            self._eval[key] = jax.jit(
                make_eval_fn(self.partition, snrs, chunk, self.mesh),
                in_shardings=(self.state_shardings.params, self.state_shardings.frozen,
                              eval_sharding, rep), out_shardings=rep)
        return self._eval[key]


# Run settings that do not change the step: runs differing only in these share one
# compiled step within a process (a resumed run, the demo's back-to-back runs).
_NOT_IN_STEP = ("out_dir", "save_every", "keep", "log_every", "eval", "data", "steps",
                "profile_steps")
_SETUPS: dict = {}


def _step_key(cfg, mesh):
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_STEP}
    ckpt = cfg.init_ckpt
    meta = ""
    if ckpt and storage.isfile(storage.join(ckpt, "dsl_jax.json")):
        meta = storage.read_text(storage.join(ckpt, "dsl_jax.json"))
    import json
    return json.dumps(d, sort_keys=True, default=str) + meta, mesh


def build_train_step(cfg, mesh, cache: bool = True) -> TrainSetup:
    """The jitted, sharded, donating train step of run config ``cfg`` on ``mesh``
    (memoised per process on the settings that shape the step; ``cache=False`` builds anew).

    Nothing is materialised: the model's structure comes from ``nnx.eval_shape``.
    Bad configs (model size, batch that does not divide over the mesh) fail here
    with one clear error, before any compute.
    """
    key = _step_key(cfg, mesh) if cache else None
    if key is not None and key in _SETUPS:
        return _SETUPS[key]
    setup = _build_train_step(cfg, mesh)
    if key is not None:
        if len(_SETUPS) >= 4:
            _SETUPS.pop(next(iter(_SETUPS)))
        _SETUPS[key] = setup
    return setup


def _build_train_step(cfg, mesh) -> TrainSetup:
    """The jitted, sharded, donating train step of run config ``cfg`` on ``mesh``.

    Nothing is materialised: the model's structure comes from ``nnx.eval_shape``.
    Bad configs (model size, batch that does not divide over the mesh) fail here
    with one clear error, before any compute.
    """
    from flax import nnx

    mc = model_config(cfg)
    batch_shape = check_batch(cfg, mesh, mc)
    dsl = dsl_config(cfg) if cfg.objective == "dsl" else None
    optimizer = make_optimizer(cfg.optimizer)
    abstract_model = nnx.eval_shape(model_builder(cfg, mc))
    part, abstract_state, shardings = abstract_train_state(abstract_model, cfg.objective,
                                                           optimizer, mesh)
    fn = make_train_step(part, optimizer, cfg.optimizer, int(cfg.loss_chunk), mesh,
                         int(cfg.prompt_end_id))
    rep = NamedSharding(mesh, P())
    batch_sh = NamedSharding(mesh, P(None, batch_axes(mesh), None))
    step = jax.jit(fn, in_shardings=(shardings, batch_sh, rep), out_shardings=(shardings, rep),
                   donate_argnums=(0,))
    return TrainSetup(step=step, partition=part, optimizer=optimizer, mesh=mesh, model_cfg=mc,
                      dsl_cfg=dsl, abstract_state=abstract_state, state_shardings=shardings,
                      batch_sharding=batch_sh, batch_shape=batch_shape, rng_sharding=rep)


# ---- held-out monitoring -----------------------------------------------------------

def make_eval_fn(part: Partition, snrs: tuple[float, ...], chunk: int, mesh=None):
    """Pure ``eval(params, frozen, ids, rng) -> metrics`` on held-out blocks [B, L]:
    CE/accuracy at fixed SNRs (DSL), clean-input CE/accuracy (ordinary ids), accuracy
    on 50% of positions set to the mask id, and beta (DSL)."""

    def evaluate(params, frozen, ids, rng):
        ctx = jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if mesh is not None else None
        if ctx is not None:
            ctx.__enter__()
        try:
            model = part.merge(params, frozen)
            llada = model.llada if part.objective == "dsl" else model
            out = {}
            k_eps, k_mask = jax.random.split(rng)
            if part.objective == "dsl":
                eps = jax.random.normal(k_eps, (*ids.shape, model.dsl.noise_dim), jnp.float32)
                for s in snrs:
                    z = add_noise(ids, jnp.full(ids.shape, s, jnp.float32), eps,
                                  model.noise_embed[...])
                    loss, m = dsl_loss_from_noisy(model, z, ids, chunk)
                    out[f"ce_snr{s:g}"] = loss
                    out[f"acc_snr{s:g}"] = m["accuracy"]
                out["beta"] = model.converter.beta[...].astype(jnp.float32)
            nll, correct = token_nll(llada, llada.hidden_states(llada.embed_ids(ids)), ids, chunk)
            out["clean_ce"] = jnp.mean(nll)
            out["clean_acc"] = jnp.mean(correct.astype(jnp.float32))
            B, L = ids.shape
            rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_mask, (B, L)), axis=-1), axis=-1)
            masked = rank < (L // 2)
            x = jnp.where(masked, llada.cfg.mask_token_id, ids)
            _, correct = token_nll(llada, llada.hidden_states(llada.embed_ids(x)), ids, chunk)
            out["infill_acc"] = jnp.sum(correct & masked) / jnp.maximum(jnp.sum(masked), 1)
            return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), out)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)

    return evaluate
