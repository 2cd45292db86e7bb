"""``dsl-jax lm-eval ARGS``: lm-evaluation-harness's command line with the ``dsl-jax``
model registered.

Every argument goes to lm_eval's own CLI as it is (``lm_eval run ARGS``); ``--model
dsl-jax`` is added when no ``--model`` is given. lm_eval has no plugin discovery for
models, so its own ``lm_eval`` command does not know ``dsl-jax``: this one imports
``dsl_jax.evaluation.harness`` first. Example::

    dsl-jax lm-eval --model_args ckpt=ckpts/dsl,sampler=sde,nfe=16 --tasks gsm8k \\
        --batch_size 16 --output_path runs/lm_eval

Model arguments: ckpt, tokenizer, sampler, nfe, gen_length, batch_size, mesh
(``fsdp=-1`` or ``DATAxFSDPxTENSOR``), dtype, seed, mc_samples, add_bos, generator
(docs/evaluation.md section 3). Needs the ``lmeval`` extra (pip install -e ".[lmeval]").
"""

from __future__ import annotations

import argparse
import sys

from dsl_jax.commands import add_command


def register(sub):
    # "+" as the option prefix: every "-..." argument is lm_eval's, passed on untouched.
    p = add_command(sub, "lm-eval", __doc__, prefix_chars="+", add_help=False)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def lm_eval_argv(args: list[str]) -> list[str]:
    """lm_eval's argv for ``dsl-jax lm-eval ARGS``: ``--model dsl-jax`` added if absent."""
    args = list(args)
    if args and args[0] in ("-h", "--help"):
        return ["lm-eval", "run", "--help"]
    has_model = any(a == "--model" or a.startswith("--model=") for a in args)
    return ["lm-eval", "run", *([] if has_model else ["--model", "dsl-jax"]), *args]


def run(args) -> int:
    from dsl_jax.evaluation import harness

    harness.register()
    from lm_eval.__main__ import cli_evaluate

    argv = lm_eval_argv(args.lm_eval_args)
    if argv[2:] == ["--help"]:
        print(__doc__)
    saved = sys.argv
    sys.argv = argv
    try:
        cli_evaluate()
    except ValueError as e:  # lm_eval's word for a task name it does not know
        if not str(e).startswith("Tasks not found"):
            raise
        from dsl_jax.errors import UserError
        raise UserError(f"--tasks: {str(e).splitlines()[0]} (lm-eval ls tasks lists them)") from None
    finally:
        sys.argv = saved
    return 0
