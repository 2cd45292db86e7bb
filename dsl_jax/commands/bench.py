"""``dsl-jax bench NAME``: benchmarks measured side by side in one run.

Each benchmark is a module ``dsl_jax.benchmarks.NAME`` defining ``add_arguments(parser)``
and ``run(args) -> int``; it prints a table and, with ``--json FILE``, writes its figures.
"""

from __future__ import annotations

import importlib
from dsl_jax.commands import add_command

BENCHMARKS: dict[str, str] = {
    "forward": "forward throughput of the jitted Flax model vs the transformers reference (CPU)",
    "convert": "streaming conversion of a synthetic multi-GB checkpoint: peak memory, throughput",
    "train": "DSL train-step throughput vs a plain PyTorch DSL step",
    "sample": "batched jitted DSL-SDE vs a one-prompt-at-a-time PyTorch loop",
    "cache_quality": "DSL-SDE's prompt cache: token agreement and ROUGE-1 per refresh interval",
    "compile": "ahead-of-time TPU compiles of the 8B forward and train step: memory per chip, MFU",
}


def register(sub):
    p = add_command(sub, "bench", __doc__)
    names = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, help_text in BENCHMARKS.items():
        module = importlib.import_module(f"dsl_jax.benchmarks.{name}")
        q = names.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(q)
        q.set_defaults(func=module.run)
