"""Running a dsl-jax command on every worker of a TPU VM slice through the Google
Cloud CLI: the environment exported on the workers, the shell command line each
worker runs, and the ``gcloud compute tpus tpu-vm ssh`` argv (``dsl-jax launch``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil

from dsl_jax.errors import UserError, require

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def gcloud_argv(gcloud: str, tpu: str, zone: str, project: str | None, worker: str,
                extra: list[str], command: str) -> list[str]:
    """The argv that runs ``command`` on ``worker`` ("all" or e.g. "0,1") of ``tpu``."""
    require(bool(tpu.strip()) and bool(zone.strip()), "--tpu and --zone must not be empty")
    for flag, value in (("--tpu", tpu), ("--zone", zone), ("--project", project or "")):
        # gcloud would take a value such as --command=... as an option of its own
        require(not value.startswith("-") and not any(c.isspace() for c in value),
                f"{flag} {value!r}: expected a name (no leading '-', no spaces)")
    require(worker == "all" or bool(re.fullmatch(r"\d+(,\d+)*", worker)),
            f"--worker {worker!r}: expected 'all' or worker numbers such as 0,1")
    argv = [gcloud, "compute", "tpus", "tpu-vm", "ssh", tpu, "--zone", zone]
    if project:
        argv += ["--project", project]
    argv += [f"--worker={worker}", *extra, "--command", command]
    return argv


def find_gcloud(gcloud: str) -> str:
    """The path of the gcloud executable ``gcloud`` (a name on PATH or a path)."""
    exe = shutil.which(gcloud)
    if exe is None:
        raise UserError(f"{gcloud}: not found; install the Google Cloud CLI "
                        "(https://cloud.google.com/sdk/docs/install) or pass --gcloud PATH")
    return exe
