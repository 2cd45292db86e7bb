"""``dsl-jax``: the one command-line front door.

Each subcommand lives in its own module ``dsl_jax/commands/<name>.py``, which defines
``register(subparsers)`` (adds its parser and sets ``func``) and ``run(args) -> int``.
Modules are imported only when needed so that ``dsl-jax --help`` answers quickly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from dsl_jax.errors import UserError, one_line

# subcommand -> (module, one-line help). Order is the order shown by --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dsl_jax.commands.demo", "run the whole pipeline at small scale on this machine"),
    "forward": ("dsl_jax.commands.forward", "run a forward pass of a model and print logits' summary"),
    "convert": ("dsl_jax.commands.convert", "convert a Hugging Face LLaDA / DSL-LLaDA checkpoint to orbax"),
    "export": ("dsl_jax.commands.export", "export a dsl-jax checkpoint to Hugging Face safetensors"),
    "verify": ("dsl_jax.commands.verify", "compare a converted checkpoint's logits with PyTorch"),
    "train": ("dsl_jax.commands.train", "DSL adaptation or the masked-diffusion control"),
    "sample": ("dsl_jax.commands.sample", "generate with DSL-SDE, its ODE, or LLaDA's remasking"),
    "eval": ("dsl_jax.commands.eval", "summarization sweeps with ROUGE, length and repetition"),
    "robustness": ("dsl_jax.commands.robustness", "noisy-state robustness of checkpoints"),
    "lm-eval": ("dsl_jax.commands.lm_eval", "lm-evaluation-harness's CLI with the dsl-jax model registered"),
    "compile-check": ("dsl_jax.commands.compile_check", "compile ahead of time for a TPU topology; memory per chip"),
    "launch": ("dsl_jax.commands.launch", "run a dsl-jax command on every worker of a TPU VM slice"),
    "pod-sim": ("dsl_jax.commands.pod_sim", "run a dsl-jax command as N processes of a simulated pod on this machine"),
    "bench": ("dsl_jax.commands.bench", "benchmarks, measured side by side in one run"),
}


# Commands that run on this machine alone, never as one process of a pod job.
LOCAL_ONLY = ("launch", "pod-sim", "compile-check", "bench", "demo")


class _StatusLines(logging.Handler):
    """The status lines long jobs log as they go (``logging`` INFO records of dsl_jax's
    modules), one plain line each on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def show_status_lines() -> None:
    logger = logging.getLogger("dsl_jax")
    if not any(isinstance(h, _StatusLines) for h in logger.handlers):
        handler = _StatusLines()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not again through other handlers on the root logger


class _Parser(argparse.ArgumentParser):
    """argparse with a bad argument reported as one line (its usage is ``--help``'s)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(load_all: bool = False, only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsl-jax",
        description="DSL-LLaDA in JAX: continuous denoising for masked diffusion language models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'dsl-jax SUBCOMMAND --help' for a subcommand's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == only or load_all:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from dsl_jax.launch.distributed import quiet_startup
    quiet_startup()  # before any JAX backend starts or TensorFlow is imported
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in SUBCOMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except UserError as e:  # a malformed --config.KEY override
        print(f"dsl-jax {command}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help (0) or a bad argument (2, one line printed)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    show_status_lines()
    return _leave(_run(args))


def _run(args) -> int:
    try:
        try:
            if args.command not in LOCAL_ONLY:
                from dsl_jax.launch.distributed import maybe_initialize
                maybe_initialize()  # on a multi-host pod slice every host joins; else nothing
            return int(args.func(args) or 0)
        except BaseException:
            _end_progress_bars()  # the error line starts a line of its own
            raise
    except UserError as e:
        print(f"dsl-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsl-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # no traceback for the user; DSL_JAX_DEBUG=1 keeps it
        if os.environ.get("DSL_JAX_DEBUG", "") not in ("", "0"):
            raise
        os_error = _os_error(e)
        if os_error is not None:  # no space, read-only, not a directory...: PATH: reason
            from dsl_jax.storage import os_error_line
            print(f"dsl-jax {args.command}: error: {os_error_line(os_error)}", file=sys.stderr)
            return 1
        print(f"dsl-jax {args.command}: error: {one_line(e)} (run with DSL_JAX_DEBUG=1 for "
              "the traceback)", file=sys.stderr)
        return 1


def _end_progress_bars() -> None:
    """Close the progress bars a failed command left open (each then ends its line)."""
    if "tqdm" not in sys.modules:
        return
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close is left as it is
            pass


def _os_error(e: BaseException) -> OSError | None:
    """``e`` when an OSError, or the OSError it was raised from (``raise ... from``, as
    libraries wrapping a failed write do); None otherwise."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__, seen + 1
    return None


def _leave(code: int) -> int:
    """``code``, or, for a failed process of a multi-process run, exit at once with it:
    JAX's shutdown at exit would wait for every other host, which may be waiting for
    this one inside a collective, so the pod would hang instead of ending."""
    from dsl_jax.launch import distributed

    if code and distributed.started():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
