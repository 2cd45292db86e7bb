"""Helpers of the evaluation tests: tiny prepared TFDS datasets, a tokenizer, a fake
generator for sweeps (importable as ``tests.eval_fixtures:fake_factory``)."""

from __future__ import annotations

import json
import os
import time


def prepare_tfds(benchmark: str, data_dir: str, splits: dict, version: str = "1.0.0") -> str:
    """Write ``splits`` ({split: [example dict]}) as a prepared TFDS dataset in ``data_dir``
    with the real builder's features and name (``xsum`` or ``cnn_dailymail``), using TFDS's own
    preparation (``download_and_prepare``, nothing downloaded). Returns the version dir."""
    import tensorflow_datasets as tfds

    if benchmark == "xsum":
        from tensorflow_datasets.summarization.xsum import Xsum as Real
    elif benchmark == "cnn_dailymail":
        from tensorflow_datasets.summarization.cnn_dailymail import CnnDailymail as Real
    else:
        raise ValueError(benchmark)

    class Tiny(Real, skip_registration=True):
        name = benchmark
        VERSION = tfds.core.Version(version)
        SUPPORTED_VERSIONS = []
        RELEASE_NOTES = {version: "test data"}

        def _split_generators(self, dl_manager):
            return {split: self._gen(rows) for split, rows in splits.items()}

        def _gen(self, rows):
            for i, row in enumerate(rows):
                yield f"ex{i}", row

    builder = Tiny(data_dir=data_dir)
    builder.download_and_prepare()
    return os.path.join(data_dir, benchmark, version)


def xsum_rows(n: int = 30) -> list[dict]:
    """``n`` XSum-like rows: varied lengths, some sources beyond 1,500 words (with
    newlines and runs of spaces), some empty or blank sources and summaries."""
    rows = []
    for i in range(n):
        words = [f"w{i}x{j}" for j in range(7 + 3 * i)]
        if i % 6 == 1:
            words = [f"long{i}y{j}" for j in range(1500 + 37 * i)]
        doc = " ".join(words[:5]) + "\n\n  " + "   ".join(words[5:]) + f" Story {i} ends."
        summary = f"Summary number {i} of the story."
        if i % 7 == 3:
            doc = ""
        if i % 11 == 5:
            summary = "  \n "
        rows.append({"document": doc, "summary": summary})
    return rows


def cnn_rows(n: int = 16) -> list[dict]:
    return [{"article": f"(CNN) The council met on day {i}. It voted to build room {i + 3}. "
                        "Residents welcomed the news.",
             "highlights": f"Council votes for room {i + 3}.\nResidents welcome it.",
             "publisher": "cnn", "id": f"id{i}"} for i in range(n)]


def make_tokenizer(path: str):
    from dsl_jax import demo_data
    from dsl_jax.tokenizer import train_small
    texts = demo_data.tokenizer_corpus()[:400] + [r["document"][:300] for r in xsum_rows(12)]
    texts += [r["article"] for r in cnn_rows(4)] + ["Summarize the following legislation:"]
    return train_small(texts, vocab_size=512, path=path)


# ---- a fake generator for sweeps -----------------------------------------------------

def fake_outputs(prompt, sampler: str, nfe: int, gen_length: int, seed: int, tok) -> list[int]:
    """Deterministic pseudo-summaries made of words of the prompt's source: length grows
    with NFE, ``remask`` says every word twice, some outputs are empty (all EOS)."""
    if (seed + len(prompt)) % 9 == 0:
        return [tok.eos_id] * gen_length
    text = tok.decode(prompt)
    source = text.split(":\n\n", 1)[-1].rsplit("assistant", 1)[0]
    words = source.split()
    start = seed % max(1, len(words) // 2)
    out = words[start:start + 3 + nfe + seed % 3]
    if sampler == "remask":
        out = [w for w in out for _ in (0, 1)]
    ids = tok.encode(" ".join(out))[:gen_length]
    return ids + [tok.eos_id] * (gen_length - len(ids))


def fake_factory(settings, tok):
    """``--config.generator=tests.eval_fixtures:fake_factory``. Env: FAKE_GEN_SLEEP
    (seconds per call), FAKE_GEN_LOG (a file that gets one JSON line per call)."""
    sleep = float(os.environ.get("FAKE_GEN_SLEEP", "0"))
    log = os.environ.get("FAKE_GEN_LOG")

    def generate(prompts, sampler, nfe, gen_length, seed):
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"sampler": sampler, "nfe": nfe, "n": len(prompts),
                                    "gen_length": gen_length,
                                    "seed": seed, "lengths": [len(p) for p in prompts]}) + "\n")
        if sleep:
            time.sleep(sleep)
        return [fake_outputs(p, sampler, nfe, gen_length, seed, tok) for p in prompts]

    return generate
