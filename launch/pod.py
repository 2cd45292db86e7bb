"""``dsl-jax launch``: run a dsl-jax command on every worker of a TPU VM slice.

    dsl-jax launch --tpu my-v5p-32 --zone us-east5-a [--project P] [--dry-run] \\
        -- train --config configs/dsl_llada_8b.py --config.data.name=fineweb_edu

runs, through the Google Cloud CLI,

    gcloud compute tpus tpu-vm ssh my-v5p-32 --zone us-east5-a --worker=all \\
        --command 'cd ~/dsl-jax && . .venv/bin/activate && export DSL_JAX_DISTRIBUTED=1 && dsl-jax train ...'

Every word after ``--`` is shell-quoted, so spaces and quotes reach the workers
intact. ``DSL_JAX_DISTRIBUTED=1`` tells each worker to start ``jax.distributed``
(launch/distributed.py). ``--dry-run`` prints the command instead of running it.
The project must already be installed on the workers in ``--remote-dir`` (with its
virtualenv at ``--venv``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys

from dsl_jax.errors import UserError, require

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def register(sub):
    p = sub.add_parser(
        "launch", help="run a dsl-jax command on every worker of a TPU VM slice",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tpu", required=True, metavar="NAME", help="TPU VM (slice) name")
    p.add_argument("--zone", required=True, help="its zone, e.g. us-east5-a")
    p.add_argument("--project", default=None, help="Google Cloud project (default: gcloud's)")
    p.add_argument("--worker", default="all",
                   help="workers to run on: 'all' (default) or a list such as 0,1")
    p.add_argument("--remote-dir", default="~/dsl-jax",
                   help="directory on the workers holding the project (default ~/dsl-jax)")
    p.add_argument("--venv", default=".venv",
                   help="virtualenv to activate on the workers, relative to --remote-dir or "
                        "absolute; '' to activate none (default .venv)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable on the workers (repeatable)")
    p.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="pass this machine's value of an environment variable (repeatable)")
    p.add_argument("--no-distributed", action="store_true",
                   help="do not set DSL_JAX_DISTRIBUTED=1 on the workers")
    p.add_argument("--raw", action="store_true",
                   help="run the words after -- as a shell command, not as a dsl-jax subcommand")
    p.add_argument("--gcloud", default="gcloud", help="the gcloud executable (default: gcloud on PATH)")
    p.add_argument("--gcloud-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for 'gcloud ... ssh', e.g. --gcloud-arg=--internal-ip")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    # dest must not be "command": the CLI keeps the subcommand's name there.
    p.add_argument("remote", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="-- then the dsl-jax subcommand and its arguments")
    p.set_defaults(func=run)


def _quote_path(path: str) -> str:
    """Shell-quote a path but keep a leading ``~`` or ``~/`` expandable on the remote side."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~/"
    return shlex.quote(path)


def environment(env: list[str], pass_env: list[str], distributed: bool,
                local: dict | None = None) -> list[tuple[str, str]]:
    """The (name, value) pairs exported on the workers."""
    local = os.environ if local is None else local
    out: list[tuple[str, str]] = []
    if distributed:
        out.append(("DSL_JAX_DISTRIBUTED", "1"))
    for item in env:
        require("=" in item, f"--env {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        require(bool(_ENV_NAME.match(key)), f"--env {item!r}: {key!r} is not a valid variable name")
        out.append((key, value))
    for key in pass_env:
        require(bool(_ENV_NAME.match(key)), f"--pass-env {key!r}: not a valid variable name")
        require(key in local, f"--pass-env {key}: not set on this machine")
        out.append((key, local[key]))
    return out


def remote_command(words: list[str], remote_dir: str = "~/dsl-jax", venv: str = ".venv",
                   env: list[tuple[str, str]] = (), raw: bool = False) -> str:
    """The shell command line each worker runs."""
    parts = []
    if remote_dir:
        parts.append(f"cd {_quote_path(remote_dir)}")
    if venv:
        parts.append(f". {_quote_path(venv.rstrip('/') + '/bin/activate')}")
    if env:
        parts.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env))
    if not raw and words[0] != "dsl-jax":
        words = ["dsl-jax", *words]
    parts.append(shlex.join(words))
    return " && ".join(parts)


def gcloud_argv(args, command: str) -> list[str]:
    argv = [args.gcloud, "compute", "tpus", "tpu-vm", "ssh", args.tpu, "--zone", args.zone]
    if args.project:
        argv += ["--project", args.project]
    argv += [f"--worker={args.worker}", *args.gcloud_arg, "--command", command]
    return argv


def build(args) -> list[str]:
    """Validate ``args`` and return the gcloud argv."""
    from dsl_jax.cli import SUBCOMMANDS

    words = list(args.remote)
    if words and words[0] == "--":
        words = words[1:]
    require(bool(words), "no command given: put the dsl-jax subcommand after --, e.g. "
                         "dsl-jax launch --tpu NAME --zone ZONE -- train --config CONFIG")
    require(bool(args.tpu.strip()) and bool(args.zone.strip()), "--tpu and --zone must not be empty")
    if not args.raw:
        sub = words[1] if words[0] == "dsl-jax" and len(words) > 1 else words[0]
        require(sub in SUBCOMMANDS or sub.startswith("-"),
                f"{sub!r} is not a dsl-jax subcommand (one of {', '.join(SUBCOMMANDS)}); "
                f"use --raw to run an arbitrary shell command")
        require(sub != "launch", "launch cannot run itself on the workers")
    env = environment(args.env, args.pass_env, not args.no_distributed)
    return gcloud_argv(args, remote_command(words, args.remote_dir, args.venv, env, args.raw))


def run(args) -> int:
    argv = build(args)
    if args.dry_run:
        print(shlex.join(argv))
        return 0
    exe = shutil.which(args.gcloud)
    if exe is None:
        raise UserError(f"{args.gcloud}: not found; install the Google Cloud CLI "
                        "(https://cloud.google.com/sdk/docs/install) or pass --gcloud PATH")
    print(f"dsl-jax launch: {shlex.join(argv)}", file=sys.stderr, flush=True)
    return subprocess.run([exe, *argv[1:]]).returncode
