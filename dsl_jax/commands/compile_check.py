"""``dsl-jax compile-check``: the figures of an ahead-of-time TPU compile, printed;
exit status 1 when the program does not fit in the chip's HBM. What is compiled and
how the figures are estimated: launch/compile_check.py.
"""

from __future__ import annotations

import sys

from dsl_jax.errors import require
from dsl_jax.launch import compile_check
from dsl_jax.launch.compile_check import GiB
from dsl_jax.commands import add_command


def register(sub):
    from dsl_jax import configlib
    from dsl_jax.config import ATTENTION_IMPLS

    p = add_command(sub, "compile-check", compile_check.__doc__)
    p.add_argument("--topology", default="v5p-16",
                   help="TPU slice, e.g. v5p-32, v4-32, v5e-16, v6e-8, or raw v5p:2x2x4 (default v5p-16)")
    p.add_argument("--num-slices", type=int, default=1, metavar="N",
                   help="compile for N slices of --topology joined over DCN (multi-slice); the "
                        "slices go on the mesh's dcn_data axis unless --mesh names dcn_data/"
                        "dcn_fsdp (default 1)")
    p.add_argument("--what", choices=["forward", "train", "sample"], default=None,
                   help="what to compile: the model's forward pass, the training step of "
                        "--config, or one DSL-SDE sampling batch (the whole Heun loop) "
                        "(default: train when --config is given, else forward)")
    configlib.add_config_arguments(p, default="", example="--config.global_batch=32")
    p.add_argument("--model", default="llada-8b",
                   help="forward: preset (tiny, small, 1b, llada-8b) or config.json (default llada-8b)")
    p.add_argument("--batch", type=int, default=None,
                   help="forward: sequences (default 8); sample: prompts (default 4 per chip "
                        "of the mesh's batch axes)")
    p.add_argument("--length", type=int, default=None,
                   help="forward: sequence length (default: the model's maximum, at most 4096); "
                        "sample: prompt length (default 2048)")
    p.add_argument("--gen-length", type=int, default=256,
                   help="sample: response positions (default 256)")
    p.add_argument("--nfe", type=int, default=16, help="sample: DSL-SDE's NFE (default 16)")
    p.add_argument("--noise-dim", type=int, default=100,
                   help="sample: the DSL noise dimension d (default 100)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="forward: compute dtype (default: the model's)")
    p.add_argument("--param-dtype", default=None, choices=["float32", "bfloat16"],
                   help="forward: parameter dtype (default: the model's, float32)")
    p.add_argument("--attention", default=None, choices=list(ATTENTION_IMPLS),
                   help="forward, sample: the attention kernel (default: the model's, auto = "
                        "the Pallas splash kernel on TPU; xla to compare without it)")
    p.add_argument("--mesh", default=None,
                   help="mesh over the topology's chips, e.g. 'fsdp=8,tensor=2' "
                        "(default: the config's mesh; forward: all on fsdp)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE")
    p.set_defaults(func=run)


def run(args) -> int:
    from dsl_jax import configlib
    from dsl_jax.textfiles import write_json

    topology = compile_check.parse_topology(args.topology, args.num_slices)
    what = args.what or ("train" if args.config else "forward")
    if what == "train":
        require(bool(args.config), "--what train needs --config CONFIG (e.g. configs/dsl_llada_8b.py)")
        require(args.attention is None,
                "--attention is for --what forward/sample (train: the model's attention)")
    else:
        require(not args.config_overrides or args.config,
                "--config.KEY=VALUE overrides need --config (train mode)")
        require(args.batch is None or args.batch > 0, f"--batch must be positive, got {args.batch}")
        require(args.gen_length > 0, f"--gen-length must be positive, got {args.gen_length}")
        require(args.noise_dim > 0, f"--noise-dim must be positive, got {args.noise_dim}")
        require(args.length is None or args.length > 0, f"--length must be positive, got {args.length}")
    cfg = configlib.from_args(args) if what == "train" else None
    figures = compile_check.check(
        topology, what, mesh=args.mesh, cfg=cfg, config_name=args.config,
        overrides=args.config_overrides, model=args.model,
        batch=args.batch or (8 if what == "forward" else 0), length=args.length,
        dtype=args.dtype, param_dtype=args.param_dtype, gen_length=args.gen_length,
        nfe=args.nfe, noise_dim=args.noise_dim, attention=args.attention)
    if args.json:
        write_json(args.json, figures)
    hbm = f"{topology.generation.hbm_bytes / GiB:.0f} GiB HBM"
    if "error" in figures:
        print(f"dsl-jax compile-check: does not fit on {topology.label} ({hbm} per chip): "
              f"{figures['error']}", file=sys.stderr)
        return 1
    report(figures)
    if not figures["fits"]:
        print(f"dsl-jax compile-check: does not fit: {figures['memory']['total'] / GiB:.2f} GiB per "
              f"chip > {hbm} on {topology.label}", file=sys.stderr)
        return 1
    return 0


def _gib(x: float) -> str:
    if x >= GiB / 10:
        return f"{x / GiB:8.2f} GiB"
    return f"{x / 2 ** 20:8.2f} MiB"


def report(f: dict) -> None:
    mem, hbm = f["memory"], f["hbm_bytes"]
    mesh = " ".join(f"{k}={v}" for k, v in f["mesh"].items())
    head = f"{f['what']} of {f['model']}" + (f" ({f['objective']}, {f['config']})" if f["config"] else "")
    print(f"compile-check: {head}, {f['params'] / 1e9:.2f}B params, {f['shape']}")
    slices = f.get("num_slices", 1)
    where = f"{slices} slices of {f['topology']} = {slices} x " if slices > 1 else f"{f['topology']} = "
    print(f"topology: {where}{f['libtpu_topology']} ({f['chips']} chips), mesh {mesh}; "
          f"compiled in {f['compile_seconds']:.1f} s")
    print(f"memory per chip (HBM {hbm / GiB:.0f} GiB):")
    print(f"  arguments      {_gib(mem['arguments'])}")
    print(f"  outputs        {_gib(mem['outputs'])}" +
          (f"  ({mem['aliased'] / GiB:.2f} GiB aliased to donated arguments)" if mem["aliased"] else ""))
    print(f"  temporaries    {_gib(mem['temporaries'])}")
    print(f"  generated code {_gib(mem['generated_code'])}")
    verdict = "fits" if f["fits"] else "DOES NOT FIT"
    print(f"  total          {_gib(mem['total'])}  = {100 * mem['total'] / hbm:.1f}% of HBM: {verdict}")
    c = f["compiler"]
    print(f"compiler per chip (XLA cost model, loop bodies counted once): {c['flops']:.3e} FLOPs, "
          f"optimal {c['optimal_seconds'] * 1e3:.2f} ms")
    e = f["estimate"]
    trips = f["jaxpr_matmul_flops"]["loop_trip_counts"]
    kernel = " + attention kernel" if f.get("attention", {}).get("kernel_calls") else ""
    step = (f"step estimate {e['step_seconds'] * 1e3:.1f} ms = optimal x loop factor "
            f"{f['loop_factor']:.2f}{kernel}" if e["step_seconds"] else
            "no step estimate (the compiler's optimal time is not positive)")
    print(f"program per chip: {e['matmul_flops_per_chip']:.3e} matmul FLOPs (jaxpr, loop trip "
          f"counts {trips}); {step}")
    a = f.get("attention")
    if a and a["kernel_calls"]:
        print(f"attention: Pallas splash kernel, {a['kernel_calls']} calls, "
              f"{a['kernel_matmul_flops_per_chip']:.3e} matmul FLOPs per chip = "
              f"{a['kernel_seconds'] * 1e3:.2f} ms at peak, added to the step estimate "
              f"(XLA's cost model does not see custom kernels)")
    elif a:
        print("attention: XLA (jax.nn.dot_product_attention), in the compiler's cost model")
    if "forward_passes" in f:
        per = f["seconds_per_forward_pass"]
        print(f"sampling: {f['forward_passes']} forward passes per batch; estimated "
              + (f"{per:.4f} s/NFE (per forward pass), {per * f['forward_passes']:.3f} s per batch"
                 if per else "s/NFE n/a (no step estimate)"))
    mfu = f"{100 * f['mfu']:.1f}%" if f["mfu"] is not None else "n/a"
    print(f"model FLOPs per step {f['model_flops']:.3e} ({f['model_flops_formula']}); "
          f"estimated MFU {mfu} at {f['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s per chip "
          f"(step = compiler's optimal time x loop factor: an estimate, not a measurement)")
