"""``dsl-jax robustness``: noisy-state robustness of checkpoints, side by side.

A fraction of each clean text's positions is corrupted (random ids, or one of the 5
nearest neighbours by wte cosine), the model runs one ordinary forward pass, and each
checkpoint gets its fix rate (corrupted positions predicted back) and clean kept (the
other positions unchanged) per corruption mode and rate, averaged per text and then over
the texts. ``--protocol paper`` (the default) is the authors' protocol: random 10/30/50%
and neighbour 10/30%, texts cut to 300 characters, text i corrupted with seed 42 + i;
its table is printed beside the published figures. ``--protocol grid`` takes the cells
from ``--modes`` x ``--rates`` and cuts texts to ``--max-length`` tokens instead. The
protocol in full: docs/evaluation.md.

Outputs in ``--out``: robustness.md (table), robustness.csv, robustness.json,
robustness.png (fix rate and clean kept against corruption rate).
"""

from __future__ import annotations

import sys
from dsl_jax.commands import add_command


def register(sub):
    from dsl_jax.evaluation.corruption import SEED

    p = add_command(sub, "robustness", __doc__)
    p.add_argument("--ckpt", action="append", required=True, metavar="CKPT",
                   help="dsl-jax checkpoint directory; repeat for checkpoints side by side "
                        "(e.g. original LLaDA, MDM control, DSL)")
    p.add_argument("--names", default="",
                   help="comma-separated column names, one per --ckpt (default: directory names)")
    p.add_argument("--texts", default="",
                   help="clean texts: .txt (one per line) or .jsonl ('text' field); default: the "
                        "package's deterministic demo corpus (64 short documents)")
    p.add_argument("--tokenizer", default="",
                   help="tokenizer.json (default: the first checkpoint's CKPT/tokenizer.json)")
    p.add_argument("--protocol", default="paper", choices=["paper", "grid"],
                   help="paper (default): random 10/30/50%% and neighbour 10/30%%, texts cut to "
                        "their first 300 characters; grid: every --modes x --rates cell, texts "
                        "cut to --max-length tokens")
    p.add_argument("--rates", default=None,
                   help="grid only: corruption rates (default 0.1,0.3,0.5)")
    p.add_argument("--modes", default=None,
                   help="grid only: random (ids in [100, 126000)) and/or neighbour (one of the "
                        "top-5 wte-cosine neighbours; the paper's semantic corruption) "
                        "(default random,neighbour)")
    p.add_argument("--max-length", type=int, default=None,
                   help="grid only: tokens kept per text (default 256)")
    p.add_argument("--max-texts", type=int, default=0, help="use at most this many texts (0: all)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--mesh", default="fsdp=-1", help="mesh shape, e.g. 'fsdp=4,tensor=2'")
    p.add_argument("--dtype", default="", choices=["", "float32", "bfloat16"],
                   help="compute dtype (default: the checkpoint's)")
    p.add_argument("--out", default="runs/robustness", help="output directory")
    p.add_argument("--seed", type=int, default=SEED,
                   help=f"text i (its index in --texts) is corrupted with seed SEED + i "
                        f"(default {SEED})")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax

    from dsl_jax import checkpoint, demo_data, storage
    from dsl_jax.configlib import parse_list
    from dsl_jax.errors import require
    from dsl_jax.evaluation import robustness as R
    from dsl_jax.sharding import make_mesh, parse_mesh
    from dsl_jax.textfiles import read_texts
    from dsl_jax.tokenizer import Tokenizer

    # Everything that can be wrong with the input is checked before any model is loaded.
    storage.check_output_apart(args.out, {"--texts": args.texts, "--ckpt": args.ckpt,
                                          "--tokenizer": args.tokenizer}, "--out")
    if args.protocol == "paper":
        for flag, value in (("--rates", args.rates), ("--modes", args.modes),
                            ("--max-length", args.max_length)):
            require(value is None, f"{flag} applies to --protocol grid; the paper protocol's "
                    "cells and text cut are fixed")
        cells = R.PAPER_CELLS
    else:
        rates = parse_list("0.1,0.3,0.5" if args.rates is None else args.rates, float,
                           name="--rates")
        require(rates, "--rates: empty list")
        for r in rates:
            require(0.0 < r < 1.0, f"--rates: each rate must be in (0, 1), got {r:g}")
        modes = parse_list("random,neighbour" if args.modes is None else args.modes,
                           name="--modes")
        require(modes, "--modes: empty list")
        for m in modes:
            require(m in R.MODES, f"--modes: unknown mode {m!r}; choose from {', '.join(R.MODES)}")
        args.max_length = 256 if args.max_length is None else args.max_length
        require(args.max_length > 0, f"--max-length must be positive, got {args.max_length}")
        cells = R.grid_cells(modes, rates)
    require(args.batch_size > 0, f"--batch-size must be positive, got {args.batch_size}")
    names = parse_list(args.names, name="--names") or [
        storage.basename(c) for c in args.ckpt]
    require(len(names) == len(args.ckpt),
            f"--names: {len(names)} name(s) for {len(args.ckpt)} checkpoint(s)")
    require(len(set(names)) == len(names), f"--names: names must differ, got {names}")
    configs = {c: checkpoint.model_config(checkpoint.read_meta(c),
                                          storage.join(c, checkpoint.META_FILE))
               for c in args.ckpt}
    vocabs = {c: mc.vocab_size for c, mc in configs.items()}
    require(len(set(vocabs.values())) == 1,
            f"checkpoints have different vocabularies: {vocabs}")
    tok_path = args.tokenizer or storage.join(args.ckpt[0], "tokenizer.json")
    require(storage.exists(tok_path), f"no tokenizer at {tok_path}; pass --tokenizer FILE")
    tok = Tokenizer.from_file(tok_path)
    for c, mc in configs.items():
        tok.check_model(mc, c)
    if args.texts:
        require(args.texts.endswith((".txt", ".jsonl")),
                f"--texts {args.texts}: expected a .txt or .jsonl file")
        texts = read_texts(args.texts)
        require(texts, f"--texts {args.texts}: no text in the file")
    else:
        texts = demo_data.held_out_documents()
    if args.max_texts:
        texts = texts[:args.max_texts]
    if args.protocol == "paper":
        ids = [tok.encode(t[:R.PAPER_MAX_CHARS]) for t in texts]
    else:
        ids = [tok.encode(t)[:args.max_length] for t in texts]
    text_ids = [i for i, t in enumerate(ids) if t]  # a text keeps its index (its seed)
    ids = [ids[i] for i in text_ids]
    require(ids, "no text has any token")
    vocab = next(iter(vocabs.values()))
    top = max(max(t) for t in ids)
    require(top < vocab, f"tokenizer {tok_path} produces id {top}, outside the checkpoints' "
            f"vocabulary ({vocab})")
    max_len = min(mc.max_sequence_length for mc in configs.values())
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    require(len(ids[longest]) <= max_len,
            f"--texts: text {text_ids[longest]} has {len(ids[longest])} tokens, more than the "
            f"model's max_sequence_length {max_len}; use shorter texts"
            + (" or --max-length" if args.protocol == "grid" else ""))

    storage.check_can_create(args.out)  # a file where the folder goes: now, not at the end
    mesh = make_mesh(parse_mesh(args.mesh))
    run_fields = {"dtype": args.dtype} if args.dtype else {}
    models = {}
    for name, c in zip(names, args.ckpt):
        models[name] = checkpoint.load(c, mesh=mesh, kind="llada", **run_fields)
    rows = R.run_robustness(models, ids, cells, seed=args.seed, text_ids=text_ids,
                            batch_size=args.batch_size, progress=True)
    if jax.process_index() != 0:  # on a pod every host computes; the lead host reports
        return 0
    R.write_reports(args.out, rows, plot=not args.no_plot)
    print(R.markdown(rows))
    print(f"results in {args.out}: robustness.md, robustness.csv, robustness.json"
          + ("" if args.no_plot else ", robustness.png"), file=sys.stderr)
    return 0
