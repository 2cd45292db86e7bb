"""What DSL-SDE's approximate prompt cache costs in quality: for each refresh interval k
(``cache_refresh``; 1 is the exact, uncached sampler), the token agreement of the cached
summaries with k = 1's and ROUGE-1 of both, on a trained DSL model and a held-out set.

``--demo OUT`` takes the model, tokenizer and test set of a finished ``dsl-jax demo`` run;
``--ckpt/--tokenizer/--data`` name them directly (the data: a JSONL file of
{"document", "summary"} records, as the demo's test set). The recommended k is the largest
whose ROUGE-1 stays within ``--tolerance`` points (default 0.5) of k = 1's.
"""

from __future__ import annotations


def add_arguments(p):
    from dsl_jax.benchmarks.common import add_common_arguments
    p.add_argument("--demo", default=None, help="a finished `dsl-jax demo` output directory")
    p.add_argument("--ckpt", default=None, help="a DSL checkpoint (instead of --demo)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: CKPT/tokenizer.json)")
    p.add_argument("--data", default=None, help='JSONL of {"document", "summary"} (with --ckpt)')
    p.add_argument("--ks", default="1,2,4,8,0", help="refresh intervals (default 1,2,4,8,0)")
    p.add_argument("--nfe", default="16", help="NFE budgets (default 16)")
    p.add_argument("--gen-length", type=int, default=0,
                   help="response positions (default: the demo's, else 128)")
    p.add_argument("--num-examples", type=int, default=0, help="examples (default: all)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="ROUGE-1 points a cached k may lose (default 0.5)")
    p.add_argument("--sampler", default="sde", choices=["sde", "ode"])
    add_common_arguments(p)


def _inputs(args) -> tuple[str, str, str, int]:
    """(checkpoint, tokenizer, data file, generation length) from --demo or the flags."""
    from dsl_jax import storage
    from dsl_jax.errors import require
    from dsl_jax.textfiles import read_json

    if args.demo:
        stages = storage.join(args.demo, "stages.json")
        require(storage.isfile(stages), f"--demo {args.demo}: no stages.json (not a demo run)")
        st = read_json(stages, obj=True)
        done = st.get("done", {})
        require("dsl" in done and "data" in done,
                f"--demo {args.demo}: its data and dsl stages have not finished")
        data = done["data"]["result"]
        gen = args.gen_length or int(st.get("settings", {}).get("gen_length", 128))
        return done["dsl"]["result"]["ckpt"], data["tokenizer"], data["test"], gen
    require(args.ckpt and args.data, "give --demo OUT, or --ckpt and --data")
    return (args.ckpt, args.tokenizer or storage.join(args.ckpt, "tokenizer.json"), args.data,
            args.gen_length or 128)


def run(args) -> int:
    import numpy as np

    from dsl_jax import checkpoint
    from dsl_jax.benchmarks.common import print_table
    from dsl_jax.configlib import parse_list
    from dsl_jax.errors import require
    from dsl_jax.evaluation import benchmarks, data as eval_data, metrics
    from dsl_jax.sampling import generate
    from dsl_jax.textfiles import write_json
    from dsl_jax.tokenizer import Tokenizer

    ks = parse_list(args.ks, int, name="--ks")
    require(ks and all(k >= 0 for k in ks), f"--ks: integers >= 0, got {args.ks!r}")
    ks = [1] + [k for k in ks if k != 1]  # the exact sampler is the reference
    nfes = parse_list(args.nfe, int, name="--nfe")
    ckpt, tok_path, data, gen_length = _inputs(args)
    tok = Tokenizer.from_file(tok_path)
    model = checkpoint.load(ckpt, kind="dsl", why="the prompt cache is DSL-SDE's")
    tok.check_model(model.cfg, ckpt)
    examples = eval_data.load_examples(benchmarks.get(f"jsonl:{data}"), None,
                                       args.num_examples or None)
    prompts = [tok.prompt(e.user_message) for e in examples]
    rows, figures = [], []
    for nfe in nfes:
        ref_ids, ref_r1 = None, None
        for k in ks:
            ids = generate(model, prompts, sampler=args.sampler, nfe=nfe, gen_length=gen_length,
                           seed=0, cache_refresh=k)
            outputs = [tok.decode(x) for x in ids]
            cell = metrics.cell_metrics(
                [metrics.example_metrics(e.reference, o) for e, o in zip(examples, outputs)],
                outputs)
            if ref_ids is None:
                ref_ids, ref_r1 = np.asarray(ids), cell["rouge1"]
            agree = float(np.mean(np.asarray(ids) == ref_ids))
            figures.append({"nfe": nfe, "k": k, "token_agreement": agree,
                            "rouge1": cell["rouge1"], "delta_rouge1": cell["rouge1"] - ref_r1})
            rows.append({"NFE": nfe, "k": "1 (exact)" if k == 1 else ("0 (once)" if k == 0 else k),
                         "token agreement %": f"{100 * agree:.1f}",
                         "ROUGE-1": f"{cell['rouge1']:.2f}",
                         "delta": f"{cell['rouge1'] - ref_r1:+.2f}"})
    print(f"{args.sampler}: prompt cache refreshed every k Heun steps, {len(examples)} examples, "
          f"generation length {gen_length}")
    print_table(rows, ["NFE", "k", "token agreement %", "ROUGE-1", "delta"])
    # Largest k within tolerance at every NFE (0, "once", counts as the largest).
    ok = [k for k in ks if all(abs(f["delta_rouge1"]) <= args.tolerance
                               for f in figures if f["k"] == k)]
    best = 0 if 0 in ok else max(ok)
    print(f"largest k within {args.tolerance} ROUGE-1 points at every NFE: {best}")
    if args.json:
        write_json(args.json, {"examples": len(examples), "gen_length": gen_length,
                               "cells": figures, "recommended_k": best,
                               "tolerance": args.tolerance})
    return 0
