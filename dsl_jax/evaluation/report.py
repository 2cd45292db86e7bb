"""Reports of a sweep: summary CSV/JSON, Markdown tables, PNG plots (matplotlib Agg).

``table.md`` has the paper's layout: one row per sampler and NFE (a lead-k baseline:
one row, NFE ``-``), ROUGE-1/2/L/Lsum F1 (percent) per benchmark; a second table gives
every ROUGE mean with its 95% bootstrap interval; a third the output length in words,
the empty-output rate (percent), the adjacent-word repetition rate (percent) and
distinct-1/2 (percent), these three pooled over the cell's non-empty outputs as the
authors compute them (``dsl_jax.evaluation.metrics``). ``summary.csv`` / ``summary.json``
hold every figure, the intervals as ``KEY_lo`` / ``KEY_hi``. Plots: ROUGE-1 against NFE
(one panel per benchmark, one line per sampler, a lead-k baseline a dashed level),
repetition against NFE, and the distributions of output lengths (one panel per
benchmark, one box per sampler and NFE).
"""

from __future__ import annotations

import os
from typing import Sequence

from dsl_jax.evaluation.metrics import ROUGE_KEYS
from dsl_jax.reports import markdown_table, num, pyplot, save_figure, write_csv
from dsl_jax.sampling.registry import REGISTRY
from dsl_jax.textfiles import read_json, read_records, write_atomic, write_json

SAMPLER_NAMES = {name: s.label for name, s in REGISTRY.items()}
ROUGE_TITLES = {"rouge1": "R-1", "rouge2": "R-2", "rougeL": "R-L", "rougeLsum": "R-Lsum"}
COLUMNS = (("benchmark", "sampler", "nfe", "n")
           + tuple(c for k in ROUGE_KEYS for c in (k, f"{k}_lo", f"{k}_hi"))
           + ("words", "empty_rate", "repetition", "distinct1", "distinct2"))


def label(sampler: str) -> str:
    """A sampler's name in reports (``Lead-3`` for the lead-3 baseline)."""
    from dsl_jax.evaluation.sweep import sampler_label
    return sampler_label(sampler)


def _cell_paths(out_dir: str, cell) -> tuple[str, str]:
    from dsl_jax.evaluation.sweep import cell_dir  # the one owner of the layout
    d = cell_dir(out_dir, cell)
    return os.path.join(d, "cell.json"), os.path.join(d, "examples.jsonl")


def write_reports(out_dir: str, cells: Sequence, plots: bool = True) -> dict:
    rows = {}
    for cell in cells:
        path, _ = _cell_paths(out_dir, cell)
        rows[cell.name] = read_json(path)["summary"]
    ordered = [rows[c.name] for c in cells]
    write_json(os.path.join(out_dir, "summary.json"), ordered, sort_keys=True)
    write_csv(os.path.join(out_dir, "summary.csv"), COLUMNS, ordered, digits=6)
    write_atomic(os.path.join(out_dir, "table.md"), markdown(cells, rows))
    if plots:
        plot_all(out_dir, cells, rows)
    return rows


def _benches(cells) -> list:
    seen = {}
    for c in cells:
        seen.setdefault(c.bench.key, c.bench)
    return list(seen.values())


def _methods(cells) -> list[tuple[str, int]]:
    return list(dict.fromkeys((c.sampler, c.nfe) for c in cells))


def _nfe(n) -> str:
    return "-" if n is None else str(n)


def _interval(r: dict, k: str) -> str:
    """``mean [low, high]`` of ROUGE ``k`` in a summary row (``-`` parts when missing)."""
    return f"{num(r.get(k))} [{num(r.get(k + '_lo'))}, {num(r.get(k + '_hi'))}]"


def markdown(cells: Sequence, rows: dict) -> str:
    benches = _benches(cells)
    methods = _methods(cells)
    lookup = {(c.bench.key, c.sampler, c.nfe): rows[c.name] for c in cells}
    head = ["Sampler", "NFE"] + [f"{b.display} {ROUGE_TITLES[k]}" for b in benches
                                 for k in ROUGE_KEYS]
    rouge = []
    for s, n in methods:
        vals = []
        for b in benches:
            r = lookup.get((b.key, s, n))
            vals += [num(r and r.get(k)) for k in ROUGE_KEYS]
        rouge.append([label(s), _nfe(n)] + vals)
    intervals, outputs = [], []
    for b in benches:
        for s, n in methods:
            r = lookup.get((b.key, s, n))
            if r is not None:
                intervals.append([b.display, label(s), _nfe(n), r["n"]]
                                 + [_interval(r, k) for k in ROUGE_KEYS])
                outputs.append([b.display, label(s), _nfe(n), r["n"], num(r["words"], 1, 1),
                                num(r["empty_rate"], 100, 1), num(r["repetition"], 100, 2),
                                num(r["distinct1"], 100, 1), num(r["distinct2"], 100, 1)])
    return "\n".join([
        "## ROUGE F1 (%)", "", markdown_table(head, rouge, left=2), "",
        "## ROUGE F1 (%) with 95% bootstrap intervals", "",
        "Mean [low, high]: percentiles 2.5 and 97.5 of the means of 1,000 resamples of the "
        "cell's examples (fixed seed).", "",
        markdown_table(["Benchmark", "Sampler", "NFE", "n"]
                       + [ROUGE_TITLES[k] for k in ROUGE_KEYS], intervals, left=3), "",
        "## Outputs: length (words), empty (%), adjacent repetition (%), distinct-1/2 (%)", "",
        "Repetition and distinct-n pool the words of all non-empty outputs of a cell.", "",
        markdown_table(["Benchmark", "Sampler", "NFE", "n", "Words", "Empty", "Repetition",
                        "Distinct-1", "Distinct-2"], outputs, left=3)]) + "\n"


def plot_all(out_dir: str, cells: Sequence, rows: dict) -> None:
    plt = pyplot()
    benches = _benches(cells)
    samplers = list(dict.fromkeys(c.sampler for c in cells))
    lookup = {(c.bench.key, c.sampler, c.nfe): rows[c.name] for c in cells}
    k = len(benches)

    for key, ylabel, fname, scale in (("rouge1", "ROUGE-1 F1 (%)", "rouge1_vs_nfe.png", 1.0),
                                      ("repetition", "adjacent-word repetition (%)",
                                       "repetition_vs_nfe.png", 100.0)):
        fig, axes = plt.subplots(1, k, figsize=(4 * k, 3.4), squeeze=False)
        for ax, b in zip(axes[0], benches):
            for s in samplers:
                pts = sorted((c.nfe, lookup[(b.key, s, c.nfe)][key]) for c in cells
                             if c.bench.key == b.key and c.sampler == s and c.nfe is not None
                             and lookup[(b.key, s, c.nfe)][key] is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], marker="o",
                            label=label(s))
                level = lookup.get((b.key, s, None), {}).get(key)
                if level is not None:  # a lead-k baseline: no NFE, one level
                    style = ("--", ":", "-.")[samplers.index(s) % 3]
                    ax.axhline(level * scale, linestyle=style, color="grey", label=label(s))
            ax.set_xscale("log", base=2)
            nfes = sorted({c.nfe for c in cells if c.bench.key == b.key and c.nfe is not None})
            if nfes:
                ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.minorticks_off()
            ax.set_title(b.display)
            ax.set_xlabel("NFE")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, os.path.join(out_dir, fname))

    fig, axes = plt.subplots(1, k, figsize=(max(5, 1.2 * len(_methods(cells))) * k, 3.8),
                             squeeze=False)
    for ax, b in zip(axes[0], benches):
        data, labels = [], []
        for c in cells:
            if c.bench.key != b.key:
                continue
            _, ex_path = _cell_paths(out_dir, c)
            data.append([r["words"] for r in read_records(ex_path)])
            labels.append(label(c.sampler) + ("" if c.nfe is None else f"\nNFE {c.nfe}"))
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=45, ha="right")
        ax.set_title(f"{b.display}: output length")
        ax.set_ylabel("words")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "lengths.png"))
