"""Per-example and per-cell metrics of generated summaries (docs/evaluation.md section 1).

Words are whitespace words, case kept (``str.split``), as the authors count them.

- ROUGE-1/2/L F1 with Porter stemming (``rouge-score``); an empty output scores 0.
- ROUGE-Lsum F1 (``rouge-score``'s ``rougeLsum``, the summary-level LCS that
  summarization papers and Hugging Face ``evaluate`` report): rouge-score takes the
  sentences of both texts as lines, so both are first split by :func:`split_sentences`.
- ``words``: whitespace words of the output.
- ``empty``: the output is empty after decoding (special tokens stripped).
- ``repetition``: the fraction of adjacent word pairs (w[i-1], w[i]) with w[i] == w[i-1].
- ``distinct1`` / ``distinct2``: distinct n-grams / n-grams.

A cell's summary averages ROUGE (in percent, as the paper reports it), words and the
empty rate over its examples, with a 95% bootstrap confidence interval of each ROUGE
mean (:func:`bootstrap_intervals`: ``rouge1_lo`` / ``rouge1_hi``, ...). Repetition and distinct-n are the authors': pooled over
all non-empty outputs of the cell (every adjacent pair, every n-gram of every output,
counted together; 0 when there is none; ``None`` when every output is empty), not
averaged per output, so long outputs weigh more. Per example, the same definitions on
the one output (``None`` when it has no pair or n-gram).

Sentences (:func:`split_sentences`, for ``rougeLsum`` and the lead-k baselines,
:func:`lead`) are split by a fixed rule, no trained model: at every line break, and after
``.``, ``!`` or ``?`` (a run of them, then any closing quotes or brackets) followed by
whitespace and then an upper-case letter, a digit or an opening quote or bracket, unless
the word ending there is a single letter (an initial: ``J. K.``), holds a full stop
inside (``U.S.``, ``e.g.``) or is one of :data:`ABBREVIATIONS` (``Mr.``, ``Dr.``, ...).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Iterable, Sequence

import numpy as np

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
EXAMPLE_KEYS = ROUGE_KEYS + ("words", "empty", "repetition", "distinct1", "distinct2")
CI_KEYS = tuple(f"{k}_{end}" for k in ROUGE_KEYS for end in ("lo", "hi"))
CONFIDENCE = 0.95  # bootstrap intervals: level, resamples and seed (fixed: reports reproduce)
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 42

# Words after which a full stop does not end a sentence (compared without the stop, any case).
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs",
                           "no", "gen", "gov", "sen", "rep", "rev", "col", "lt", "sgt", "capt",
                           "fig", "eq", "al", "approx", "inc", "ltd", "co", "corp", "dept"})
_BOUNDARY = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(\s+)(?=["'\u201c\u2018(\[]?[A-Z0-9])""")


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge(reference: str, output: str) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F1 (fractions in [0, 1]) of ``output`` against ``reference``;
    for Lsum both texts' sentences (:func:`split_sentences`) are put on lines of their own."""
    if not output.strip() or not reference.strip():
        return {k: 0.0 for k in ROUGE_KEYS}
    # Only whitespace changes, so ROUGE-1/2/L (which tokenize on non-alphanumerics) are those
    # of the texts as given.
    scores = _scorer().score("\n".join(split_sentences(reference)),
                             "\n".join(split_sentences(output)))
    return {k: float(scores[k].fmeasure) for k in ROUGE_KEYS}


def _ends_sentence(text: str, stop: int) -> bool:
    """Whether the punctuation run ending the word before ``stop`` ends a sentence."""
    word = text[:stop].rsplit(None, 1)[-1] if text[:stop].strip() else ""
    core = word.strip("\"'\u201c\u2018([")
    core = core.rstrip("\"'\u201d\u2019)]")
    if not core.endswith("."):  # ! or ?: always a boundary
        return True
    core = core.rstrip(".")
    if len(core) == 1 and core.isalpha():  # an initial
        return False
    return "." not in core and core.lower() not in ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, in order (the rule: the module docstring); every
    character but whitespace is kept, so joining them with spaces gives ``text``'s words."""
    out = []
    for line in text.splitlines():
        start = 0
        for m in _BOUNDARY.finditer(line):
            if _ends_sentence(line, m.start(1)):
                out.append(line[start:m.start(1)])
                start = m.end(1)
        out.append(line[start:])
    return [s.strip() for s in out if s.strip()]


def lead(text: str, k: int) -> str:
    """The lead-k baseline: the first ``k`` sentences of ``text`` (:func:`split_sentences`),
    one a line."""
    return "\n".join(split_sentences(text)[:k])


def bootstrap_intervals(values: np.ndarray, confidence: float = CONFIDENCE,
                        samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Percentile bootstrap intervals of the means of the columns of ``values`` [n, k]:
    ``samples`` resamples of the n rows with replacement (the same rows for every column),
    drawn as rouge-score's ``BootstrapAggregator`` draws them (``numpy.random.choice`` of
    the n rows, n at a time) from ``numpy.random.RandomState(seed)``; the (1 - confidence)/2
    and (1 + confidence)/2 percentiles of the resampled means. Returns [2, k]: low, high."""
    values = np.asarray(values, np.float64)
    n = values.shape[0]
    if n == 0:
        return np.full((2, values.shape[1]), np.nan)
    rs = np.random.RandomState(seed)
    means = np.empty((samples, values.shape[1]))
    for i in range(samples):
        means[i] = values[rs.choice(np.arange(n), size=n)].mean(axis=0)
    delta = (1 - confidence) / 2
    return np.percentile(means, [100 * delta, 100 * (1 - delta)], axis=0)


def words(text: str) -> list[str]:
    return text.split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def pooled_repetition(texts: Iterable[str]) -> float:
    """Repeated adjacent word pairs / adjacent word pairs, over all pairs of all ``texts``
    (pairs do not cross texts); 0 with no pair."""
    total = repeated = 0
    for t in texts:
        w = words(t)
        total += max(len(w) - 1, 0)
        repeated += sum(a == b for a, b in zip(w, w[1:]))
    return repeated / total if total else 0.0


def pooled_distinct(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / n-grams, over the n-grams of all ``texts`` taken together (n-grams
    do not cross texts); 0 with no n-gram."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str) -> float | None:
    """:func:`pooled_repetition` of one output; ``None`` below 2 words."""
    return pooled_repetition([text]) if len(words(text)) >= 2 else None


def distinct_n(text: str, n: int) -> float | None:
    """:func:`pooled_distinct` of one output; ``None`` when it has no n-gram."""
    return pooled_distinct([text], n) if len(words(text)) >= n else None


def example_metrics(reference: str, output: str) -> dict:
    out = rouge(reference, output)
    out["words"] = len(words(output))
    out["empty"] = not output.strip()
    out["repetition"] = repetition_rate(output)
    out["distinct1"] = distinct_n(output, 1)
    out["distinct2"] = distinct_n(output, 2)
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def cell_metrics(rows: Sequence[dict], outputs: Sequence[str]) -> dict:
    """Summary of a cell from its per-example metric dicts (``example_metrics``) and its
    outputs, in the same order: ROUGE means (percent) with their bootstrap intervals
    (``KEY_lo``, ``KEY_hi``), words, empty rate, pooled repetition and distinct-n."""
    if len(rows) != len(outputs):
        raise ValueError(f"{len(rows)} metric rows for {len(outputs)} outputs")
    n = len(rows)
    out: dict = {"n": n}
    for k in ROUGE_KEYS:
        m = _mean(r[k] for r in rows)
        out[k] = None if m is None else 100.0 * m
    if n:
        lo, hi = bootstrap_intervals(np.array([[float(r[k]) for k in ROUGE_KEYS] for r in rows]))
        for j, k in enumerate(ROUGE_KEYS):
            out[f"{k}_lo"], out[f"{k}_hi"] = 100.0 * float(lo[j]), 100.0 * float(hi[j])
    else:
        out.update({k: None for k in CI_KEYS})
    out["words"] = _mean(r["words"] for r in rows)
    out["empty_rate"] = _mean(float(bool(r["empty"])) for r in rows)
    texts = [t for t in outputs if t.strip()]  # none: undefined, as the authors skip the cell
    out["repetition"] = pooled_repetition(texts) if texts else None
    out["distinct1"] = pooled_distinct(texts, 1) if texts else None
    out["distinct2"] = pooled_distinct(texts, 2) if texts else None
    return out
