"""Summaries per second of batched, jitted sampling (``dsl_jax.sampling.generate``: one
jitted computation per batch, the steps in a ``lax.fori_loop``) against a PyTorch DSL-SDE
that samples one prompt at a time with a Python loop over steps (transformers Llama with
a zero 4-D mask as the backbone, the converter and the top-512 posterior mean in torch),
on the same random model, side by side in one run on this machine.

Rows: DSL-SDE with the prompt cache off (``cache_refresh`` 1, exact: the torch loop's
arithmetic, 2 (NFE // 2) + 1 passes over prompt and response) and on (k = 2, 4, 8:
the prompt's keys/values recomputed every k Heun steps, the other passes on the response
positions only); LLaDA's low-confidence remasking (one block, NFE steps) with no cache,
Fast-dLLM's prefix and dual caches, and the dual cache with a confidence threshold of
0.9; the torch loop last. Each row: summaries/s, the ratio to the torch loop, and matmul
FLOPs per summary counted from the jitted batch's jaxpr with loop trip counts
(:func:`batch_flops`; XLA's ``cost_analysis`` counts a loop body once). The defaults are
XSum-like: prompts of 500-700 tokens, 128 generated, NFE 16, the small preset. Before
timing, one x_hat evaluation is compared between JAX and torch (max |difference|
printed) so that they are known to compute the same function.
"""

from __future__ import annotations


def add_arguments(p):
    from dsl_jax.benchmarks.common import add_common_arguments
    p.add_argument("--preset", default="small", help="model preset (default small: 8 layers, d_model 512)")
    p.add_argument("--noise-dim", type=int, default=100, help="DSL noise embedding width (default 100)")
    p.add_argument("--batch", type=int, default=16, help="prompts per jitted batch (default 16)")
    p.add_argument("--prompt-length", type=int, default=600,
                   help="mean prompt length in tokens; lengths are drawn from 5/6 to 7/6 of it "
                   "(default 600: 500-700, as XSum's)")
    p.add_argument("--cache-refresh", default="2,4,8",
                   help="DSL-SDE rows with the prompt cache, refreshed every K Heun steps "
                   "(a list; default 2,4,8; the cache-off row is always run)")
    p.add_argument("--no-remask", action="store_true", help="leave out the remasking rows")
    p.add_argument("--gen-length", type=int, default=128, help="response positions (default 128)")
    p.add_argument("--nfe", type=int, default=16, help="forward-pass budget (default 16)")
    p.add_argument("--torch-prompts", type=int, default=None,
                   help="time the one-at-a-time torch loop on this many of the prompts "
                        "(default: all); summaries/s is per prompt either way")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    add_common_arguments(p)


def torch_sampler(cfg, llama, dsl_params, nfe: int, gen_length: int, beta_scale: float = 2.0,
                  top_k: int = 512):
    """A PyTorch DSL-SDE for one prompt at a time, Python loop over Heun steps."""
    import numpy as np
    import torch

    from dsl_jax.sampling import schedules

    E = torch.from_numpy(np.array(dsl_params["noise_embed"], np.float32))
    conv = dsl_params["converter"]
    beta = float(np.asarray(conv["beta"])) * beta_scale
    b = torch.from_numpy(np.array(conv["logit_bias"], np.float32))
    W = torch.from_numpy(np.array(conv["w"], np.float32))
    c = torch.from_numpy(np.array(conv["c"], np.float32))
    K = torch.cat([E, torch.zeros(1, E.shape[1])], dim=0)  # [V + 1, d]
    wte = llama.model.embed_tokens.weight
    dtype = wte.dtype
    n = schedules.heun_steps(nfe)
    grid = [float(x) for x in schedules.snr_grid("sensitive", n).astype(np.float32)]
    ns = schedules.noise_scale(nfe)
    k = min(top_k, E.shape[0])

    @torch.no_grad()
    def logits_of_z(prompt_emb, z, mask):
        P = prompt_emb.shape[0]
        p = torch.softmax(beta * (z @ K.T) + b, dim=-1)
        h = (p @ W + c).to(dtype)
        x = torch.cat([prompt_emb, h], dim=0)[None]
        hid = llama.model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
        return llama.lm_head(hid[0, P:]).float()

    def x_hat(prompt_emb, y, s, mask):
        top = torch.topk(logits_of_z(prompt_emb, s * y, mask), k, dim=-1)
        p = torch.softmax(top.values, dim=-1)
        return torch.einsum("gk,gkd->gd", p, E[top.indices])

    @torch.no_grad()
    def sample(prompt, seed: int):
        gen = torch.Generator().manual_seed(seed)
        ids = torch.as_tensor(prompt, dtype=torch.long)
        prompt_emb = wte[ids]
        T = len(prompt) + gen_length
        mask = torch.zeros((1, 1, T, T), dtype=dtype)
        y = torch.randn(gen_length, E.shape[1], generator=gen)
        y = y / y.norm(dim=-1, keepdim=True)
        for i in range(len(grid) - 1):  # N steps (2 on the sensitive grid at NFE 2-3)
            s, s2 = grid[i], grid[i + 1]
            dw = abs(s2 - s) ** 0.5 * torch.randn(y.shape, generator=gen)
            f = (x_hat(prompt_emb, y, s, mask) - y) / s
            yt = y + f * (s2 - s) + ns / s * dw
            f2 = (x_hat(prompt_emb, yt, s2, mask) - yt) / s2
            y = y + 0.5 * (f + f2) * (s2 - s) + 0.5 * (ns / s + ns / s2) * dw
        return logits_of_z(prompt_emb, grid[-1] * y, mask).argmax(-1).tolist()

    return sample, x_hat


def batch_flops(model, sampler: str, request, rows: int, prompt_length: int) -> float | None:
    """Matmul FLOPs of one jitted ``sampler`` batch of ``rows`` prompts left-padded to
    ``prompt_length``, loop trip counts included (the jaxpr's dot products:
    :func:`dsl_jax.launch.compile_check.jaxpr_matmul_flops`); None when the batch has a
    loop of data-dependent length (a ``while``: remasking with a threshold)."""
    import jax
    import numpy as np
    from flax import nnx

    from dsl_jax.launch.compile_check import jaxpr_kernel_flops, jaxpr_matmul_flops
    from dsl_jax.sampling import REGISTRY

    spec = REGISTRY[sampler]
    if not spec.needs_dsl:
        model = getattr(model, "llada", model)
    graphdef, state = nnx.split(model)
    G = request.gen_length

    def fn(state, ids, mask, positions, keys):
        return spec.run(nnx.merge(graphdef, state), ids, mask, positions, keys, request)

    sds = jax.ShapeDtypeStruct
    jaxpr = jax.make_jaxpr(fn)(state, sds((rows, prompt_length), np.int32),
                               sds((rows, prompt_length + G), np.bool_),
                               sds((rows, prompt_length + G), np.int32), sds((rows, 2), np.uint32))
    if "while[" in str(jaxpr):
        return None
    # On TPU attention is the splash kernel (a pallas_call), counted apart.
    return jaxpr_matmul_flops(jaxpr)[0] + jaxpr_kernel_flops(jaxpr, 1)[0]


def run(args) -> int:
    import os

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from dsl_jax.benchmarks.common import print_table, time_interleaved
    from dsl_jax.configlib import parse_list
    from dsl_jax.conversion import keymap, torch_reference
    from dsl_jax import config, dsl, sharding
    from dsl_jax.errors import require
    from dsl_jax.sampling import BETA_INFER_SCALE, Request, forward_passes, generate, schedules
    from dsl_jax.sampling import batch as batching
    from dsl_jax.sampling.sde import x_hat_from_logits
    from dsl_jax.textfiles import write_json

    require(args.batch > 0 and args.prompt_length > 0 and args.gen_length > 0,
            "--batch, --prompt-length and --gen-length must be positive")
    schedules.check_nfe(args.nfe)
    ks = parse_list(args.cache_refresh, int, "--cache-refresh")
    require(all(k >= 0 for k in ks), f"--cache-refresh: integers >= 0, got {args.cache_refresh}")
    torch, _ = torch_reference.import_torch()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = config.preset(args.preset, dtype=args.dtype, param_dtype=args.dtype, remat="none")
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    m = dsl.create_dsl(cfg, dsl.DSLConfig(noise_dim=args.noise_dim), mesh, seed=0)
    r = np.random.default_rng(0)
    lo, hi = round(args.prompt_length * 5 / 6), round(args.prompt_length * 7 / 6)
    prompts = [r.integers(6, cfg.vocab_size, r.integers(lo, hi + 1)).tolist()
               for _ in range(args.batch)]
    require(max(map(len, prompts)) + args.gen_length <= cfg.max_sequence_length,
            f"prompts of up to {max(map(len, prompts))} tokens + {args.gen_length} exceed the "
            f"model's maximum {cfg.max_sequence_length}")

    tensors = dict(keymap.params_to_torch(nnx.to_pure_dict(nnx.state(m.llada, nnx.Param)), cfg))
    llama = torch_reference.build_llama(cfg, tensors, dtype=args.dtype)
    params = dsl.dsl_params(m)
    t_sample, t_x_hat = torch_sampler(cfg, llama, jax.tree.map(np.asarray, params), args.nfe,
                                      args.gen_length)

    # Agreement of one x_hat evaluation (prompt 0, a random y at s = 7).
    p0, G = prompts[0], args.gen_length
    y = r.standard_normal((G, args.noise_dim)).astype(np.float32)
    y /= np.linalg.norm(y, axis=-1, keepdims=True)

    @nnx.jit
    def jax_x_hat(model, ids, y, s):
        llada = model.llada
        h = model.embed_noisy((s * y)[None], beta_scale=BETA_INFER_SCALE)
        x = jnp.concatenate([llada.embed_ids(ids[None]), h.astype(llada.cfg.dtype)], axis=1)
        hid = llada(inputs_embeds=x, return_hidden=True)
        return x_hat_from_logits(llada.head(hid[0, ids.shape[0]:]), model.noise_embed[...])

    got = np.asarray(jax_x_hat(m, jnp.asarray(p0, jnp.int32), jnp.asarray(y), 7.0))
    T = len(p0) + G
    ref = t_x_hat(llama.model.embed_tokens.weight[torch.as_tensor(p0)], torch.from_numpy(y), 7.0,
                  torch.zeros((1, 1, T, T), dtype=llama.model.embed_tokens.weight.dtype)).numpy()
    diff = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))

    n_torch = min(args.torch_prompts or args.batch, args.batch)
    P = batching.bucket_length(max(map(len, prompts)), limit=cfg.max_sequence_length - G)
    rows = []  # (label, sampler, knobs)
    for k in [1] + [k for k in ks if k != 1]:
        label = "cache off (exact)" if k == 1 else f"prompt cache, k = {k}"
        rows.append((f"dsl-jax DSL-SDE, {label}", "sde", {"cache_refresh": k}))
    if not args.no_remask:
        for label, knobs in [("no cache", {}), ("prefix cache", {"remask_cache": "prefix"}),
                             ("dual cache", {"remask_cache": "dual"}),
                             ("dual cache, threshold 0.9", {"remask_cache": "dual",
                                                            "threshold": 0.9})]:
            rows.append((f"dsl-jax LLaDA remasking, {label}", "remask", knobs))

    def jax_run(sampler, knobs):
        return lambda: generate(m, prompts, sampler=sampler, nfe=args.nfe, gen_length=G,
                                batch_size=args.batch, mesh=mesh, **knobs)

    def torch_run():
        for i in range(n_torch):
            t_sample(prompts[i], i)

    fns = {label: jax_run(sampler, knobs) for label, sampler, knobs in rows}
    torch_label = "PyTorch DSL-SDE, one prompt at a time, Python step loop"
    fns[torch_label] = torch_run
    secs = time_interleaved(fns, repeats=args.repeats)
    flops = {label: batch_flops(m, sampler, Request(args.nfe, G, **knobs), args.batch, P)
             for label, sampler, knobs in rows}
    torch_rate = n_torch / secs[torch_label]
    off = flops[rows[0][0]]
    table, figures_rows = [], []
    for label, sampler, knobs in rows + [(torch_label, "torch", {})]:
        work = n_torch if label == torch_label else args.batch
        rate = work / secs[label]
        f = flops.get(label)
        fps = None if f is None else f / args.batch
        table.append({"implementation": label, "work": work, "seconds": f"{secs[label]:.3f}",
                      "summaries/s": f"{rate:,.3f}", "x torch": f"{rate / torch_rate:.2f}",
                      "GFLOPs/summary": "-" if fps is None else f"{fps / 1e9:,.2f}",
                      "x fewer FLOPs": "-" if f is None or label == torch_label
                      else f"{off / f:.2f}"})
        figures_rows.append({"label": label, "sampler": sampler, **knobs, "seconds": secs[label],
                             "summaries_per_s": rate, "ratio_to_torch": rate / torch_rate,
                             "flops_per_summary": fps})
    passes = forward_passes("sde", args.nfe)
    print(f"Sampling, preset {args.preset} ({cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"vocab {cfg.vocab_size}, noise dim {args.noise_dim}), {args.dtype}; NFE {args.nfe} "
          f"(DSL-SDE: {passes} forward passes), gen length {G}, prompts {lo}-{hi} tokens "
          f"(padded to {P}), batch {args.batch}; {jax.devices()[0].platform}, "
          f"{os.cpu_count()} cores; max |x_hat diff| / max |x_hat| {diff:.2e}")
    print_table(table, ["implementation", "work", "seconds", "summaries/s", "x torch",
                        "GFLOPs/summary", "x fewer FLOPs"])
    ratio = figures_rows[0]["ratio_to_torch"]
    cached = [x for x in figures_rows[1:] if x["sampler"] == "sde"]
    print(f"ratio (batched DSL-SDE, cache off / PyTorch loop, summaries/s): {ratio:.2f}x")
    if cached:
        best = max(cached, key=lambda x: x["ratio_to_torch"])
        print(f"ratio (best cached DSL-SDE, {best['label']} / PyTorch loop): "
              f"{best['ratio_to_torch']:.2f}x; FLOPs per summary cache off / cached: "
              + ", ".join(f"k = {x['cache_refresh']}: "
                          f"{figures_rows[0]['flops_per_summary'] / x['flops_per_summary']:.2f}x"
                          for x in cached))
    if args.json:
        write_json(args.json, {"rows": figures_rows, "ratio": ratio, "batch": args.batch,
                               "torch_prompts": n_torch, "max_rel_x_hat_diff": diff,
                               "nfe": args.nfe, "gen_length": G, "prompt_lengths": [lo, hi],
                               "padded_prompt_length": P, "preset": args.preset,
                               "dtype": args.dtype})
    return 0
