"""``dsl-jax sample``: generate responses to user messages with DSL-SDE, its ODE, or
LLaDA's remasking samplers.

Each prompt is a user message put into LLaDA's chat template; the response is
``--gen-length`` positions, decoded with special tokens (EOS/EoT tails) stripped.
Prompts come from ``--prompt`` or a JSONL file of objects with a "prompt" field (or
plain JSON strings). With ``--out`` every result is written as a JSON line with the
prompt, the output text and the response token ids.

Samplers: sde (DSL-SDE, needs a DSL checkpoint), ode (DSL-SDE with noise scale 0, the
authors' deterministic sampler), pf_ode (the probability-flow ODE, not the paper's), remask
(low-confidence remasking, one block, steps = NFE), random (random remasking), eos_block
(low-confidence remasking, EOS suppressed, blocks of 32).

The DSL samplers' knobs (docs/method.md section 3), each at the paper's value unless
given: --snr-grid, --s-min, --s-max, --beta-scale, --top-k, --cache-refresh (default 8: an
approximate prompt cache refreshed every 8 Heun steps; 1: exact), and --noise-scale (sde only).
Giving one to a remasking sampler is an error. The remasking samplers' knobs, each at
LLaDA's value unless given: --block-length, --cfg-scale, --confidence-eos-eot-inf, and
Fast-dLLM's --remask-cache and --threshold; giving one to a DSL sampler is an error.
"""

from __future__ import annotations

import sys
from dsl_jax.commands import add_command


def register(sub):
    from dsl_jax.sampling import SAMPLERS
    from dsl_jax.sampling.registry import REMASK_CACHES
    from dsl_jax.sampling.schedules import SNR_GRIDS

    p = add_command(sub, "sample", __doc__)
    p.add_argument("--ckpt", required=True, help="dsl-jax checkpoint directory")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (default: CKPT/tokenizer.json)")
    p.add_argument("--sampler", default="sde", choices=list(SAMPLERS),
                   help="sampler (default sde)")
    p.add_argument("--nfe", type=int, default=16,
                   help="forward passes per sample; sde/ode/pf_ode make 2*(NFE//2)+1 "
                   "(default 16)")
    p.add_argument("--gen-length", type=int, default=128, help="response positions (default 128)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user message")
    src.add_argument("--prompts-file", help='JSONL file: {"prompt": "..."} (or a JSON string) per line')
    p.add_argument("--out", default=None, help="write results as JSONL to this file")
    p.add_argument("--batch-size", type=int, default=None,
                   help="prompts per jitted batch (default: all at once)")
    p.add_argument("--seed", type=int, default=0, help="seed; prompt i uses (seed, i) (default 0)")
    p.add_argument("--shared-seed", action="store_true",
                   help="every prompt draws its start state and noise from --seed alone, as "
                   "the authors' evaluation does (default: from (seed, i))")
    p.add_argument("--snr-grid", default=None, choices=list(SNR_GRIDS),
                   help="SNR grid of sde/ode/pf_ode (default sensitive)")
    p.add_argument("--s-min", type=float, default=None,
                   help="sde/ode/pf_ode: the SNR grid's first SNR (default 0.01)")
    p.add_argument("--s-max", type=float, default=None,
                   help="sde/ode/pf_ode: the SNR grid's last SNR (default 100; the sensitive "
                   "grid ends at 74 below NFE 40)")
    p.add_argument("--beta-scale", type=float, default=None,
                   help="sde/ode/pf_ode: beta_infer = SCALE x beta, the converter's inverse "
                   "temperature while sampling (default 2)")
    p.add_argument("--noise-scale", type=float, default=None,
                   help="sde: the noise scale ns (default by NFE: 0.1 up to 8, 0.05 up to 16, "
                   "0.01 up to 32, else 0.005); ode/pf_ode have 0")
    p.add_argument("--top-k", type=int, default=None,
                   help="sde/ode/pf_ode: the posterior mean x_hat over the top-k tokens "
                   "(default 512)")
    p.add_argument("--cache-refresh", type=int, default=None,
                   help="sde/ode/pf_ode: recompute the prompt's keys/values (a full pass) every "
                   "K Heun steps and run every other pass on the response positions only "
                   "against them; 1: every pass full (exact), 0: only the first (default 8)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="remasking samplers: 0 = argmax, > 0 Gumbel-max (default 0)")
    p.add_argument("--block-length", dest="block_length", type=int, default=None,
                   help="remask/random/eos_block: semi-autoregressive blocks of this many "
                   "positions, NFE steps split over them (default: one block; eos_block 32)")
    p.add_argument("--remask-cache", dest="remask_cache", default=None,
                   choices=list(REMASK_CACHES),
                   help="remasking samplers: Fast-dLLM's KV cache, refreshed by a full pass at "
                   "each block's first step: prefix (the prompt and earlier blocks cached) or "
                   "dual (the later blocks too); approximate (default none)")
    p.add_argument("--threshold", type=float, default=None,
                   help="remasking samplers: Fast-dLLM's parallel decoding, each step commits "
                   "every masked position of the block whose confidence is >= THRESHOLD (at "
                   "least one); the steps are then as many as needed, not NFE (default off)")
    p.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=None,
                   help="remasking samplers: LLaDA's unsupervised classifier-free guidance, "
                   "logits u + (SCALE + 1)(c - u) with u from the prompt masked; doubles the "
                   "rows of each pass (default 0: off)")
    p.add_argument("--confidence-eos-eot-inf", dest="confidence_eos_eot_inf",
                   action="store_const", const=True, default=None,
                   help="remasking samplers: LLaDA's confidence_eos_eot_inf, positions "
                   "predicting EOS/EoT get confidence 0 and are committed last (default off)")
    p.add_argument("--mesh", default="fsdp=-1",
                   help="mesh over the devices, e.g. 'data=2,fsdp=4' (default: all on fsdp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import re

    import jax

    from dsl_jax import checkpoint
    from dsl_jax.errors import UserError, require
    from dsl_jax.sampling import DSL_SAMPLERS, generate, registry
    from dsl_jax.sharding import make_mesh, parse_mesh
    from dsl_jax import storage
    from dsl_jax.textfiles import read_texts, write_jsonl
    from dsl_jax.tokenizer import Tokenizer

    # Everything that can fail on bad input, before loading the model.
    storage.check_output_apart(args.out, {"--prompts-file": args.prompts_file,
                                          "--ckpt": args.ckpt, "--tokenizer": args.tokenizer},
                               "--out")
    require(args.gen_length > 0, f"--gen-length must be positive, got {args.gen_length}")
    require(args.batch_size is None or args.batch_size > 0,
            f"--batch-size must be positive, got {args.batch_size}")
    knobs = {k: getattr(args, k) for k in registry.KNOBS if getattr(args, k, None) is not None}
    try:
        registry.check_knobs(args.sampler, **knobs)
        # NFE, and the block plan (eos_block's or --block-length's)
        registry.get(args.sampler).check(args.nfe, args.gen_length, knobs.get("block_length"))
    except UserError as e:  # the flag's name, not the field's
        msg = str(e)
        for name in registry.KNOBS:
            msg = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), msg)
        raise UserError(msg) from None
    kind = "dsl" if args.sampler in DSL_SAMPLERS else "auto"
    why = f"sampler {args.sampler} needs them; {registry.dsl_hint()}"
    meta = checkpoint.read_meta(args.ckpt, kind, why)
    tok = Tokenizer.from_file(args.tokenizer or storage.join(args.ckpt, "tokenizer.json"))
    tok.check_model(checkpoint.model_config(
        meta, storage.join(args.ckpt, checkpoint.META_FILE)), args.ckpt)
    if args.prompt is not None:
        texts = [args.prompt]
    else:
        texts = read_texts(args.prompts_file, "prompt")
        require(texts, f"{args.prompts_file}: no prompts")
    prompts = [tok.prompt(t) for t in texts]

    mesh = make_mesh(parse_mesh(args.mesh))
    model = checkpoint.load(args.ckpt, mesh, kind, why)
    ids = generate(model, prompts, sampler=args.sampler, nfe=args.nfe,
                   gen_length=args.gen_length, seed=args.seed, batch_size=args.batch_size,
                   mesh=mesh, temperature=args.temperature, progress=not args.no_progress,
                   shared_seed=args.shared_seed, **knobs)
    if jax.process_index() != 0:  # on a pod every host samples; the lead host reports
        return 0
    outputs = [tok.decode(x) for x in ids]
    if args.out:
        storage.makedirs(storage.dirname(args.out))
        write_jsonl(args.out, [{"prompt": t, "output": o, "token_ids": x, "sampler": args.sampler,
                                "nfe": args.nfe} for t, o, x in zip(texts, outputs, ids)])
    for i, o in enumerate(outputs):
        print(f"[{i}] {o}" if len(outputs) > 1 else o)
    if args.out:
        print(f"wrote {len(outputs)} result(s) to {args.out}", file=sys.stderr)
    return 0
