"""``dsl-jax compile-check``: compile ahead of time for a TPU topology, on a machine
without TPUs, and report memory per chip, the compiler's FLOPs and time estimate,
and the estimated MFU. Exits 1 when the program does not fit in the chip's HBM.

    dsl-jax compile-check --what forward --model llada-8b --topology v5p-16 --batch 8 --length 4096
    dsl-jax compile-check --config configs/dsl_llada_8b.py --topology v5p-32 [--config.KEY=VALUE ...]

Needs libtpu (``pip install -e .[tpu]``): ``jax.experimental.topologies`` builds
compile-only devices of the topology, the mesh is laid on them, and
``jax.jit(...).lower(abstract arguments).compile()`` runs the real TPU compiler.
Nothing is allocated: parameters, optimizer state and batches are abstract.

Multi-slice: ``--num-slices N`` compiles for N such slices joined over the data-centre
network (libtpu's ``num_slices``; the devices carry ``slice_index``); the mesh puts the
slices on ``dcn_data`` (or as ``--mesh dcn_fsdp=N,...`` says) and ``--mesh``'s
``data``/``fsdp``/``tensor`` sizes describe one slice. Memory is per chip, FLOPs and
MFU over the chips of all slices.

Topology names: ``GEN-N`` as Cloud TPU names slices, or a raw libtpu name ``GEN:AxBxC``.
  v4-N, v5p-N   N counts TensorCores, 2 per chip: v5p-8 = 4 chips (2x2x1), v5p-16 = 8 chips
                (2x2x2), v5p-32 = 16 chips (2x2x4), v4-32 = 16 chips (2x2x4), ...
  v5e-N (or v5litepod-N), v6e-N   N counts chips: v5e-8 = 2x4, v6e-16 = 4x4, ...
  raw           v5p:2x2x4, v4:2x2x2, v5e:4x4, v6e:2x4 (v4 runs in megacore mode,
                one device per chip, as Cloud TPU v4 slices do).
Per chip: HBM v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB; peak bf16 FLOP/s v4 275e12,
v5e 197e12, v5p 459e12, v6e 918e12.

FLOPs and time. XLA's cost model counts the body of every loop once, and the model
scans its layers (and the train step scans micro-batches and loss chunks), so its
raw ``flops``/``optimal_seconds`` cover one layer, not 32. compile-check counts the
program's matmul FLOPs from its jaxpr twice, with loop trip counts and with each
loop body once; the ratio (the "loop factor") scales the compiler's optimal time into
a step estimate. That assumes the work outside the loops (the optimizer update,
memory-bound) scales like the loop bodies, so the step estimate errs long and the MFU
estimate errs low; both are estimates, not measurements. Model FLOPs (for MFU) are
the usual analytic count: 2 (forward) or 6 (trained) x matmul parameters x tokens,
plus attention, frozen weights at 4 (forward and input gradient), no
rematerialisation.

Attention. On a TPU topology the model's ``attention="auto"`` is the Pallas splash kernel
(``--attention xla`` compiles XLA's attention instead, to compare). XLA's cost model counts
no FLOPs for such a custom kernel, so its matmul FLOPs are counted apart from the
jaxpr (each kernel body's matmuls times its grid, with loop trip counts; per device inside
the ``shard_map``) and added to the step estimate at the chip's peak FLOP/s: an optimistic
time for the kernel, reported on its own line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import time

from dsl_jax.errors import UserError, require

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str  # user-facing prefix
    libtpu: str  # the name libtpu's topology parser takes
    hbm_bytes: int  # per chip
    peak_flops: float  # bf16 FLOP/s per chip
    suffix_counts: str  # "cores" (2 per chip) or "chips"
    dims: int  # torus dimensions
    kwargs: tuple = ()  # extra get_topology_desc options


GENERATIONS: dict[str, Generation] = {
    "v4": Generation("v4", "v4", 32 * GiB, 275e12, "cores", 3, (("chip_config_name", "megacore"),)),
    "v5p": Generation("v5p", "v5p", 95 * GiB, 459e12, "cores", 3),
    "v5e": Generation("v5e", "v5e", 16 * GiB, 197e12, "chips", 2),
    "v6e": Generation("v6e", "v6e", 32 * GiB, 918e12, "chips", 2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e"}

# chips -> torus shape of the standard slices.
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
             2048: (8, 16, 16), 4096: (16, 16, 16)}
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
             128: (8, 16), 256: (16, 16)}

ACCEPTED = ("GEN-N with GEN one of v4, v5p (N = TensorCores = 2 x chips: 8, 16, 32, ... 8192), "
            "v5e/v5litepod, v6e (N = chips: 1, 4, 8, 16, ... 256); or a raw libtpu name "
            "such as v5p:2x2x4, v4:2x2x2, v5e:4x4, v6e:2x4")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user gave it
    generation: Generation
    shape: tuple[int, ...]  # of one slice
    suffix: str = ""  # _twisted / _untwisted
    num_slices: int = 1  # slices joined over DCN (multi-slice)

    @property
    def slice_chips(self) -> int:
        return math.prod(self.shape)

    @property
    def chips(self) -> int:
        """Chips of all slices."""
        return self.slice_chips * self.num_slices

    @property
    def libtpu_name(self) -> str:
        return f"{self.generation.libtpu}:{'x'.join(map(str, self.shape))}{self.suffix}"

    @property
    def slice_name(self) -> str:
        g = self.generation
        n = self.slice_chips * (2 if g.suffix_counts == "cores" else 1)
        return f"{g.name}-{n}"

    @property
    def label(self) -> str:
        """The name as given, with the slice count when there are several."""
        return self.name if self.num_slices == 1 else f"{self.num_slices} x {self.name}"

    def kwargs(self) -> dict:
        kw = dict(self.generation.kwargs)
        if self.num_slices > 1:
            kw["num_slices"] = self.num_slices
        padded = tuple(self.shape) + (1,) * (3 - len(self.shape))
        if padded[0] % 2 or padded[1] % 2:  # smaller than libtpu's default 2x2x1 host
            kw["chips_per_host_bounds"] = list(padded)
        return kw


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """``v5p-32`` / ``v4-32`` / ``v5e-16`` / ``v6e-8`` or raw ``v5p:2x2x4``; ``num_slices``
    such slices joined over DCN (multi-slice)."""
    require(num_slices >= 1, f"--num-slices must be at least 1, got {num_slices}")
    return dataclasses.replace(_parse_topology(name), num_slices=num_slices)


def _parse_topology(name: str) -> Topology:
    text = name.strip().lower()
    unknown = f"unknown TPU topology {name!r}; use {ACCEPTED}"
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if m:
        gen = GENERATIONS.get(ALIASES.get(m.group(1), m.group(1)))
        require(gen is not None, unknown)
        n = int(m.group(2))
        if gen.suffix_counts == "cores":
            require(n % 2 == 0 and n // 2 in SHAPES_3D,
                    f"{name}: {gen.name}-N counts TensorCores (2 per chip); N must be one of "
                    f"{', '.join(str(2 * c) for c in SHAPES_3D)} (or give a raw name such as "
                    f"{gen.libtpu}:2x2x4)")
            return Topology(name, gen, SHAPES_3D[n // 2])
        require(n in SHAPES_2D, f"{name}: {gen.name}-N counts chips; N must be one of "
                                f"{', '.join(map(str, SHAPES_2D))} (or give a raw name such as "
                                f"{gen.libtpu}:4x4)")
        return Topology(name, gen, SHAPES_2D[n])
    m = re.fullmatch(r"([a-z0-9]+)[:=_](-?\d+(?:x-?\d+)*)(_twisted|_untwisted)?", text)
    require(m is not None, unknown)
    gen = GENERATIONS.get(ALIASES.get(m.group(1), m.group(1)))
    require(gen is not None, unknown)
    shape = tuple(int(x) for x in m.group(2).split("x"))
    example = f"{gen.libtpu}:{'x'.join(['2'] * gen.dims)}"
    require(len(shape) == gen.dims,
            f"{name}: a {gen.name} topology has {gen.dims} dimensions, e.g. {example}")
    require(all(s > 0 for s in shape),
            f"{name}: every dimension must be a positive number of chips, e.g. {example}")
    return Topology(name, gen, shape, m.group(3) or "")


@contextlib.contextmanager
def _quiet_libtpu(topology: Topology):
    """Off a TPU VM, libtpu's first load queries the GCE metadata server, warns about
    the missing accelerator type and worker names, and takes a machine-wide lock file.
    Give it harmless single-host values (restored afterwards) so that a compile-only
    topology loads silently, beside other processes doing the same."""
    from dsl_jax.launch.distributed import on_tpu_host
    if on_tpu_host():
        yield
        return
    # ALLOW_MULTIPLE_LIBTPU_LOAD: compile-only devices touch no TPU, so two processes
    # (parallel test workers, two checks) need not fight over /tmp/libtpu_lockfile.
    values = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": topology.slice_name,
              "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0",
              "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def topology_devices(topology: Topology) -> list:
    """Compile-only devices of ``topology`` (needs libtpu)."""
    import jax
    from jax.experimental import topologies

    with _quiet_libtpu(topology):
        try:
            desc = topologies.get_topology_desc(topology_name=topology.libtpu_name, platform="tpu",
                                                **topology.kwargs())
        except RuntimeError as e:
            if "not installed" in str(e) or "cannot generate TPU topology" in str(e):
                raise UserError("compile-check needs libtpu: pip install -e '.[tpu]' "
                                "(jax[tpu]==0.10.2)") from None
            raise UserError(f"topology {topology.libtpu_name}: {str(e).splitlines()[0]}") from None
        except jax.errors.JaxRuntimeError as e:
            raise UserError(f"topology {topology.libtpu_name} ({topology.name}): "
                            f"{str(e).splitlines()[0]}") from None
    devices = list(desc.devices)
    require(len(devices) == topology.chips,
            f"topology {topology.label}: libtpu gave {len(devices)} devices for "
            f"{topology.chips} chips")
    return devices


# ---- FLOPs -------------------------------------------------------------------------

def _subjaxprs(value):
    from jax.extend import core as jcore

    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def jaxpr_matmul_flops(jaxpr) -> tuple[float, float, list[int]]:
    """(FLOPs with loop trip counts, FLOPs with each loop body once, trip counts seen)
    of the dot_general ops in ``jaxpr`` (a Jaxpr or ClosedJaxpr), recursively."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    full = once = 0.0
    trips: list[int] = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            f = 2.0 * math.prod(out) * math.prod(lhs[d] for d in lc)
            full += f
            once += f
            continue
        if name == "pallas_call":  # a custom kernel: counted apart (jaxpr_kernel_flops)
            continue
        subs = [j for v in eqn.params.values() for j in _subjaxprs(v)]
        if not subs:
            continue
        counts = [jaxpr_matmul_flops(j) for j in subs]
        if name == "cond":
            full += max(c[0] for c in counts)
            once += max(c[1] for c in counts)
            for c in counts:
                trips += c[2]
            continue
        mult = 1
        if name == "scan":
            mult = int(eqn.params["length"])
            trips.append(mult)
        for c in counts:
            full += mult * c[0]
            once += c[1]
            trips += c[2]
    return full, once, trips


def jaxpr_kernel_flops(jaxpr, chips: int, _per_device: bool = False) -> tuple[float, int]:
    """(matmul FLOPs per chip, calls) of the Pallas kernels (``pallas_call``, e.g. the
    splash attention) in ``jaxpr``, with loop trip counts: each kernel body's dot_general
    FLOPs (its own loops and conditionals counted as :func:`jaxpr_matmul_flops` does) times
    its grid size. A kernel inside a ``shard_map`` is per device; one outside it counts
    for all ``chips``. XLA's cost model counts no FLOPs for a custom kernel."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    flops, calls = 0.0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "pallas_call":
            body = jaxpr_matmul_flops(eqn.params["jaxpr"])[0]
            grid = math.prod(eqn.params["grid_mapping"].grid)
            flops += body * grid / (1 if _per_device else chips)
            calls += 1
            continue
        subs = [j for v in eqn.params.values() for j in _subjaxprs(v)]
        inner = _per_device or name == "shard_map"
        counts = [jaxpr_kernel_flops(j, chips, inner) for j in subs]
        if not counts:
            continue
        if name == "cond":
            flops += max(c[0] for c in counts)
            calls += max(c[1] for c in counts)
            continue
        mult = int(eqn.params["length"]) if name == "scan" else 1
        flops += mult * sum(c[0] for c in counts)
        calls += mult * sum(c[1] for c in counts)
    return flops, calls


def forward_model_flops(mc, tokens: int, length: int) -> float:
    """Analytic forward FLOPs: 2 x matmul parameters x tokens + attention (bidirectional)."""
    d, f, v, L = mc.d_model, mc.mlp_hidden_size, mc.vocab_size, mc.n_layers
    kv = mc.n_kv_heads * mc.head_dim
    layer = 2 * d * d + 2 * d * kv + 3 * d * f
    per_token = 2 * L * layer + 4 * L * length * d + 2 * d * v
    return float(per_token) * tokens


def train_model_flops(mc, tokens: int, length: int, objective: str, noise_dim: int = 0) -> float:
    """Analytic train-step FLOPs: trained matmuls x6, frozen ones x4 (forward + input
    gradient), attention x3; DSL: converter W x6 and z K^T forward; MDM: head trained."""
    d, f, v, L = mc.d_model, mc.mlp_hidden_size, mc.vocab_size, mc.n_layers
    kv = mc.n_kv_heads * mc.head_dim
    layer = 2 * d * d + 2 * d * kv + 3 * d * f
    per_token = 6 * L * layer + 12 * L * length * d
    if objective == "dsl":
        per_token += 4 * d * v + 6 * d * (v + 1) + 2 * noise_dim * (v + 1)
    else:
        per_token += 6 * d * v
    return float(per_token) * tokens


# ---- the check -----------------------------------------------------------------------

def _use_cpu_host():
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


def _stage(bar, text):
    if bar is not None:
        bar.set_description(text)
        bar.update(1)


def _oom_line(err: Exception) -> str | None:
    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
        return None
    for line in text.splitlines():
        line = line.strip()
        if "out of memory" in line.lower() or "RESOURCE_EXHAUSTED" in line:
            return re.sub(r"^.*?RESOURCE_EXHAUSTED:\s*", "", line)
    return text.splitlines()[0]


def check(topology: Topology, what: str, *, mesh: str | None, cfg=None, config_name: str = "",
          overrides=(), model: str = "", batch: int = 0, length: int | None = None,
          dtype: str | None = None, param_dtype: str | None = None,
          progress: bool = True, gen_length: int = 256, nfe: int = 16,
          noise_dim: int = 100, attention: str | None = None) -> dict:
    """Compile ``what`` for ``topology`` on compile-only devices and return its figures
    (:func:`analyse`), or ``{"topology", "fits": False, "error"}`` when the TPU compiler
    refuses it for lack of HBM. ``what`` is "forward" (``model`` on ``batch`` x ``length``
    ids, ``dtype``/``param_dtype`` overriding the model's) or "train" (the training step of
    the train config ``cfg``, read from ``config_name`` with ``overrides``)."""
    from tqdm import tqdm

    _use_cpu_host()
    import jax

    bar = tqdm(total=4, desc="topology", file=sys.stderr, leave=False,
               disable=None if progress else True)
    try:
        devices = topology_devices(topology)
        _stage(bar, "abstract state")
        if what == "forward":
            traced, info = _trace_forward(devices, mesh, model, batch, length, dtype, param_dtype,
                                          attention)
        elif what == "sample":
            traced, info = _trace_sample(devices, mesh, model, batch, length, gen_length, nfe,
                                         noise_dim, dtype, param_dtype, attention)
        else:
            traced, info = _trace_train(devices, mesh, cfg, config_name, overrides)
        _stage(bar, "lower")
        t0 = time.perf_counter()
        with jax.set_mesh(info["mesh"]):
            lowered = traced.lower()
        _stage(bar, f"compile for {topology.label}")
        try:
            compiled = lowered.compile()
        except Exception as e:  # the TPU compiler refuses programs that exceed HBM
            line = _oom_line(e)
            if line is None:
                raise
            return {"topology": topology.name, "num_slices": topology.num_slices, "fits": False,
                    "error": line}
        compile_s = time.perf_counter() - t0
        _stage(bar, "done")
    finally:
        bar.close()
    return analyse(compiled, traced, topology, info, compile_s)


def _mesh(spec: str, devices):
    from dsl_jax import sharding
    return sharding.make_mesh(sharding.parse_mesh(spec), devices=devices)


def _trace_forward(devices, mesh_spec: str | None, model_name: str, batch: int,
                   length: int | None, dtype: str | None, param_dtype: str | None,
                   attention: str | None = None):
    import jax
    import jax.numpy as jnp

    from dsl_jax import config, model, sharding

    run_fields = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype),
                                    ("attention", attention)) if v}
    mc = config.resolve(model_name, **run_fields)
    length = length or min(mc.max_sequence_length, 4096)
    model.check_length(length, mc)
    mesh = _mesh(mesh_spec or "fsdp=-1", devices)
    n_batch = sharding.batch_axes_size(mesh)
    require(batch % n_batch == 0,
            f"--batch {batch} does not divide over the mesh's batch axes "
            f"({' x '.join(sharding.batch_axes(mesh))} = {n_batch} chips); use a multiple of {n_batch}")
    graphdef, state = sharding.abstract_with_shardings(model.build(mc), mesh)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32,
                               sharding=sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        traced = jax.jit(model.forward_fn(graphdef)).trace(state, ids)
    tokens = batch * length
    return traced, dict(
        what="forward", mesh=mesh, model=model_name, model_cfg=mc, tokens=tokens,
        shape=f"batch {batch} x {length}",
        model_flops=forward_model_flops(mc, tokens, length),
        flops_formula="2 x matmul params x tokens + attention")


def _trace_sample(devices, mesh_spec: str | None, model_name: str, batch: int,
                  prompt_length: int | None, gen_length: int, nfe: int, noise_dim: int,
                  dtype: str | None, param_dtype: str | None, attention: str | None = None):
    """One jitted DSL-SDE batch (``dsl_jax.sampling``'s function: the whole Heun loop) on
    ``batch`` left-padded prompts of ``prompt_length`` + ``gen_length`` response positions,
    every pass a full one (``cache_refresh`` 1, the exact sampler: the upper bound; the
    prompt cache's default cuts the FLOPs further, ``dsl-jax bench sample``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from dsl_jax import config, dsl, model, sharding
    from dsl_jax.sampling import registry

    run_fields = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype),
                                    ("attention", attention)) if v}
    mc = config.resolve(model_name, **run_fields)
    P = prompt_length or 2048
    model.check_length(P + gen_length, mc)
    registry.get("sde").check(nfe, gen_length)
    mesh = _mesh(mesh_spec or "fsdp=-1", devices)
    n_batch = sharding.batch_axes_size(mesh)
    batch = batch or 4 * n_batch
    require(batch % n_batch == 0,
            f"--batch {batch} does not divide over the mesh's batch axes "
            f"({' x '.join(sharding.batch_axes(mesh))} = {n_batch} chips); use a multiple of {n_batch}")
    graphdef, state = sharding.abstract_with_shardings(
        dsl.build_dsl(mc, dsl.DSLConfig(noise_dim=noise_dim)), mesh)
    request = registry.Request(nfe, gen_length, cache_refresh=1)
    run = registry.REGISTRY["sde"].run

    def fn(state, prompt_ids, mask, positions, keys):
        return run(nnx.merge(graphdef, state), prompt_ids, mask, positions, keys, request)

    def rows(shape, dt):
        return jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(mesh, len(shape)))

    L = P + gen_length
    args = (state, rows((batch, P), jnp.int32), rows((batch, L), jnp.bool_),
            rows((batch, L), jnp.int32), rows((batch, 2), jnp.uint32))
    with jax.set_mesh(mesh):
        traced = jax.jit(fn, out_shardings=sharding.batch_sharding(mesh, 2)).trace(*args)
    passes = registry.forward_passes("sde", nfe)
    return traced, dict(
        what="sample", mesh=mesh, model=model_name, model_cfg=mc, tokens=batch * L,
        shape=f"DSL-SDE batch {batch} x (prompt {P} + response {gen_length}), NFE {nfe} "
              f"({passes} full forward passes, no prompt cache)", forward_passes=passes,
        model_flops=passes * forward_model_flops(mc, batch * L, L),
        flops_formula="forward passes x (2 x matmul params x tokens + attention)")


def _trace_train(devices, mesh_spec: str | None, cfg, config_name: str, overrides):
    import jax

    from dsl_jax.train.step import build_train_step

    mesh = _mesh(mesh_spec or cfg.get("mesh", "fsdp=-1") or "fsdp=-1", devices)
    setup = build_train_step(cfg, mesh)
    with jax.set_mesh(mesh):
        traced = setup.step.trace(*setup.abstract_args())
    mc = setup.model_cfg
    M, rows, length = setup.batch_shape
    tokens = setup.tokens_per_step
    objective = cfg.objective
    noise_dim = setup.dsl_cfg.noise_dim if setup.dsl_cfg is not None else 0
    return traced, dict(
        what="train", mesh=mesh, model=cfg.get("model") or cfg.get("init_ckpt"),
        config=config_name, overrides=list(overrides), objective=objective,
        model_cfg=mc, tokens=tokens,
        shape=f"global batch {M * rows} x {length} ({M} micro-batch{'es' if M > 1 else ''})",
        model_flops=train_model_flops(mc, tokens, length, objective, noise_dim),
        flops_formula="6 x trained matmul params x tokens + 4 x frozen + attention x3")


def _cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return dict(ca or {})


def analyse(compiled, traced, topology: Topology, info: dict, compile_s: float) -> dict:
    ma = compiled.memory_analysis()
    mem = {
        "arguments": int(ma.argument_size_in_bytes),
        "outputs": int(ma.output_size_in_bytes),
        "aliased": int(ma.alias_size_in_bytes),
        "temporaries": int(ma.temp_size_in_bytes),
        "generated_code": int(ma.generated_code_size_in_bytes),
    }
    mem["total"] = (mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"]
                    + mem["generated_code"])
    peak = getattr(ma, "peak_memory_in_bytes", None)
    if peak:
        mem["peak_reported"] = int(peak)
    cost = _cost(compiled)
    chips = topology.chips
    gen = topology.generation
    full, once, trips = jaxpr_matmul_flops(traced.jaxpr)
    loop_factor = full / once if once else 1.0
    c_flops = float(cost.get("flops", 0.0))
    c_seconds = float(cost.get("optimal_seconds", 0.0))
    # Custom kernels (splash attention) are outside XLA's cost model: their matmul FLOPs
    # at the chip's peak are added to the step estimate.
    k_flops, k_calls = jaxpr_kernel_flops(traced.jaxpr, chips)
    k_seconds = k_flops / gen.peak_flops
    # v4's cost model has been seen returning a negative optimal time: no estimate then.
    step_s = c_seconds * loop_factor + k_seconds if c_seconds > 0 else None
    mc = info["model_cfg"]
    mesh = info["mesh"]
    mfu = info["model_flops"] / (chips * gen.peak_flops * step_s) if step_s else None
    return {
        "what": info["what"], "topology": topology.name, "libtpu_topology": topology.libtpu_name,
        "num_slices": topology.num_slices,
        "slice": topology.slice_name, "chips": chips, "device_kind": gen.name,
        "hbm_bytes": gen.hbm_bytes, "peak_flops_per_chip": gen.peak_flops,
        "mesh": dict(zip(mesh.axis_names, (int(s) for s in mesh.axis_sizes))),
        "model": info.get("model"), "config": info.get("config"),
        "overrides": info.get("overrides"), "objective": info.get("objective"),
        "params": mc.num_params(), "shape": info["shape"], "tokens_per_step": info["tokens"],
        "compile_seconds": round(compile_s, 2), "memory": mem,
        "fits": mem["total"] <= gen.hbm_bytes,
        "compiler": {"flops": c_flops, "optimal_seconds": c_seconds,
                     "bytes_accessed": float(cost.get("bytes accessed", 0.0))},
        "jaxpr_matmul_flops": {"with_trip_counts": full, "loop_bodies_once": once,
                               "loop_trip_counts": sorted(set(trips))},
        "loop_factor": loop_factor,
        # XLA's flops for a bf16 program on megacore chips came out at about half the jaxpr
        # count of the same (loop-once) program: kept for reference, not used.
        "compiler_flops_x_chips_over_jaxpr_once": c_flops * chips / once if once else None,
        "attention": {"kernel": "splash" if k_calls else "xla", "kernel_calls": k_calls,
                      "kernel_matmul_flops_per_chip": k_flops, "kernel_seconds": k_seconds},
        "estimate": {"matmul_flops_per_chip": full / chips + k_flops, "step_seconds": step_s},
        "model_flops": info["model_flops"], "model_flops_formula": info["flops_formula"],
        "mfu": mfu,
        **({"forward_passes": info["forward_passes"],
            "seconds_per_forward_pass": step_s / info["forward_passes"] if step_s else None}
           if "forward_passes" in info else {}),
    }
