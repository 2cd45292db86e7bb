"""Multi-host start for TPU pod slices, and lead-host helpers.

On a multi-host TPU VM slice every worker runs the same command (``dsl-jax launch``
does it); each process must call :func:`jax.distributed.initialize` before touching
devices so that ``jax.devices()`` spans the whole slice. :func:`maybe_initialize`
does that when it detects a pod slice and nothing otherwise, so the same entry
point runs on a laptop, one TPU VM and a pod.

Detection, first match wins:

1. ``DSL_JAX_DISTRIBUTED`` = ``1``/``true``/``yes`` forces the start (``dsl-jax launch``
   sets it on every worker); ``0``/``false``/``no`` disables it.
2. A multi-host environment: ``TPU_WORKER_HOSTNAMES`` naming more than one host,
   ``MEGASCALE_COORDINATOR_ADDRESS`` (multi-slice), or ``JAX_COORDINATOR_ADDRESS``
   (explicit coordinator).
3. Otherwise: single process, nothing to do.

Where the processes are (:func:`initialize_kwargs`): ``JAX_COORDINATOR_ADDRESS``
(``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, those that
are set, are passed to :func:`jax.distributed.initialize`; JAX finds the rest itself
(TPU VM metadata, SLURM, Open MPI, GKE). A process
on CPU (``JAX_PLATFORMS=cpu``) runs its cross-process collectives over gloo, and
``XLA_FLAGS=--xla_force_host_platform_device_count=K`` gives it K devices: that is how
``dsl-jax pod-sim`` (launch/pod_sim.py) runs a pod on one machine.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

ENV_FLAG = "DSL_JAX_DISTRIBUTED"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

_started = False


def on_tpu_host() -> bool:
    """Whether this machine has TPU chips attached (a TPU VM)."""
    return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")


def default_platforms(environ=None) -> None:
    """Off a TPU VM, keep the installed libtpu from probing for TPUs (metadata-server
    queries, pages of warnings): unless ``JAX_PLATFORMS`` is set, use CUDA where its
    plugin is installed, else the CPU. JAX reads ``JAX_PLATFORMS`` when it is imported,
    so for the process environment an already imported JAX is told too (before it
    starts a backend)."""
    import importlib.util
    import sys

    env = os.environ if environ is None else environ
    if env.get("JAX_PLATFORMS") is not None or on_tpu_host():
        return
    cuda = any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    env["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"
    if env is os.environ and "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", env["JAX_PLATFORMS"])


# Set before TensorFlow (tensorflow-datasets) is imported: no C++ log lines from
# TensorFlow and XLA short of a crash, and no oneDNN notice (dsl-jax only reads data
# through tf.data, where oneDNN's custom ops play no part).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_startup() -> None:
    """A command's start-up defaults, first thing in ``main``: :data:`QUIET_ENV` (unless
    set), :func:`default_platforms`, and the Python logs of absl (orbax,
    tensorflow-datasets) and gcsfs silent short of fatal (errors with ``DSL_JAX_DEBUG=1``),
    so that a plain run prints nothing that looks like an error but its own one line."""
    from absl import logging as absl_logging

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    default_platforms()
    # orbax (through absl) and gcsfs log a failure with its traceback from their worker
    # threads, then raise it: the command reports the raised error in one line. With
    # DSL_JAX_DEBUG=1 their error logs stay on.
    debug = os.environ.get("DSL_JAX_DEBUG", "") not in ("", "0")
    absl_logging.set_verbosity(absl_logging.ERROR if debug else absl_logging.FATAL)
    for name in ("gcsfs", "fsspec"):
        logging.getLogger(name).setLevel(logging.ERROR if debug else logging.CRITICAL)


def should_initialize(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on a multi-host slice and must start ``jax.distributed``."""
    from dsl_jax.errors import UserError

    env = os.environ if environ is None else environ
    flag = env.get(ENV_FLAG)
    if flag is not None:
        value = flag.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise UserError(f"{ENV_FLAG}={flag!r}: expected 1 or 0")
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return True
    return bool(env.get("MEGASCALE_COORDINATOR_ADDRESS") or env.get("JAX_COORDINATOR_ADDRESS"))


def initialize_kwargs(environ: Mapping[str, str] | None = None) -> dict:
    """``jax.distributed.initialize`` arguments from those of ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` that are set (JAX detects the others on
    TPU VMs, SLURM, Open MPI and GKE; none set: {}); one clear error when one is
    malformed."""
    from dsl_jax.errors import UserError, require

    env = os.environ if environ is None else environ
    names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    given = {k: env[k].strip() for k in names if env.get(k, "").strip()}
    out: dict = {}
    if "JAX_COORDINATOR_ADDRESS" in given:
        address = given["JAX_COORDINATOR_ADDRESS"]
        require(":" in address and address.rsplit(":", 1)[1].isdigit(),
                f"JAX_COORDINATOR_ADDRESS={address!r}: expected host:port")
        out["coordinator_address"] = address
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if name in given:
            try:
                out[key] = int(given[name])
            except ValueError:
                raise UserError(f"{name}={given[name]!r} must be an integer") from None
    n, pid = out.get("num_processes"), out.get("process_id")
    require(n is None or n >= 1, f"JAX_NUM_PROCESSES={n} must be >= 1")
    require(pid is None or (pid >= 0 and (n is None or pid < n)),
            f"JAX_PROCESS_ID={pid} must be in [0, JAX_NUM_PROCESSES"
            + (f"={n})" if n is not None else ")"))
    return out


def _on_cpu(env: Mapping[str, str]) -> bool:
    return env.get("JAX_PLATFORMS", "").split(",")[0].strip().lower() == "cpu"


def maybe_initialize(environ: Mapping[str, str] | None = None, **kwargs) -> bool:
    """Call ``jax.distributed.initialize`` once when on a multi-host slice, with
    :func:`initialize_kwargs` of the environment updated by ``kwargs``; on CPU with gloo
    collectives.

    Returns True when the distributed runtime is (now) started, False when this is a
    single-process run and nothing was done. Call it first thing in a command, before
    any JAX computation or ``jax.devices()``.
    """
    global _started
    if _started:
        return True
    if not should_initialize(environ):
        return False
    import jax

    env = os.environ if environ is None else environ
    kwargs = {**initialize_kwargs(env), **kwargs}
    if _on_cpu(env):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    _started = True
    return True


def started() -> bool:
    """Whether this process joined a multi-process run (:func:`maybe_initialize`)."""
    return _started


def process_index() -> int:
    import jax
    return jax.process_index()


def process_count() -> int:
    import jax
    return jax.process_count()


def is_lead() -> bool:
    """True on the lead host (process 0): the one that writes logs, metrics and prints."""
    return process_index() == 0


def lead_print(*args, **kwargs) -> None:
    """``print`` on the lead host only."""
    if is_lead():
        print(*args, **kwargs)
