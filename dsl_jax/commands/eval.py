"""``dsl-jax eval``: zero-shot summarization sweeps.

For each benchmark, examples of a split are read from a prepared tensorflow-datasets
data dir, a local Hugging Face copy (``hf:KEY:DIR``) or a file (``json:FILE``,
``jsonl:FILE``: the authors' drawn records as they are, or rows drawn with ``data_seed``),
sources cut to ``max_words`` words, the benchmark's prompt in LLaDA's chat template; every
sampler x NFE cell generates a summary per example and scores it (ROUGE-1/2/L/Lsum with
95% bootstrap intervals, length, empty rate, repetition, distinct-n). The samplers
``lead1``, ``lead3`` (``leadK``) are the lead-k baselines: no model, no checkpoint.

Results go to ``out_dir``: per-example records of each cell, summary.csv, summary.json,
table.md, plots and timing.json (the layout: dsl_jax/evaluation/sweep.py; the protocol:
docs/evaluation.md). A killed sweep run again with the same ``out_dir`` resumes where it
stopped; on a pod each host samples its share and the lead host merges.
"""

from __future__ import annotations

import inspect
from dsl_jax.commands import add_command


def register(sub):
    from dsl_jax.configlib import add_config_arguments

    p = add_command(sub, "eval", __doc__, epilog=_config_help(), usage="dsl-jax eval --config configs/eval_summarization.py [--config.KEY=VALUE ...]")
    add_config_arguments(p, default="eval_summarization",
                         example="--config.ckpt=DIR --config.benchmarks=xsum,cnn_dailymail "
                                 "--config.nfe=8,16,32,64 --config.samplers=sde,remask,eos_block")
    p.set_defaults(func=run)


def _config_help() -> str:
    """The fields of a sweep config with their defaults and comments."""
    from dsl_jax.evaluation.sweep import default_config

    try:
        source = inspect.getsource(default_config)
    except (OSError, TypeError):  # no source files (a frozen or byte-compiled install)
        return ""
    lines = [ln.strip()[2:] for ln in source.splitlines() if ln.strip().startswith("c.")]
    return "config fields (--config.KEY=VALUE):\n" + "\n".join("  " + ln for ln in lines)


def run(args) -> int:
    from dsl_jax import storage
    from dsl_jax.configlib import from_args
    from dsl_jax.evaluation import benchmarks as B
    from dsl_jax.evaluation.sweep import Settings, run_sweep

    s = Settings.from_config(from_args(args))
    benches = B.resolve(s.benchmarks)
    storage.check_output_apart(s.out_dir, {
        "ckpt": s.ckpt, "tokenizer": s.tokenizer,
        "data_dir": s.data_dir if any(not b.local_file for b in benches) else "",
        "benchmark file": [b.local_file for b in benches if b.local_file]}, "out_dir")
    run_sweep(s)
    return 0
