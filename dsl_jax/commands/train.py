"""``dsl-jax train``: DSL adaptation or the masked-diffusion control, resumable.

    dsl-jax train --config configs/dsl_llada_8b.py --config.init_ckpt=CKPT [--config.KEY=VALUE ...]

Configs: configs/dsl_llada_8b.py (the 8B DSL recipe), configs/mdm_llada_8b.py (the
masked-diffusion control), configs/dsl_small.py (a small model on CPU). Every field is
listed, with its meaning, in dsl_jax/train/__init__.py (default_config): objective,
model, init_ckpt, dtype, steps, global_batch, micro_batches, seq_len, mesh, dsl.*,
optimizer.*, data.*, eval.*, out_dir, save_every, keep, log_every, seed.

What a run writes under ``out_dir``:

    config.json          the run config
    checkpoints/N/       orbax CheckpointManager steps (async saves, the last ``keep`` kept):
                         parameters, optimizer state and step
    data_state/N/        each input stream's data-iterator position at step N (JSON)
    events.out.tfevents.*  TensorBoard scalars (lead host)
    metrics.jsonl        the same scalars, one JSON object per logged step (lead host)
    final/               a dsl-jax checkpoint (DSLModel for dsl, LLaDA for mdm) + tokenizer.json

Starting the same command again resumes from the newest checkpoint: same data order,
same noise, the same losses as an uninterrupted run. SIGTERM (a preempted TPU VM)
saves a checkpoint before exiting; on a pod every host saves the same step, agreed through
JAX's preemption service, whichever host got the signal.
"""

from __future__ import annotations

from dsl_jax.commands import add_command


def register(sub):
    from dsl_jax.configlib import add_config_arguments

    p = add_command(sub, "train", __doc__)
    add_config_arguments(p, example="--config.steps=20")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax

    from dsl_jax.configlib import from_args
    from dsl_jax.train.loop import train

    path = train(from_args(args), progress=not args.no_progress)
    if jax.process_index() == 0:
        print(path)
    return 0
