"""``dsl-jax robustness``: noisy-state robustness of checkpoints (DESIGN.md section 5).

Clean texts are tokenized (no special tokens, cut to ``--max-length`` tokens) and a
fraction of each text's positions is corrupted; the model then runs ONE ordinary
forward pass on the corrupted ids (token embeddings, no mask tokens, no noise), and the
argmax at every position is compared with the clean text:

- fix rate: corrupted positions whose argmax is the original token;
- clean kept: uncorrupted positions whose argmax equals their (unchanged) input token.

Corruption, per text, rate and mode (the same positions and random draws for every
checkpoint, so the columns compare like with like):

- positions: k = max(1, floor(rate * L + 0.5)) distinct positions drawn uniformly;
- ``random``: each becomes a uniform id in [lo, hi) different from the original, where
  [lo, hi) = [100, 126000) for LLaDA's vocabulary; for smaller vocabularies (test and
  demo models) hi = min(126000, vocab) and lo = min(100, hi // 2);
- ``neighbour``: each becomes one of the 5 ids whose ``wte`` rows have the highest
  cosine similarity with the original's (uniformly chosen), searched among the same
  [lo, hi) range without the original id itself; each checkpoint uses its own ``wte``.

Texts of different lengths are batched by right-padding with a key-padding attention
mask, which gives every real position exactly what an unpadded pass gives.
Published (LLaDA-8B, random ids, 10%): original LLaDA 13.1% fix / 90.9% kept, MDM
control 17.2 / 92.0, DSL 64.8 / 99.0.

Outputs in ``--out``: robustness.md (table), robustness.csv, robustness.json,
robustness.png (fix rate and clean kept against corruption rate, per checkpoint and mode).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import sys
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dsl_jax.errors import UserError, require
from dsl_jax.textfiles import write_atomic

MODES = ("random", "neighbour")
RANDOM_LOW, RANDOM_HIGH = 100, 126000
NEIGHBOURS = 5
_MODE_STREAM = {"random": 1, "neighbour": 2}
COLUMNS = ("model", "mode", "rate", "texts", "tokens", "corrupted", "fixed", "fix_rate",
           "clean", "kept", "clean_kept_rate")


# ---- the protocol -------------------------------------------------------------------

def id_range(vocab_size: int) -> tuple[int, int]:
    """[lo, hi) of random replacement ids (and neighbour candidates) for a vocabulary."""
    hi = min(RANDOM_HIGH, int(vocab_size))
    lo = min(RANDOM_LOW, hi // 2)
    return lo, hi


def num_corrupted(length: int, rate: float) -> int:
    return max(1, int(math.floor(rate * length + 0.5)))


def _rate_key(rate: float) -> int:
    return int(round(rate * 1_000_000))


def corrupt(ids: Sequence[int], rate: float, mode: str, seed: int, text_index: int,
            lo: int, hi: int, neighbours: Mapping[int, Sequence[int]] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted ids, corrupted positions) of one text; deterministic in its arguments.

    ``neighbours[token]`` lists the token's top-5 neighbour ids (``neighbour`` mode).
    Positions depend on (seed, text_index, rate) only, not on the mode.
    """
    x = np.asarray(ids, np.int64)
    k = num_corrupted(len(x), rate)
    pos_rng = np.random.default_rng([seed, 0, text_index, _rate_key(rate)])
    positions = np.sort(pos_rng.choice(len(x), size=k, replace=False))
    rng = np.random.default_rng([seed, _MODE_STREAM[mode], text_index, _rate_key(rate)])
    out = x.copy()
    orig = x[positions]
    if mode == "random":
        inside = (orig >= lo) & (orig < hi)
        r = rng.integers(lo, np.where(inside, hi - 1, hi), size=k)
        out[positions] = r + (inside & (r >= orig))  # uniform over [lo, hi) without orig
    else:
        require(neighbours is not None, "neighbour mode needs the neighbour table")
        pick = rng.integers(0, NEIGHBOURS, size=k)
        out[positions] = [neighbours[int(t)][j] for t, j in zip(orig, pick)]
    return out, positions


def _as_llada(model):
    return getattr(model, "llada", model)  # a DSLModel's backbone


def _mesh_of(model):
    leaf = _as_llada(model).embed[...]
    sharding = getattr(leaf, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None:
        from dsl_jax.checkpoint import current_mesh_or_default
        mesh = current_mesh_or_default()
    return mesh


@functools.partial(jax.jit, static_argnums=(2, 3))
def _top_neighbours(wte, toks, lo: int, hi: int):
    w = wte.astype(jnp.float32)
    w = w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
    cos = jnp.einsum("nd,vd->nv", w[toks], w[lo:hi], precision="highest")
    cos = jnp.where(toks[:, None] == (jnp.arange(hi - lo) + lo)[None, :], -jnp.inf, cos)
    return jax.lax.top_k(cos, NEIGHBOURS)[1] + lo


def _forward_argmax():
    if "fwd" not in _JITTED:
        from flax import nnx

        @nnx.jit
        def fwd(m, ids, mask):
            return jnp.argmax(m(ids, attention_mask=mask), axis=-1)

        _JITTED["fwd"] = fwd
    return _JITTED["fwd"]


_JITTED: dict = {}


def neighbour_table(model, tokens: Sequence[int], lo: int, hi: int,
                    chunk: int = 256) -> dict[int, list[int]]:
    """token -> the ``NEIGHBOURS`` ids in [lo, hi) (itself excluded) whose wte rows have
    the highest cosine similarity with the token's row, best first."""
    import jax
    import jax.numpy as jnp

    llada = _as_llada(model)
    tokens = sorted({int(t) for t in tokens})
    require(hi - lo > NEIGHBOURS, f"vocabulary range [{lo}, {hi}) is too small for "
            f"{NEIGHBOURS} neighbours")
    mesh = _mesh_of(model)

    out: dict[int, list[int]] = {}
    with jax.set_mesh(mesh):
        wte = llada.embed[...]
        for i in range(0, len(tokens), chunk):
            part = tokens[i:i + chunk]
            padded = np.asarray(part + [part[-1]] * (chunk - len(part)), np.int32)
            ids = np.asarray(_top_neighbours(wte, jnp.asarray(padded), lo, hi))
            for t, row in zip(part, ids[:len(part)]):
                out[t] = [int(x) for x in row]
    return out


def predict(model, seqs: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
    """Argmax of one ordinary forward pass on each id sequence (batched, right-padded
    with a key-padding mask; one compilation for all batches)."""
    import jax
    import jax.numpy as jnp

    from dsl_jax.sharding import batch_sharding

    llada = _as_llada(model)
    cfg = llada.cfg
    mesh = _mesh_of(model)
    T = max(len(s) for s in seqs)
    T = min(cfg.max_sequence_length, -(-T // 8) * 8)
    n_dev = mesh.devices.size
    B = max(1, batch_size)
    if B % n_dev and B > n_dev:
        B = -(-B // n_dev) * n_dev

    fwd = _forward_argmax()
    out: list[np.ndarray] = []
    with jax.set_mesh(mesh):
        for i in range(0, len(seqs), B):
            part = seqs[i:i + B]
            ids = np.full((B, T), cfg.pad_token_id, np.int32)
            mask = np.zeros((B, T), bool)
            for j, s in enumerate(part):
                ids[j, :len(s)] = s
                mask[j, :len(s)] = True
            mask[len(part):, 0] = True  # filler rows: one real key keeps softmax finite
            x, m = jnp.asarray(ids), jnp.asarray(mask)
            if B % n_dev == 0:
                x = jax.device_put(x, batch_sharding(mesh))
                m = jax.device_put(m, batch_sharding(mesh))
            pred = np.asarray(fwd(llada, x, m))
            out += [pred[j, :len(s)] for j, s in enumerate(part)]
    return out


def run_robustness(models: Mapping[str, object], texts_ids: Sequence[Sequence[int]],
                   rates: Sequence[float] = (0.1, 0.3, 0.5),
                   modes: Sequence[str] = MODES, seed: int = 0, batch_size: int = 8,
                   progress: bool = False) -> list[dict]:
    """The robustness protocol for each model (name -> LLaDA or DSLModel) on token-id
    texts; one row per model, mode and rate (see ``COLUMNS``; rates in percent)."""
    require(models, "robustness: no model given")
    require(texts_ids and all(len(t) > 0 for t in texts_ids), "robustness: no (non-empty) text")
    for r in rates:
        require(0.0 < float(r) < 1.0, f"robustness: corruption rates must be in (0, 1), got {r}")
    for m in modes:
        require(m in MODES, f"robustness: unknown mode {m!r}; choose from {', '.join(MODES)}")
    vocab = min(_as_llada(m).cfg.vocab_size for m in models.values())
    lo, hi = id_range(vocab)
    texts = [np.asarray(t, np.int64) for t in texts_ids]
    top_id = max(int(t.max()) for t in texts)
    require(top_id < vocab, f"robustness: token id {top_id} is outside the vocabulary ({vocab})")
    from tqdm import tqdm

    rows = []
    total = len(models) * len(modes) * len(rates)
    bar = tqdm(total=total, desc="robustness", unit="cell", disable=not progress, file=sys.stderr)
    for name, model in models.items():
        nbrs = neighbour_table(model, np.concatenate(texts), lo, hi) if "neighbour" in modes else None
        for mode in modes:
            for rate in rates:
                corrupted = [corrupt(t, float(rate), mode, seed, i, lo, hi, nbrs)
                             for i, t in enumerate(texts)]
                preds = predict(model, [c for c, _ in corrupted], batch_size)
                n_c = n_f = n_clean = n_kept = 0
                for t, (c, pos), p in zip(texts, corrupted, preds):
                    is_c = np.zeros(len(t), bool)
                    is_c[pos] = True
                    n_c += int(is_c.sum())
                    n_f += int((p[is_c] == t[is_c]).sum())
                    n_clean += int((~is_c).sum())
                    n_kept += int((p[~is_c] == t[~is_c]).sum())
                rows.append({"model": name, "mode": mode, "rate": float(rate), "texts": len(texts),
                             "tokens": int(sum(len(t) for t in texts)), "corrupted": n_c,
                             "fixed": n_f, "fix_rate": 100.0 * n_f / n_c, "clean": n_clean,
                             "kept": n_kept,
                             "clean_kept_rate": 100.0 * n_kept / n_clean if n_clean else None})
                bar.update(1)
    bar.close()
    return rows


# ---- reports ------------------------------------------------------------------------

def markdown(rows: Sequence[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["mode"], r["rate"]) for r in rows))
    look = {(r["model"], r["mode"], r["rate"]): r for r in rows}
    head = ["Corruption", "Rate"] + [f"{m} {k}" for m in models for k in ("fix %", "kept %")]
    lines = ["## Noisy-state robustness: fix rate and clean kept (%)", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for mode, rate in keys:
        vals = []
        for m in models:
            r = look.get((m, mode, rate))
            vals += ["-", "-"] if r is None else [
                f"{r['fix_rate']:.1f}",
                "-" if r["clean_kept_rate"] is None else f"{r['clean_kept_rate']:.1f}"]
        lines.append("| " + " | ".join([mode, f"{100 * rate:g}%"] + vals) + " |")
    n = rows[0]
    lines += ["", f"{n['texts']} texts, {n['tokens']} tokens; one forward pass on the corrupted "
              "ids, argmax."]
    return "\n".join(lines) + "\n"


def write_reports(out_dir: str, rows: Sequence[dict], plot: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def write(name, text):
        path = os.path.join(out_dir, name)
        write_atomic(path, text)
        paths.append(path)

    write("robustness.json", json.dumps(list(rows), indent=2) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r[k] is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k])
                    for k in COLUMNS])
    write("robustness.csv", buf.getvalue())
    write("robustness.md", markdown(rows))
    if plot:
        paths.append(plot_rows(os.path.join(out_dir, "robustness.png"), rows))
    return paths


def plot_rows(path: str, rows: Sequence[dict]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, mode in zip(axes[0], modes):
        for i, m in enumerate(models):
            pts = sorted((r["rate"], r["fix_rate"], r["clean_kept_rate"]) for r in rows
                         if r["model"] == m and r["mode"] == mode)
            x = [100 * p[0] for p in pts]
            c = colors[i % len(colors)]
            ax.plot(x, [p[1] for p in pts], marker="o", color=c, label=f"{m}: fix")
            ax.plot(x, [p[2] for p in pts], marker="s", linestyle="--", color=c,
                    label=f"{m}: clean kept")
        rates = sorted({100 * r["rate"] for r in rows if r["mode"] == mode})
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.set_title(f"{mode} corruption")
        ax.set_xlabel("corrupted positions (%)")
        ax.set_ylabel("rate (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- texts --------------------------------------------------------------------------

def read_texts(path: str) -> list[str]:
    """Texts of a ``.txt`` file (one per non-empty line) or a ``.jsonl`` file (a string,
    or an object with a ``text`` field, per line)."""
    from dsl_jax.textfiles import read_texts as read

    require(path.endswith((".txt", ".jsonl")), f"--texts {path}: expected a .txt or .jsonl file")
    texts = read(path, "text")
    require(texts, f"--texts {path}: no text in the file")
    return texts


def default_texts(n: int = 64) -> list[str]:
    """The package's deterministic demo corpus (held-out documents): used when no
    ``--texts`` is given, so the command runs anywhere; pass real text for real numbers."""
    from dsl_jax import demo_data
    return [e["document"] for e in demo_data.test_split(n)]


# ---- command line -------------------------------------------------------------------

def register(sub):
    p = sub.add_parser("robustness", help="noisy-state robustness of checkpoints",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--rates", default="0.1,0.3,0.5", help="corruption rates (default 0.1,0.3,0.5)")
    p.add_argument("--modes", default="random,neighbour",
                   help="random (ids in [100, 126000)) and/or neighbour (top-5 wte cosine)")
    p.add_argument("--max-length", type=int, default=256, help="tokens kept per text (default 256)")
    p.add_argument("--max-texts", type=int, default=0, help="use at most this many texts (0: all)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--mesh", default="fsdp=-1", help="mesh shape, e.g. 'fsdp=4,tensor=2'")
    p.add_argument("--dtype", default="", choices=["", "float32", "bfloat16"],
                   help="compute dtype (default: the checkpoint's)")
    p.add_argument("--out", default="runs/robustness", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruption (default 0)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.set_defaults(func=run)


def _floats(text: str, name: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    require(out, f"{name}: empty list")
    return out


def run(args) -> int:
    from dsl_jax import checkpoint
    from dsl_jax.tokenizer import Tokenizer

    # Everything that can be wrong with the input is checked before any model is loaded.
    rates = _floats(args.rates, "--rates")
    for r in rates:
        require(0.0 < r < 1.0, f"--rates: each rate must be in (0, 1), got {r:g}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    require(modes, "--modes: empty list")
    for m in modes:
        require(m in MODES, f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
    require(args.max_length > 0, f"--max-length must be positive, got {args.max_length}")
    require(args.batch_size > 0, f"--batch-size must be positive, got {args.batch_size}")
    names = [n.strip() for n in args.names.split(",") if n.strip()] or [
        os.path.basename(os.path.normpath(c)) for c in args.ckpt]
    require(len(names) == len(args.ckpt),
            f"--names: {len(names)} name(s) for {len(args.ckpt)} checkpoint(s)")
    require(len(set(names)) == len(names), f"--names: names must differ, got {names}")
    vocabs = {}
    for c in args.ckpt:
        vocabs[c] = checkpoint.model_config(checkpoint.read_meta(c)).vocab_size
    require(len(set(vocabs.values())) == 1,
            f"checkpoints have different vocabularies: {vocabs}")
    tok_path = args.tokenizer or os.path.join(args.ckpt[0], "tokenizer.json")
    require(os.path.exists(tok_path), f"no tokenizer at {tok_path}; pass --tokenizer FILE")
    tok = Tokenizer.from_file(tok_path)
    texts = read_texts(args.texts) if args.texts else default_texts()
    if args.max_texts:
        texts = texts[:args.max_texts]
    ids = [tok.encode(t)[:args.max_length] for t in texts]
    ids = [t for t in ids if t]
    require(ids, "no text has any token")
    vocab = next(iter(vocabs.values()))
    top = max(max(t) for t in ids)
    require(top < vocab, f"tokenizer {tok_path} produces id {top}, outside the checkpoints' "
            f"vocabulary ({vocab})")

    from dsl_jax.sharding import make_mesh, parse_mesh
    mesh = make_mesh(parse_mesh(args.mesh))
    run_fields = {"dtype": args.dtype} if args.dtype else {}
    models = {}
    for name, c in zip(names, args.ckpt):
        print(f"loading {c}", file=sys.stderr)
        models[name] = checkpoint.load(c, mesh=mesh, **run_fields)
    rows = run_robustness(models, ids, rates, modes, seed=args.seed, batch_size=args.batch_size,
                          progress=True)
    import jax
    if jax.process_index() != 0:  # on a pod every host computes; the lead host reports
        return 0
    write_reports(args.out, rows, plot=not args.no_plot)
    print(markdown(rows))
    print(f"results in {args.out}: robustness.md, robustness.csv, robustness.json"
          + ("" if args.no_plot else ", robustness.png"), file=sys.stderr)
    return 0
