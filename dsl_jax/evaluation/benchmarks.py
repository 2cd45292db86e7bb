"""The summarization benchmarks of the evaluation (docs/evaluation.md section 1).

One row per benchmark: the tensorflow-datasets name (with its builder config), the
Hugging Face Hub copy (the same source and reference fields), the user prompt of the
chat template (exactly as docs/evaluation.md gives it), the generation length, and the
draw: how many examples and how many source words (1,000 and 1,500; AESLC 100 and 300,
as the authors drew).

A benchmark name is a key of the table (or an alias, or ``KEY:X.Y.Z`` pinning a TFDS
version), or a local source: ``json:FILE`` / ``jsonl:FILE`` (records of the authors'
drawn sets or ``document``/``summary`` rows) and ``hf:KEY:DIR`` (a local copy of the
Hugging Face dataset of benchmark KEY). :func:`resolve` gives the benchmarks of a sweep
distinct keys.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

from dsl_jax import storage
from dsl_jax.errors import UserError, require

DEFAULT_NUM_EXAMPLES = 1000
DEFAULT_MAX_WORDS = 1500


@dataclasses.dataclass(frozen=True)
class Benchmark:
    key: str  # the name used in configs and reports
    tfds_name: str  # tensorflow-datasets name, "name" or "name/config"
    source_field: str
    summary_field: str
    prompt: str  # format string with one {text} field: the user message
    gen_length: int  # response positions generated
    display: str  # column title in reports
    version: str | None = None  # TFDS version pinned by the user ("xsum:1.1.0"); else see below
    preferred_version: str | None = None  # docs/evaluation.md's; if not prepared, the newest
    local_file: str | None = None  # a file (json/jsonl) or folder (hf) read instead of TFDS
    local_format: str | None = None  # "json", "jsonl" or "hf" with local_file (see :func:`get`)
    hf_name: str = ""  # the Hugging Face Hub copy (and config) that ``hf:`` reads a local copy of
    alt_key: str = ""  # the key taken when another benchmark of the sweep has this one's
    num_examples: int = DEFAULT_NUM_EXAMPLES  # examples drawn (the sweep's num_examples overrides)
    max_words: int = DEFAULT_MAX_WORDS  # source words kept (the sweep's max_words overrides)
    join_words: bool = False  # True: every source re-joined with single spaces (else only cut ones)

    def build_prompt(self, source: str) -> str:
        return self.prompt.format(text=source)


BENCHMARKS: dict[str, Benchmark] = {b.key: b for b in (
    Benchmark("xsum", "xsum", "document", "summary",
              "Summarize the following text in one sentence:\n\n{text}", 128, "XSum",
              hf_name="EdinburghNLP/xsum"),
    Benchmark("cnn_dailymail", "cnn_dailymail", "article", "highlights",
              "Summarize the following news article in 2-3 sentences:\n\n{text}", 256, "CNN/DM",
              preferred_version="3.0.0", hf_name="abisee/cnn_dailymail 3.0.0"),
    Benchmark("pubmed", "scientific_papers/pubmed", "article", "abstract",
              "Summarize the following scientific paper in a concise abstract:\n\n{text}", 256,
              "PubMed", hf_name="armanc/scientific_papers pubmed"),
    Benchmark("arxiv", "scientific_papers/arxiv", "article", "abstract",
              "Summarize the following research paper in a concise abstract:\n\n{text}", 256,
              "arXiv", hf_name="armanc/scientific_papers arxiv"),
    Benchmark("billsum", "billsum", "text", "summary",
              "Summarize the following legislation:\n\n{text}", 256, "BillSum",
              hf_name="FiscalNote/billsum"),
    # The authors' AESLC file (docs/evaluation.md): 100 examples, sources cut to 300 words and
    # every one re-joined with single spaces.
    Benchmark("aeslc", "aeslc", "email_body", "subject_line",
              "Write a short subject line for this email:\n\n{text}", 64, "AESLC",
              num_examples=100, max_words=300, join_words=True, hf_name="Yale-LILY/aeslc"),
)}

ALIASES = {
    "cnn_dm": "cnn_dailymail", "cnndm": "cnn_dailymail",
    "scientific_papers/pubmed": "pubmed", "scientific_papers/arxiv": "arxiv",
}

DEFAULT_BENCHMARKS = ("xsum", "cnn_dailymail", "pubmed", "arxiv", "billsum")


LOCAL_PREFIXES = ("json:", "jsonl:", "hf:")


def get(name: str) -> Benchmark:
    """The benchmark called ``name``; one-line error if unknown. ``name`` is

    - a key of :data:`BENCHMARKS`, an alias or a TFDS name; ``KEY:X.Y.Z`` pins a TFDS version;
    - ``json:FILE`` (a JSON array) or ``jsonl:FILE`` (JSON lines), local or ``gs://``, of
      either the authors' drawn records ``{"id", "source", "reference", "prompt"}`` (taken
      in file order, their prompt as the user message) or ``{"document", "summary"}`` rows
      (drawn, cut and prompted like a TFDS split). The benchmark whose key starts the file
      name (``cnn_dailymail_1000.json``: CNN/DM) gives the prompt, generation length and
      draw; any other name XSum's. Its key is the file name without extension;
    - ``hf:KEY:DIR``: the split of a local copy of benchmark KEY's Hugging Face dataset in
      folder DIR (``save_to_disk`` output, or the Hub's parquet / arrow / json(l) files),
      drawn like a TFDS split; its key is KEY.
    """
    name = name.strip()
    for prefix in LOCAL_PREFIXES:
        if name.startswith(prefix):
            return _local(prefix[:-1], name[len(prefix):])
    key = ALIASES.get(name.lower(), name.lower())
    if ":" in key:  # "cnn_dailymail:3.4.0" pins a TFDS version
        key, version = key.split(":", 1)
        key = ALIASES.get(key, key)
        require(key in BENCHMARKS, _unknown(name))
        return dataclasses.replace(BENCHMARKS[key], version=version)
    require(key in BENCHMARKS, _unknown(name))
    return BENCHMARKS[key]


def _local(fmt: str, rest: str) -> Benchmark:
    if fmt == "hf":
        key, _, folder = rest.partition(":")
        key = ALIASES.get(key.strip().lower(), key.strip().lower())
        require(key and folder.strip(), f"benchmark hf:{rest}: expected hf:KEY:DIR, e.g. "
                "hf:xsum:data/hf/xsum (KEY one of " + ", ".join(BENCHMARKS) + ")")
        require(key in BENCHMARKS, f"benchmark hf:{rest}: unknown benchmark {key!r}; choose "
                "from " + ", ".join(BENCHMARKS))
        base = BENCHMARKS[key]
        return dataclasses.replace(base, local_file=folder.strip(), local_format="hf",
                                   alt_key=f"hf_{key}", tfds_name="")
    path = rest.strip()
    require(path, f"benchmark {fmt}: needs a file, e.g. {fmt}:data/test.{fmt}")
    stem = storage.basename(path)
    for ext in (".jsonl", ".json"):
        if stem.endswith(ext):
            stem = stem[:-len(ext)]
            break
    stem = stem or fmt
    parent = storage.basename(storage.dirname(path)) or "file"
    base = BENCHMARKS.get(_base_key(stem), BENCHMARKS["xsum"])
    return dataclasses.replace(base, key=stem, tfds_name="", display=stem, local_file=path,
                               local_format=fmt, alt_key=f"{parent}_{stem}")


def _base_key(stem: str) -> str:
    """The benchmark a file name starts with: ``xsum_1000`` -> ``xsum``; else ``""``."""
    low = stem.lower()
    for k in sorted(list(BENCHMARKS) + list(ALIASES), key=len, reverse=True):
        if k and "/" not in k and (low == k or low.startswith(k + "_") or low.startswith(k + "-")
                                   or low.startswith(k + ".")):
            return ALIASES.get(k, k)
    return ""


def source_id(bench: Benchmark) -> tuple:
    """What identifies the data of ``bench``: two names with the same are one benchmark."""
    if bench.local_file:
        return (bench.local_format, storage.abspath(bench.local_file), bench.key)
    return (bench.key, bench.version)


def resolve(names: Sequence[str]) -> list[Benchmark]:
    """The distinct benchmarks of ``names`` in order, each with a key of its own: a local
    source whose key another benchmark has takes its longer key (``jsonl:a/test.jsonl``
    and ``jsonl:b/test.jsonl``: ``a_test`` and ``b_test``; ``hf:xsum:DIR`` beside ``xsum``:
    ``hf_xsum``); when keys still collide, one line naming them."""
    benches: list[Benchmark] = []
    seen = set()
    for name in names:
        b = get(name)
        if source_id(b) not in seen:
            seen.add(source_id(b))
            benches.append(b)
    count = collections.Counter(b.key for b in benches)
    out = []
    for b in benches:
        if count[b.key] > 1 and b.local_file:
            b = dataclasses.replace(b, key=b.alt_key,
                                    display=b.alt_key if b.local_format != "hf"
                                    else f"{b.display} (HF)")
        out.append(b)
    count = collections.Counter(b.key for b in out)
    dup = [b for b in out if count[b.key] > 1]
    if dup:
        raise UserError(f"benchmarks {_describe(dup[0])} and {_describe(dup[1])} both have the "
                        f"key {dup[0].key!r}; rename a file or its folder")
    return out


def _describe(b: Benchmark) -> str:
    if b.local_format == "hf":
        return f"hf:{b.alt_key[3:]}:{b.local_file}"
    return f"{b.local_format}:{b.local_file}" if b.local_file else b.key


def _unknown(name: str) -> str:
    return (f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} "
            "or json:FILE, jsonl:FILE, hf:KEY:DIR")
