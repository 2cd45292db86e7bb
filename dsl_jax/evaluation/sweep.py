"""``dsl-jax eval``: zero-shot summarization sweeps (docs/evaluation.md section 1).

For each benchmark the test split is read from a prepared tensorflow-datasets data
dir, a local Hugging Face copy or a file (``dsl_jax.evaluation.data``: the benchmark's
number of examples drawn with seed 42, sources cut to its number of words: 1,000 and
1,500, AESLC 100 and 300; the benchmark's prompt in LLaDA's chat template; or the
authors' drawn records as they are), and every sampler x NFE cell generates a summary
per example and scores it (ROUGE-1/2/L/Lsum with bootstrap intervals, length, empty
rate; repetition and distinct-n pooled over the cell). The lead-k baselines
(``lead1``, ``lead3``, any ``leadK``: the source's first K sentences) are samplers
without a model: one cell per benchmark, no NFE, no checkpoint or tokenizer needed.

Run directory (``out_dir``):

    sweep.json                        the settings of the sweep
    cells/BENCH/SAMPLER-nfeN/         (a lead-k baseline: cells/BENCH/leadK/)
        host00000.jsonl               per-example records as each host writes them
        examples.jsonl                all examples of the cell in order (lead host)
        cell.json                     the cell's summary; its presence marks it finished
    summary.csv, summary.json         one row per cell, ROUGE with 95% bootstrap intervals
    table.md                          ROUGE per benchmark like the paper's table, the
                                      intervals, and length / empty / repetition / distinct-n
    rouge1_vs_nfe.png, repetition_vs_nfe.png, lengths.png
    timing.json                       seconds, examples and generated tokens (response
                                      positions) per second of the sampled cells

Resuming: per-example records are appended a whole batch at a time (one write,
fsync'd); a torn last line left by a kill is dropped on restart. A restarted sweep
skips finished cells and, inside a cell, finished examples. Batches are fixed by the
settings (prompts sorted by length, then cut into batches) and each batch has its own
noise seed (or, with ``shared_seed``, every example draws from ``seed`` alone), so a
resumed sweep produces exactly what an uninterrupted one does.

Pods: each host (``jax.process_index()``) samples every ``process_count()``-th batch
on a mesh of its own devices and writes its own file; after each cell the hosts meet
at a barrier and the lead host merges. The run directory must be shared by the hosts
(a shared disk or a bucket, gs://).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
import zlib
from typing import Sequence

from dsl_jax import storage
from dsl_jax.checkpoint import sync_hosts
from dsl_jax.reports import num
from dsl_jax.errors import UserError, require
from dsl_jax.textfiles import append_records, read_json, read_records, write_json, write_jsonl
from dsl_jax.evaluation.generation import GenerateFn, make_generator
from dsl_jax.sampling.registry import DSL_SAMPLERS, SAMPLERS

LEAD = re.compile(r"lead([1-9][0-9]*)")


def lead_k(sampler: str) -> int | None:
    """K of a lead-K baseline's name (``lead3``: 3), else None."""
    m = LEAD.fullmatch(sampler)
    return int(m.group(1)) if m else None


def sampler_label(sampler: str) -> str:
    """A sampler's name in reports: the registry's label, ``Lead-K`` for a baseline."""
    from dsl_jax.sampling.registry import REGISTRY

    k = lead_k(sampler)
    return f"Lead-{k}" if k else REGISTRY[sampler].label if sampler in REGISTRY else sampler

log = logging.getLogger(__name__)


# ---- settings ---------------------------------------------------------------------

def default_config():
    """Every field of a sweep config with its default (``configs/eval_summarization.py``
    returns it). Lists are comma-separated strings so that overrides read naturally."""
    import ml_collections

    from dsl_jax.evaluation.benchmarks import DEFAULT_BENCHMARKS
    from dsl_jax.evaluation.data import DEFAULT_SEED

    c = ml_collections.ConfigDict()
    c.ckpt = ""  # dsl-jax checkpoint directory (required unless every sampler is a lead-k baseline); DSL parameters needed for sde/ode
    c.tokenizer = ""  # LLaDA tokenizer.json; default: CKPT/tokenizer.json
    c.data_dir = ""  # prepared TFDS data dir (local or gs://); default $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.benchmarks = ",".join(DEFAULT_BENCHMARKS)  # also: aeslc (the authors' prompt, 100 examples, 300 words); "name:1.2.3" pins a TFDS version; json:FILE / jsonl:FILE (the authors' drawn records or document/summary rows); hf:KEY:DIR (a local Hugging Face copy of benchmark KEY)
    c.samplers = "sde,remask,eos_block"  # of sde, ode, pf_ode, remask, random, eos_block; lead1, lead3 (leadK: the source's first K sentences, no model)
    c.nfe = "8,16,32,64"  # forward passes per sample (sde/ode: NFE/2 Heun steps + 1 final pass)
    c.split = "test"
    c.num_examples = 0  # examples per benchmark; 0: the benchmark's (1000; AESLC 100)
    c.max_words = 0  # sources cut to their first words; 0: the benchmark's (1500; AESLC 300)
    c.data_seed = DEFAULT_SEED  # shuffle of the split's indices
    c.seed = 0  # sampling noise
    c.shared_seed = False  # True: every example draws its start state and noise from seed alone (the authors' protocol); False: per batch and example
    c.batch_size = 16  # prompts per sampler call (per host)
    c.gen_length = 0  # response positions; 0: the benchmark's (XSum 128, AESLC 64, others 256)
    c.out_dir = "runs/eval"  # the run directory; a killed sweep resumes in it
    c.mesh = "fsdp=-1"  # mesh over this host's devices
    c.dtype = ""  # compute dtype override (float32, bfloat16); empty: the checkpoint's
    # The DSL samplers' knobs (sde/ode/pf_ode; docs/method.md section 3), the paper's by default:
    c.snr_grid = "sensitive"  # SNR grid: sensitive or loglinear
    c.s_min = 0.01  # the grid's first SNR
    c.s_max = 100.0  # the grid's last SNR (the sensitive grid ends at 74 below NFE 40)
    c.beta_scale = 2.0  # beta_infer = beta_scale x beta
    c.noise_scale = ""  # sde's noise scale; empty: by NFE (0.1 up to 8, 0.05 up to 16, 0.01 up to 32, else 0.005)
    c.top_k = 512  # x_hat over the top-k tokens
    c.cache_refresh = 8  # the prompt's keys/values recomputed every k Heun steps (1: exact; 0: once)
    # The remasking samplers' knobs (remask/random/eos_block), LLaDA's by default:
    c.block_length = 0  # 0: the sampler's own (one block; eos_block 32)
    c.remask_cache = "none"  # Fast-dLLM's caches: none, prefix or dual
    c.threshold = ""  # commit every masked position above this confidence (>= 1 a step); empty: off
    c.cfg_scale = 0.0  # unsupervised classifier-free guidance (0: off)
    c.confidence_eos_eot_inf = False  # EOS/EoT candidates never win a step's commit
    c.generator = ""  # advanced: "module:factory"; factory(settings, tok) returns generate(prompts, sampler, nfe, gen_length, seed) -> id lists
    c.plots = True
    # JAX's persistent compilation cache: "auto" is OUT_DIR/.jax_cache (a resumed or repeated
    # sweep reuses the compiled samplers), a path (shared by sweeps), or "off"
    c.compile_cache = "auto"
    return c


_DEFAULTS = default_config()


@dataclasses.dataclass
class Settings:
    """A sweep's checked settings; :meth:`from_config` builds them from a config, and the
    defaults are :func:`default_config`'s."""
    ckpt: str
    tokenizer: str
    data_dir: str
    benchmarks: list[str]
    samplers: list[str]
    nfe: list[int]
    out_dir: str
    split: str = _DEFAULTS.split
    num_examples: int = _DEFAULTS.num_examples
    max_words: int = _DEFAULTS.max_words
    data_seed: int = _DEFAULTS.data_seed
    seed: int = _DEFAULTS.seed
    shared_seed: bool = _DEFAULTS.shared_seed
    batch_size: int = _DEFAULTS.batch_size
    gen_length: int = _DEFAULTS.gen_length
    mesh: str = _DEFAULTS.mesh
    dtype: str = _DEFAULTS.dtype
    snr_grid: str = _DEFAULTS.snr_grid
    s_min: float = _DEFAULTS.s_min
    s_max: float = _DEFAULTS.s_max
    beta_scale: float = _DEFAULTS.beta_scale
    noise_scale: str = _DEFAULTS.noise_scale
    top_k: int = _DEFAULTS.top_k
    cache_refresh: int = _DEFAULTS.cache_refresh
    block_length: int = _DEFAULTS.block_length
    remask_cache: str = _DEFAULTS.remask_cache
    threshold: str = _DEFAULTS.threshold
    cfg_scale: float = _DEFAULTS.cfg_scale
    confidence_eos_eot_inf: bool = _DEFAULTS.confidence_eos_eot_inf
    generator: str = _DEFAULTS.generator
    plots: bool = _DEFAULTS.plots
    compile_cache: str = _DEFAULTS.compile_cache

    def cache_dir(self) -> str:
        """The persistent compilation cache's directory ("" when off)."""
        if self.compile_cache in ("off", ""):
            return ""
        if self.compile_cache == "auto":
            return storage.join(self.out_dir, ".jax_cache")
        return storage.abspath(self.compile_cache)

    @classmethod
    def from_config(cls, cfg) -> "Settings":
        """Settings from a config (a ConfigDict or a dict); missing fields take the defaults."""
        from dsl_jax.configlib import convert_value, parse_list
        from dsl_jax.evaluation import benchmarks as B
        from dsl_jax.tfds_data import default_data_dir

        values = _DEFAULTS.to_dict()
        unknown = set(cfg.keys()) - set(values)
        require(not unknown, f"config: unknown key(s) {sorted(unknown)}")
        values.update(cfg.items())
        benches = parse_list(values.pop("benchmarks"), name="config benchmarks")
        require(benches, "config benchmarks: no benchmark given")
        B.resolve(benches)  # unknown benchmark, two with one key: one clear line
        samplers = parse_list(values.pop("samplers"), name="config samplers")
        require(samplers, "config samplers: no sampler given")
        for s in samplers:
            require(s in SAMPLERS or lead_k(s), f"unknown sampler {s!r}; choose from "
                    f"{', '.join(SAMPLERS)}, lead1, lead3 (leadK: the first K sentences)")
        nfe = parse_list(values.pop("nfe"), int, name="config nfe")
        require(nfe, "config nfe: empty list")
        for n in nfe:
            require(n >= 2, f"config nfe: each NFE must be at least 2, got {n}")
        # Each field as the type of its default (a string as a --config override reads it);
        # None (an unset path) as the empty value.
        fields = {k: type(_DEFAULTS[k])() if v is None
                  else convert_value(v, _DEFAULTS[k], k) if isinstance(v, str)
                  else type(_DEFAULTS[k])(v) for k, v in values.items()}
        fields["data_dir"] = fields["data_dir"] or default_data_dir()
        fields["out_dir"] = fields["out_dir"] or _DEFAULTS.out_dir
        s = cls(benchmarks=benches, samplers=samplers, nfe=nfe, **fields)
        require(s.num_examples >= 0, f"config num_examples: must be positive (or 0 for the "
                f"benchmark's), got {s.num_examples}")
        require(s.max_words >= 0, f"config max_words: must be positive (or 0 for the "
                f"benchmark's), got {s.max_words}")
        require(s.batch_size > 0, f"config batch_size: must be positive, got {s.batch_size}")
        require(s.gen_length >= 0, f"config gen_length: must be positive (or 0 for the "
                f"benchmark's), got {s.gen_length}")
        for name, what in (("noise_scale", "by NFE"), ("threshold", "off")):
            if getattr(s, name).strip():
                try:
                    float(getattr(s, name))
                except ValueError:
                    raise UserError(f"config {name}: expected a number (or empty: {what}), got "
                                    f"{getattr(s, name)!r}") from None
        from dsl_jax.sampling import registry
        for sampler in s.model_samplers:  # a knob out of range: one line naming the config key
            try:
                registry.check_knobs(sampler, **s.knobs(sampler))
            except UserError as e:
                raise UserError(f"config {e}") from None
        return s

    def knobs(self, sampler: str) -> dict:
        """The knobs ``sampler`` uses, for ``dsl_jax.sampling.generate``: the DSL knobs for
        the DSL samplers (the noise scale: ``sde`` only, when set), the remasking knobs for
        the others."""
        if lead_k(sampler):
            return {}
        if sampler not in DSL_SAMPLERS:
            return {"block_length": self.block_length or None, "remask_cache": self.remask_cache,
                    "threshold": float(self.threshold) if self.threshold.strip() else None,
                    "cfg_scale": self.cfg_scale,
                    "confidence_eos_eot_inf": self.confidence_eos_eot_inf}
        knobs = {"snr_grid": self.snr_grid, "s_min": self.s_min, "s_max": self.s_max,
                 "beta_scale": self.beta_scale, "top_k": self.top_k,
                 "cache_refresh": self.cache_refresh}
        if sampler == "sde" and self.noise_scale.strip():
            knobs["noise_scale"] = float(self.noise_scale)
        return knobs

    def changed_knobs(self, sampler: str) -> dict:
        """The knobs of ``sampler`` away from their defaults (a cell's fingerprint holds
        these only, so runs of earlier versions keep theirs)."""
        from dsl_jax.sampling.registry import KNOB_DEFAULTS
        # Against the exact sampler's cache_refresh (1), not the default: cells computed
        # before the prompt cache existed are exact, and must not pass for cached ones.
        base = {**KNOB_DEFAULTS, "cache_refresh": 1}
        return {k: v for k, v in self.knobs(sampler).items() if v != base[k]}

    def draw(self, bench) -> tuple[int, int]:
        """(examples, source words) for ``bench``: the config's where set, else the benchmark's."""
        return self.num_examples or bench.num_examples, self.max_words or bench.max_words

    @property
    def model_samplers(self) -> list[str]:
        """The samplers that run the model (all but the lead-k baselines)."""
        return [s for s in self.samplers if not lead_k(s)]

    def cell_fingerprint(self, bench, gen_length: int, examples: Sequence,
                         sampler: str = "") -> dict:
        """What a cell's results depend on; a finished cell is reused only when it matches.
        A lead-k cell depends on the data alone."""
        num_examples, max_words = self.draw(bench)
        if lead_k(sampler):
            texts = "\0".join(f"{e.source}\1{e.reference}" for e in examples)
            return {"benchmark": bench.key, "split": self.split, "num_examples": num_examples,
                    "max_words": max_words, "data_seed": self.data_seed,
                    "examples_crc": zlib.crc32(",".join(e.id for e in examples).encode()),
                    "sources_crc": zlib.crc32(texts.encode())}
        texts = "\0".join(f"{e.user_message}\1{e.reference}" for e in examples)
        return {"ckpt": storage.abspath(self.ckpt) if self.ckpt else "",
                "tokenizer": storage.abspath(self.tokenizer) if self.tokenizer else "",
                "generator": self.generator, "benchmark": bench.key, "split": self.split,
                "num_examples": num_examples, "max_words": max_words,
                "data_seed": self.data_seed, "seed": self.seed, "batch_size": self.batch_size,
                "gen_length": gen_length, "dtype": self.dtype,
                "examples_crc": zlib.crc32(",".join(e.id for e in examples).encode()),
                "texts_crc": zlib.crc32(texts.encode()),
                **({"shared_seed": True} if self.shared_seed else {}),
                **self.changed_knobs(sampler)}


# ---- files ------------------------------------------------------------------------

# ---- the sweep --------------------------------------------------------------------

@dataclasses.dataclass
class Cell:
    bench: object  # Benchmark
    sampler: str
    nfe: int | None  # None: a lead-k baseline

    @property
    def tag(self) -> str:
        return self.sampler if self.nfe is None else f"{self.sampler}-nfe{self.nfe}"

    @property
    def name(self) -> str:
        return f"{self.bench.key}/{self.tag}"


def cell_dir(out_dir: str, cell: Cell) -> str:
    return storage.join(out_dir, "cells", cell.bench.key, cell.tag)


def make_cells(settings: Settings, keys: Sequence[str], benches: dict) -> list[Cell]:
    """Every benchmark x sampler x NFE cell; a lead-k baseline once per benchmark."""
    return [c for k in keys for s in settings.samplers
            for c in ([Cell(benches[k], s, None)] if lead_k(s)
                      else [Cell(benches[k], s, n) for n in settings.nfe])]


def batch_seed(seed: int, cell: Cell, first_index: int) -> int:
    return zlib.crc32(f"{seed}/{cell.bench.key}/{cell.sampler}/{cell.nfe}/{first_index}".encode())


def make_batches(prompt_lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Example indices sorted by prompt length (ties by index), cut into batches."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: (prompt_lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _hosts() -> tuple[int, int]:
    import jax
    return jax.process_index(), jax.process_count()


def prepare(settings: Settings):
    """Everything that can fail on bad input, before any sampling: checkpoint and
    sampler compatibility, tokenizer, data of every benchmark, prompt lengths.
    Returns (tokenizer, {bench key: (bench, examples, prompt ids, gen_length)}); with only
    lead-k baselines and no tokenizer given, no tokenizer (None) and no prompt ids (None)."""
    from dsl_jax import checkpoint
    from dsl_jax.evaluation import benchmarks as B
    from dsl_jax.evaluation import data as D
    from dsl_jax.sampling import registry
    from dsl_jax.tokenizer import Tokenizer

    max_len = None
    model = bool(settings.model_samplers)
    if settings.generator and model:  # a bad hook fails here, before any data is read
        from dsl_jax.evaluation.generation import resolve_factory
        resolve_factory(settings.generator)
    if settings.ckpt and model:
        needs_dsl = [s for s in settings.samplers if s in DSL_SAMPLERS]
        meta = checkpoint.read_meta(
            settings.ckpt, "dsl" if needs_dsl else "auto",
            f"sampler(s) {', '.join(needs_dsl)} need them; {registry.dsl_hint()}")
        model_cfg = checkpoint.model_config(meta)
        max_len = model_cfg.max_sequence_length
    elif model:
        require(settings.generator, "config ckpt: no checkpoint given (--config.ckpt=DIR)")
    tok_path = settings.tokenizer or (os.path.join(settings.ckpt, "tokenizer.json")
                                      if settings.ckpt else "")
    tok = None
    if model or settings.tokenizer:
        require(tok_path and storage.exists(tok_path),
                f"no tokenizer at {tok_path!r}; pass --config.tokenizer=FILE (the LLaDA "
                "tokenizer.json)" if tok_path
                else "config tokenizer: no tokenizer given (--config.tokenizer=FILE)")
        tok = Tokenizer.from_file(tok_path)
        if max_len is not None:
            tok.check_model(model_cfg, settings.ckpt)
    loaded = {}
    for bench in B.resolve(settings.benchmarks):
        gen_length = settings.gen_length or bench.gen_length
        examples = D.load_examples(bench, settings.data_dir, *settings.draw(bench),
                                   settings.data_seed, settings.split)
        require(examples, f"{bench.key}: the {settings.split} split has no non-empty example")
        prompts = [tok.prompt(e.user_message) for e in examples] if tok is not None else None
        if max_len is not None:
            longest = max(len(p) for p in prompts)
            require(longest + gen_length <= max_len,
                    f"{bench.key}: the longest prompt has {longest} tokens; with generation length "
                    f"{gen_length} it exceeds the model's maximum sequence length {max_len} "
                    "(lower --config.max_words or --config.gen_length)")
        if not settings.generator:  # the samplers' own budget checks, before any sampling
            for nfe in settings.nfe:
                for sampler in settings.model_samplers:
                    try:
                        registry.get(sampler).check(
                            nfe, gen_length, settings.knobs(sampler).get("block_length"))
                    except UserError as e:
                        raise UserError(f"{bench.key}: {sampler}: {e}") from None
        loaded[bench.key] = (bench, examples, prompts, gen_length)
    return tok, loaded


def run_sweep(settings: Settings, generate_fn: GenerateFn | None = None,
              progress: bool = True) -> dict:
    """Run (or resume) the sweep; returns the summary rows by cell name.

    ``generate_fn`` replaces the model's samplers (tests); by default it is built
    from ``settings`` only when some cell still has work, and runs with JAX's persistent
    compilation cache in ``settings.cache_dir()``.
    """
    from dsl_jax.evaluation.generation import compilation_cache

    with compilation_cache(settings.cache_dir() if generate_fn is None else ""):
        return _run_sweep(settings, generate_fn, progress)


def _run_sweep(settings: Settings, generate_fn: GenerateFn | None, progress: bool) -> dict:
    from dsl_jax.evaluation import metrics as M
    from dsl_jax.evaluation import report

    tok, loaded = prepare(settings)
    host, n_hosts = _hosts()
    lead = host == 0
    cells = make_cells(settings, list(loaded), {k: v[0] for k, v in loaded.items()})
    _check_reusable(settings, cells, loaded)  # before anything in out_dir changes
    timing_path = os.path.join(settings.out_dir, "timing.json")
    timing = {}
    if lead and storage.isfile(timing_path):
        timing = read_json(timing_path)
    generator: list[GenerateFn | None] = [generate_fn]
    if generate_fn is None and any(c.nfe is not None and not storage.isfile(
            os.path.join(cell_dir(settings.out_dir, c), "cell.json")) for c in cells):
        # Every host loads the model here, before any host may skip its share: a checkpoint
        # restore is a collective of all hosts (the cell.json files are the same for all).
        generator[0] = make_generator(settings, tok)
    storage.makedirs(settings.out_dir)  # (after the model loaded: a bad one changes nothing)
    if lead:
        write_json(os.path.join(settings.out_dir, "sweep.json"), dataclasses.asdict(settings),
                   sort_keys=True)

    for cell in cells:
        bench, examples, prompts, gen_length = loaded[cell.bench.key]
        fp = settings.cell_fingerprint(bench, gen_length, examples, cell.sampler)
        cdir = cell_dir(settings.out_dir, cell)
        storage.makedirs(cdir)
        done_file = os.path.join(cdir, "cell.json")
        if storage.isfile(done_file):
            stored = read_json(done_file)
            require(stored.get("fingerprint") == fp,
                    f"{settings.out_dir}: cell {cell.name} holds results of different settings "
                    f"({_diff(stored.get('fingerprint', {}), fp)}); use a new --config.out_dir")
            if lead and not set(M.ROUGE_KEYS + M.CI_KEYS) <= set(stored.get("summary", {})):
                rescore_cell(cdir, cell, fp)  # a cell of an earlier dsl-jax: new metrics, no sampling
            continue
        mine = os.path.join(cdir, f"host{host:05d}.jsonl")
        _check_fingerprint_file(cdir, fp, cell, settings.out_dir, lead)
        read_records(mine, repair=True)
        done = set()
        for fname in sorted(storage.listdir(cdir) if storage.isdir(cdir) else []):  # (a bucket
            # has no empty directories)
            if fname.startswith("host") and fname.endswith(".jsonl"):
                done.update(r["index"] for r in read_records(os.path.join(cdir, fname)))
        if cell.nfe is None:  # a lead-k baseline: the lead host writes every example at once
            if lead:
                k = lead_k(cell.sampler)
                records = []
                for i, ex in enumerate(examples):
                    if i not in done:
                        output = M.lead(ex.source, k)
                        records.append({"benchmark": bench.key, "sampler": cell.sampler,
                                        "nfe": None, "index": i, "id": ex.id,
                                        "reference": ex.reference, "output": output,
                                        **M.example_metrics(ex.reference, output)})
                if records:
                    append_records(mine, records)
                merge_cell(cdir, cell, len(examples), fp)
            sync_hosts(f"dsl-jax-eval-merged-{cell.name}")
            continue
        batches = [b for j, b in enumerate(make_batches([len(p) for p in prompts],
                                                        settings.batch_size)) if j % n_hosts == host]
        todo = [b for b in batches if any(i not in done for i in b)]
        share = sum(len(b) for b in batches)
        t0, computed, tokens = time.time(), 0, 0
        bar = _bar(share, share - sum(sum(i not in done for i in b) for b in todo),
                   cell.name, progress and lead)
        for b in todo:
            ids = generator[0]([prompts[i] for i in b], cell.sampler, cell.nfe, gen_length,
                                  settings.seed if settings.shared_seed
                                  else batch_seed(settings.seed, cell, min(b)))
            require(len(ids) == len(b), f"generator returned {len(ids)} outputs for {len(b)} prompts")
            records = []
            for i, out_ids in zip(b, ids):
                if i in done:
                    continue
                tokens += len(out_ids)
                ex = examples[i]
                output = tok.decode(out_ids)
                rec = {"benchmark": bench.key, "sampler": cell.sampler, "nfe": cell.nfe,
                       "index": i, "id": ex.id, "prompt_tokens": len(prompts[i]),
                       "reference": ex.reference, "output": output}
                rec.update(M.example_metrics(ex.reference, output))
                records.append(rec)
            append_records(mine, records)
            computed += len(records)
            bar.update(len(records))
        bar.close()
        sync_hosts(f"dsl-jax-eval-{cell.name}")
        if lead:
            summary = merge_cell(cdir, cell, len(examples), fp)
            if computed:
                dt = time.time() - t0
                timing[cell.name] = {"seconds": round(dt, 3), "examples": computed,
                                     "examples_per_s": round(computed / dt, 4) if dt > 0 else None,
                                     "tokens": tokens,
                                     "tokens_per_s": round(tokens / dt, 2) if dt > 0 else None}
                write_json(timing_path, timing, sort_keys=True)
            log.info(f"{cell.name}: ROUGE-1 {num(summary['rouge1'])} ROUGE-2 "
                     f"{num(summary['rouge2'])} ROUGE-L {num(summary['rougeL'])} ROUGE-Lsum "
                     f"{num(summary['rougeLsum'])} words {num(summary['words'])} empty "
                     f"{num(summary['empty_rate'])}")
        sync_hosts(f"dsl-jax-eval-merged-{cell.name}")
    rows = {}
    if lead:
        rows = report.write_reports(settings.out_dir, cells, plots=settings.plots)
        log.info(f"results in {settings.out_dir}: summary.csv, summary.json, table.md"
                 + (", plots" if settings.plots else ""))
    return rows


def _check_reusable(settings: Settings, cells: list, loaded: dict) -> None:
    """A sweep run again in its out_dir with settings that change a cell's results
    (another checkpoint, seed, gen_length, knob, data draw...) is refused, naming the
    cell and the differing keys, before any file is written; new cells (samplers, NFEs,
    benchmarks added) are fine."""
    for cell in cells:
        bench, examples, _, gen_length = loaded[cell.bench.key]
        fp = settings.cell_fingerprint(bench, gen_length, examples, cell.sampler)
        cdir = cell_dir(settings.out_dir, cell)
        done_file = os.path.join(cdir, "cell.json")
        if storage.isfile(done_file):
            stored = read_json(done_file).get("fingerprint", {})
            require(stored == fp, f"{settings.out_dir}: cell {cell.name} holds results of "
                    f"different settings ({_diff(stored, fp)}); use a new --config.out_dir")
        elif storage.isfile(os.path.join(cdir, "settings.json")):
            stored = read_json(os.path.join(cdir, "settings.json"))
            require(stored == fp, f"{settings.out_dir}: cell {cell.name} holds partial results "
                    f"of different settings ({_diff(stored, fp)}); use a new --config.out_dir")


def _diff(a: dict, b: dict) -> str:
    """The keys whose values differ, stored ``a`` vs now ``b`` (six shown, then a count)."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = ", ".join(f"{k}: {a.get(k, '(unset)')!r} vs {b.get(k, '(unset)')!r}"
                      for k in keys[:6])
    return (shown + (f" (and {len(keys) - 6} more)" if len(keys) > 6 else "")) or "unknown"


def _check_fingerprint_file(cdir: str, fp: dict, cell: Cell, out_dir: str, lead: bool) -> None:
    """Partial results of a cell are reused only under the same settings."""
    path = os.path.join(cdir, "settings.json")
    if storage.isfile(path):
        stored = read_json(path)
        require(stored == fp, f"{out_dir}: cell {cell.name} holds partial results of different "
                f"settings ({_diff(stored, fp)}); use a new --config.out_dir")
    elif lead:
        write_json(path, fp, sort_keys=True)


def _bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="ex", disable=not enabled,
                dynamic_ncols=True, file=sys.stderr)


def merge_cell(cdir: str, cell: Cell, n: int, fp: dict) -> dict:
    """Lead host: all hosts' records of a cell -> examples.jsonl and cell.json."""
    from dsl_jax.evaluation import metrics as M

    by_index: dict[int, dict] = {}
    for fname in sorted(storage.listdir(cdir)):
        if fname.startswith("host") and fname.endswith(".jsonl"):
            for r in read_records(os.path.join(cdir, fname)):
                by_index.setdefault(r["index"], r)
    missing = [i for i in range(n) if i not in by_index]
    require(not missing, f"cell {cell.name}: {len(missing)} example(s) missing after sampling "
            f"(first: {missing[:5]}); run the sweep again to fill them in")
    # records of an earlier dsl-jax lack the newer metrics: scored again from their output
    rows = [r if set(M.ROUGE_KEYS) <= set(r) else {**r, **M.example_metrics(r["reference"],
                                                                             r["output"])}
            for r in (by_index[i] for i in range(n))]
    return _write_cell(cdir, cell, rows, fp)


def _write_cell(cdir: str, cell: Cell, rows: list[dict], fp: dict) -> dict:
    from dsl_jax.evaluation import metrics as M

    write_jsonl(os.path.join(cdir, "examples.jsonl"), rows, sort_keys=True)
    summary = {"benchmark": cell.bench.key, "sampler": cell.sampler, "nfe": cell.nfe,
               **M.cell_metrics(rows, [r["output"] for r in rows])}
    write_json(os.path.join(cdir, "cell.json"), {"summary": summary, "fingerprint": fp},
               sort_keys=True)
    return summary


def rescore_cell(cdir: str, cell: Cell, fp: dict) -> dict:
    """Lead host: a finished cell's examples scored again (each output against its
    reference; no sampling) and its summary rewritten, for cells written before a metric
    (ROUGE-Lsum, the bootstrap intervals) was added."""
    from dsl_jax.evaluation import metrics as M

    rows = read_records(os.path.join(cdir, "examples.jsonl"))
    rows = [{**r, **M.example_metrics(r["reference"], r["output"])} for r in rows]
    return _write_cell(cdir, cell, rows, fp)
