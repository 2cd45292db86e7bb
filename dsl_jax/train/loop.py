"""The training loop: run (or resume) the training run of a config, with orbax
checkpoints, the data-iterator position of every input stream, metrics and the final model.

``dsl-jax train`` (dsl_jax/commands/train.py) is its command; the run directory it
writes is described there.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dsl_jax import storage
from dsl_jax.errors import UserError, require
from dsl_jax.textfiles import read_json, write_atomic, write_json

log = logging.getLogger(__name__)


# ---- config --------------------------------------------------------------------

def load_train_config(path: str, overrides=()):
    """A training config file with ``KEY=VALUE`` overrides (unknown keys refused)."""
    from dsl_jax.configlib import load_config
    return load_config(path, overrides)


def validate(cfg) -> None:
    from dsl_jax.train.state import OBJECTIVES
    require(cfg.objective in OBJECTIVES,
            f"objective must be one of {OBJECTIVES}, got {cfg.objective!r}")
    for key in ("steps", "save_every", "keep", "log_every"):
        require(int(cfg[key]) > 0, f"{key} must be positive, got {cfg[key]}")
    require(int(cfg.eval.every) >= 0 and int(cfg.eval.blocks) >= 0,
            "eval.every and eval.blocks must be >= 0")
    require(bool(cfg.out_dir), "out_dir: set the run directory")
    require(cfg.resume in RESUME_CHOICES,
            f"resume must be one of {', '.join(RESUME_CHOICES)}, got {cfg.resume!r}")
    require(int(cfg.loss_chunk) > 0,
            f"loss_chunk must be positive (positions per loss chunk), got {cfg.loss_chunk}")
    from dsl_jax.train.events import profile_range
    profile_range(cfg.profile_steps)


def eval_snrs(cfg) -> tuple[float, ...]:
    from dsl_jax.configlib import parse_list
    return tuple(parse_list(cfg.eval.snrs, float, name="eval.snrs"))


# ---- model -----------------------------------------------------------------------

def initial_model(cfg, mc, mesh):
    """The model a fresh run starts from: ``init_ckpt`` (DSL parameters when it has them,
    else a converter and noise embedding built around its LLaDA), or a random init."""
    from flax import nnx

    from dsl_jax import checkpoint
    from dsl_jax.sharding import create_sharded, state_shardings
    from dsl_jax.train.step import dsl_config, model_builder, run_overrides

    if not cfg.init_ckpt:
        return create_sharded(model_builder(cfg, mc), mesh)
    from dsl_jax.dsl import Converter, DSLModel, build_dsl, noise_embedding

    llada = checkpoint.load(cfg.init_ckpt, mesh, "auto" if cfg.objective == "dsl" else "llada",
                            **run_overrides(cfg))
    if cfg.objective != "dsl" or isinstance(llada, DSLModel):
        return llada
    # A plain LLaDA checkpoint: noise embedding (seeded) and converter from its wte.
    dsl = dsl_config(cfg)
    graphdef, abstract = nnx.split(nnx.eval_shape(build_dsl(mc, dsl)))
    sh = nnx.to_pure_dict(state_shardings(abstract, mesh))

    def make_converter(wte):
        conv = Converter(wte, mc.mask_token_id, dsl.beta_init, mc.param_dtype,
                         rngs=nnx.Rngs(params=int(cfg.seed)),
                         residual_dim=dsl.noise_dim if dsl.residual else None)
        return nnx.to_pure_dict(nnx.state(conv, nnx.Param))

    with jax.set_mesh(mesh):
        conv = jax.jit(make_converter, out_shardings=sh["converter"])(llada.embed[...])
    e = jax.device_put(noise_embedding(mc.vocab_size, dsl.noise_dim, dsl.noise_seed),
                       sh["noise_embed"])
    pure = {"llada": nnx.to_pure_dict(nnx.state(llada)), "converter": conv, "noise_embed": e}
    nnx.replace_by_pure_dict(abstract, pure)
    return nnx.merge(graphdef, abstract)


# ---- data ------------------------------------------------------------------------

def _to_global(local: np.ndarray, sharding, global_shape) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def _data_state_path(out_dir: str, step: int, stream: int) -> str:
    return storage.join(out_dir, "data_state", str(step), f"stream_{stream}.json")


def _prune_data_states(out_dir: str, keep_steps) -> None:
    root = storage.join(out_dir, "data_state")
    if jax.process_index() != 0 or not storage.isdir(root):
        return
    for name in storage.listdir(root):
        if name.isdigit() and int(name) not in keep_steps:
            storage.rmtree(storage.join(root, name))


# ---- what a run reads, and what it was started with ----------------------------------

# Settings a resumed run may change: how long it runs, how often it logs, saves, keeps
# and evaluates, what it profiles, where out_dir is written from and the mesh (a
# checkpoint restores onto any mesh; the batches depend on data.streams, not the hosts).
RESUME_MAY_CHANGE = ("steps", "log_every", "save_every", "keep", "eval.every",
                     "profile_steps", "out_dir", "mesh", "resume")
# resume="auto" resumes the run in out_dir; "overwrite" deletes it and starts afresh.
RESUME_CHOICES = ("auto", "overwrite")
# What a run writes in out_dir (docs/checkpoint.md section 4), deleted by resume=overwrite.
RUN_ENTRIES = ("checkpoints", "data_state", "final", "profile", "config.json", "metrics.jsonl")


def train_inputs(cfg) -> dict:
    """label -> path(s) of what run ``cfg`` reads (its init checkpoint, data files and
    folders, tokenizer), for :func:`dsl_jax.storage.check_output_apart`."""
    from dsl_jax.configlib import parse_list

    data = cfg.data
    files = []
    for pattern in parse_list(str(data.files or ""), name="data.files"):
        found = storage.glob(pattern) if any(c in pattern for c in "*?[") else []
        files.extend(found or [pattern])
    return {"init_ckpt": str(cfg.init_ckpt or ""), "data.files": files,
            "data.data_dir": str(data.data_dir or "") if data.source == "tfds" else "",
            "data.tokenizer": str(data.tokenizer or "")}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_settings(cfg, out_dir: str) -> bool:
    """Whether ``out_dir`` holds a run to resume (a saved step under checkpoints/).

    A run is resumed only with the settings it was started with (its config.json):
    any other difference is one :class:`UserError` line listing the differing keys, and
    the user either restores them or starts afresh in a new out_dir. The keys of
    :data:`RESUME_MAY_CHANGE` (steps, log_every, save_every, keep, eval.every,
    profile_steps, out_dir, mesh) are not compared. config.json is never rewritten on a
    resume. See docs/checkpoint.md section 4.
    """
    import json

    ckdir = storage.join(out_dir, "checkpoints")
    if not storage.isdir(ckdir) or not any(n.isdigit() for n in storage.listdir(ckdir)):
        return False
    if cfg.get("resume", "auto") == "overwrite":
        return False  # train() deletes the old run first
    path = storage.join(out_dir, "config.json")
    require(storage.isfile(path), f"{path}: missing; {out_dir} holds checkpoints of a run "
            "whose settings are unknown; use a new out_dir")
    saved = _flat(read_json(path, obj=True))
    now = _flat(json.loads(cfg.to_json()))
    differ = [k for k in sorted(set(saved) | set(now))
              if k not in RESUME_MAY_CHANGE and saved.get(k, "(unset)") != now.get(k, "(unset)")]
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
                          for k in differ[:6]) + (f" (and {len(differ) - 6} more)"
                                                  if len(differ) > 6 else "")
        raise UserError(f"{out_dir}: holds a run started with other settings ({shown}); "
                        "use a new out_dir, restore these settings to resume it, or pass "
                        "--config.resume=overwrite to delete it and start afresh")
    return True


def clear_run(out_dir: str) -> None:
    """Delete what a training run wrote in ``out_dir`` (:data:`RUN_ENTRIES` and its
    TensorBoard event files); anything else there is left alone."""
    if not storage.isdir(out_dir):
        return
    for name in storage.listdir(out_dir):
        if name in RUN_ENTRIES or name.startswith("events.out.tfevents"):
            path = storage.join(out_dir, name)
            storage.rmtree(path) if storage.isdir(path) else storage.remove(path)


# ---- the loop ----------------------------------------------------------------------

def train(cfg, progress: bool = True, _stop_after: int | None = None) -> str:
    """Run (or resume) the training run of config ``cfg``; returns ``out_dir/final``.

    ``_stop_after`` (tests) stops after that many steps as if the job were killed there.
    """
    import orbax.checkpoint as ocp
    from tqdm import tqdm

    from dsl_jax import checkpoint
    from dsl_jax.sharding import make_mesh, parse_mesh
    from dsl_jax.train import data as data_lib
    from dsl_jax.train.events import Logger, StepProfiler
    from dsl_jax.train.state import init_train_state, to_model
    from dsl_jax.train.step import build_train_step, check_batch, model_config

    # Every check that can fail on bad input runs before any compute.
    validate(cfg)
    mesh = make_mesh(parse_mesh(cfg.mesh))
    mc = model_config(cfg)
    M, rows, L = check_batch(cfg, mesh, mc)
    tok, tok_path = data_lib.load_tokenizer(cfg.data, cfg.init_ckpt)
    tok.check_model(mc)
    host, hosts = jax.process_index(), jax.process_count()
    data = data_lib.HostStreams(cfg.data, tok, L, host, hosts)
    per_stream = data.check_rows(rows)
    snrs = eval_snrs(cfg)
    lead = host == 0

    out_dir = storage.abspath(cfg.out_dir)
    storage.check_output_apart(out_dir, train_inputs(cfg), "out_dir")
    storage.require_bucket(out_dir)
    resuming = check_resume_settings(cfg, out_dir)
    if cfg.resume == "overwrite":
        if lead:
            clear_run(out_dir)
        from dsl_jax.checkpoint import sync_hosts
        sync_hosts(f"dsl_jax.train.overwrite:{out_dir}")
    profiler = StepProfiler(out_dir, cfg.profile_steps)
    final_path = storage.join(out_dir, "final")
    steps = int(cfg.steps)
    setup = build_train_step(cfg, mesh)
    # A fresh run's model first: a bad init_ckpt is refused before out_dir is written.
    model = None if resuming else initial_model(cfg, mc, mesh)
    if lead:
        storage.makedirs(out_dir)
        if not resuming:  # a resumed run keeps the config.json it was started with
            write_atomic(storage.join(out_dir, "config.json"), cfg.to_json(indent=2))

    storage.bound_array_io_retries()
    # (cleanup_tmp_directories: a save killed midway left orbax's STEP.orbax-checkpoint-tmp*)
    options = ocp.CheckpointManagerOptions(max_to_keep=int(cfg.keep), create=True,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    mngr = ocp.CheckpointManager(storage.join(out_dir, "checkpoints"), options=options)
    latest = mngr.latest_step()

    # Held-out blocks: the first eval.blocks each input stream yields (with a shuffle
    # buffer, its first draws), never trained on; a resumed run draws them again here.
    eval_rows = None
    if int(cfg.eval.every) > 0 and int(cfg.eval.blocks) > 0:
        eval_rows = data.next_rows(1, int(cfg.eval.blocks))[0]

    if latest is None:
        start = 0
        model = model if model is not None else initial_model(cfg, mc, mesh)
        part, state = init_train_state(model, cfg.objective, setup.optimizer, mesh)
        del model
    else:
        require(latest <= steps, f"{out_dir}: holds a checkpoint at step {latest}, beyond "
                f"steps={steps}; use a new out_dir or raise steps")
        start = latest
        part = setup.partition
        from dsl_jax.checkpoint import read_errors
        with storage.user_errors(out_dir), read_errors(storage.join(out_dir, "checkpoints",
                                                                    str(latest))):
            restored = mngr.restore(latest, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(setup.abstract_state)))
        state = restored.state
        states = {}
        for i in data.ids:
            dpath = _data_state_path(out_dir, latest, i)
            require(storage.isfile(dpath), f"{dpath}: missing data-iterator state for step "
                    f"{latest} (was the run saved with another data.streams?)")
            states[i] = read_json(dpath, obj=True)
        data.restore(states)
        if lead:
            log.info(f"{out_dir}: resuming from the checkpoint of step {latest}")

    logger = Logger(out_dir, start, lead)
    eval_fn = eval_batch = None
    if eval_rows is not None:
        n_eval = int(cfg.eval.blocks) * data.num_streams
        from dsl_jax.sharding import batch_axes, batch_axes_size
        divides = n_eval % batch_axes_size(mesh) == 0
        # Replicated held-out rows would need every host's rows on every host.
        require(divides or hosts == 1, f"eval.blocks x streams = {n_eval} does not divide over "
                f"the mesh's batch axes ({batch_axes_size(mesh)} devices)")
        e_sh = NamedSharding(mesh, P(batch_axes(mesh), None) if divides else P())
        eval_batch = _to_global(eval_rows, e_sh, (n_eval, L))
        eval_fn = setup.eval_step(snrs, int(cfg.loss_chunk), e_sh)
    base_rng = jax.device_put(jax.random.PRNGKey(int(cfg.seed) + 1), setup.rng_sharding)
    eval_rng = jax.device_put(jax.random.PRNGKey(int(cfg.seed) + 2), setup.rng_sharding)

    def check_finite(step_done: int, step_metrics) -> None:
        """Stop on a non-finite loss or gradient norm, before it is logged or saved."""
        values = jax.device_get({k: step_metrics[k] for k in ("loss", "grad_norm")})
        if all(np.isfinite(v) for v in values.values()):
            return
        mngr.wait_until_finished()
        kept = mngr.latest_step()
        raise UserError(
            f"step {step_done}: non-finite loss {float(values['loss'])} / gradient norm "
            f"{float(values['grad_norm'])}; training stopped, "
            + (f"the checkpoint of step {kept} is kept" if kept is not None else
               "no checkpoint was saved") + " (lower optimizer.lr, or check the data)")

    def save(step_done: int, st) -> None:
        for i, position in data.states().items():
            write_json(_data_state_path(out_dir, step_done, i), position, indent=None)
        mngr.save(step_done, args=ocp.args.Composite(state=ocp.args.StandardSave(st)))
        _prune_data_states(out_dir, set(mngr.all_steps()) | {step_done})

    # Preemption (SIGTERM). On several processes JAX's preemption service, which
    # jax.distributed.initialize starts and which owns SIGTERM, passes the notice to
    # every host and names one step, the same on all, at which mngr.reached_preemption
    # is true: every host saves that step. (A per-process flag let hosts enter the
    # save's collectives at different steps and hang.) One process has no distributed
    # runtime, hence no preemption service (reached_preemption is always false): there
    # a SIGTERM flag of its own is the whole agreement needed.
    stop = {"term": False}
    previous = None
    if hosts == 1 and threading_main():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(term=True))

    def preempted(step_done: int) -> bool:
        """Whether to save ``step_done`` and stop; every host asks at every step."""
        return mngr.reached_preemption(step_done) or stop["term"]

    bar = tqdm(total=steps, initial=start, disable=not (progress and lead), file=sys.stderr,
               dynamic_ncols=True, desc=f"train {cfg.objective}", unit="step")
    tokens_per_step = M * rows * L
    t_last, steps_since = time.perf_counter(), 0
    try:
        step = start
        unchecked = None  # (step, metrics) of a step whose loss is not checked yet
        while step < steps:
            local = data.next_rows(M, per_stream)
            batch = _to_global(local, setup.batch_sharding, (M, rows, L))
            profiler.before(step + 1)
            state, metrics = setup.step(state, batch, base_rng)
            step += 1
            profiler.after(step, metrics)
            steps_since += 1
            bar.update(1)
            if unchecked is not None:  # the step before this one, done by now: no stall
                check_finite(*unchecked)
            unchecked = (step, metrics)
            stopping = preempted(step)
            logging_now = step % int(cfg.log_every) == 0 or step == steps
            saving_now = step % int(cfg.save_every) == 0 or step == steps or stopping
            eval_now = eval_fn is not None and (step % int(cfg.eval.every) == 0
                                                or step == steps)
            if logging_now or saving_now or eval_now:  # nothing non-finite is logged,
                # evaluated or saved
                check_finite(step, metrics)
                unchecked = None
            if logging_now:
                values = jax.device_get(metrics)
                now = time.perf_counter()
                tps = tokens_per_step * steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                values["tokens_per_s"] = tps
                logger.log(step, values)
                bar.set_postfix(loss=f"{float(values['loss']):.4f}", tok_s=f"{tps:,.0f}")
            if eval_now:
                ev = jax.device_get(eval_fn(state.params, state.frozen, eval_batch, eval_rng))
                logger.log(step, {f"eval/{k}": v for k, v in ev.items()})
                t_last = time.perf_counter()  # evaluation time is not training throughput
            if saving_now:
                save(step, state)
            if stopping:
                mngr.wait_until_finished()
                raise UserError(f"stopped by SIGTERM at step {step}; checkpoint saved, "
                                "run the same command to resume")
            if _stop_after is not None and step >= _stop_after:
                mngr.wait_until_finished()
                return ""
        mngr.wait_until_finished()
        model = to_model(part, state)
        from dsl_jax.tokenizer import tokenizer_files
        # the tokenizer and the files beside it (tokenizer_config.json: the chat template)
        extra = {**tokenizer_files(storage.dirname(tok_path)), "tokenizer.json": tok_path}
        checkpoint.save_model(final_path, model, overwrite=True, extra_files=extra)
        return final_path
    except BaseException as e:
        # A failed save (a full disk) leaves no half-written step, and names the folder.
        with contextlib.suppress(Exception):
            mngr.close()
        if lead:
            ckdir = storage.join(out_dir, "checkpoints")
            for tmp in storage.glob(storage.join(ckdir, "*.orbax-checkpoint-tmp*")):
                storage.rmtree(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            e.filename = storage.join(out_dir, "checkpoints")
        raise
    finally:
        profiler.stop()
        bar.close()
        logger.close()
        mngr.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
