"""The one table of samplers: name -> whether it needs a DSL model, how it runs a batch,
and how many model forward passes an NFE budget buys.

Every list of sampler names (``dsl_jax.sampling.SAMPLERS`` and ``DSL_SAMPLERS``, the
sample command's choices, the sweep's checks) is derived from :data:`REGISTRY`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable

from dsl_jax.errors import require
from dsl_jax.sampling import remask, schedules, sde


CACHE_REFRESH = 8  # DSL-SDE's default prompt-cache refresh interval


@dataclasses.dataclass(frozen=True)
class Request:
    """What one generation run asks for (hashable: it keys the compiled functions)."""

    nfe: int
    gen_length: int
    snr_grid: str = "sensitive"  # DSL samplers: sensitive / loglinear
    temperature: float = 0.0  # remasking samplers: 0 argmax, > 0 Gumbel-max
    # The DSL samplers' knobs (docs/method.md section 3); the defaults are the paper's.
    beta_scale: float = sde.BETA_INFER_SCALE  # beta_infer = beta_scale x beta
    noise_scale: float | None = None  # sde only; None: by NFE (schedules.noise_scale)
    s_min: float = schedules.SNR_MIN  # the grid's first SNR
    s_max: float = schedules.SNR_MAX  # the grid's last SNR (sensitive: of its third segment)
    top_k: int = sde.TOP_K  # x_hat over the top-k probabilities
    # The prompt's keys/values refreshed every k Heun steps (1: exact, 0: once); 8 is the
    # largest k measured within 0.5 ROUGE-1 of exact (docs/method.md section 3).
    cache_refresh: int = CACHE_REFRESH
    # The remasking samplers' knobs (docs/method.md section 3); the defaults are LLaDA's.
    block_length: int | None = None  # None: the sampler's own (one block; eos_block: 32)
    remask_cache: str = "none"  # none / prefix / dual (Fast-dLLM's caches)
    threshold: float | None = None  # commit every masked position at or above it (>= 1 a step)
    cfg_scale: float = 0.0  # unsupervised classifier-free guidance (0: off)
    confidence_eos_eot_inf: bool = False  # EOS/EoT left out of the confidence softmax (score 0)

    def knobs(self) -> dict:
        """The sampler knobs (:data:`KNOBS`) of this request."""
        return {k: getattr(self, k) for k in KNOBS}

    def check(self, sampler: str) -> None:
        """One clear line for a knob out of range or one the sampler does not use."""
        check_knobs(sampler, **self.knobs())


DSL_KNOBS = ("snr_grid", "beta_scale", "noise_scale", "s_min", "s_max", "top_k", "cache_refresh")
REMASK_KNOBS = ("block_length", "remask_cache", "threshold", "cfg_scale",
                "confidence_eos_eot_inf")
KNOBS = DSL_KNOBS + REMASK_KNOBS
KNOB_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Request) if f.name in KNOBS}
REMASK_CACHES = ("none", "prefix", "dual")


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_knobs(sampler: str, **knobs) -> None:
    """One clear line for a sampler knob (:data:`KNOBS`, defaults :data:`KNOB_DEFAULTS`) out
    of range, or set away from its default for a sampler that does not use it
    (:data:`DSL_KNOBS`: the DSL samplers, ``noise_scale`` ``sde`` only;
    :data:`REMASK_KNOBS`: the remasking samplers)."""
    spec = get(sampler)
    k = {**KNOB_DEFAULTS, **knobs}
    require(set(knobs) <= set(KNOBS), f"unknown sampler option(s) {sorted(set(knobs) - set(KNOBS))}")
    foreign = REMASK_KNOBS if spec.needs_dsl else DSL_KNOBS
    changed = [n for n in foreign if k[n] != KNOB_DEFAULTS[n]]
    kind = "DSL-sampler" if not spec.needs_dsl else "remasking-sampler"
    require(not changed, f"{', '.join(changed)}: {kind} option(s), not used by {sampler}")
    require(k["snr_grid"] in schedules.SNR_GRIDS,
            f"snr_grid must be one of {schedules.SNR_GRIDS}, got {k['snr_grid']!r}")
    require(_finite(k["beta_scale"]) and k["beta_scale"] > 0,
            f"beta_scale must be a positive number, got {k['beta_scale']!r}")
    ns = k["noise_scale"]
    if ns is not None:
        require(_finite(ns) and ns >= 0, f"noise_scale must be a number >= 0, got {ns!r}")
        require(sampler == "sde", f"noise_scale is an option of sde only ({sampler} runs "
                "with noise scale 0)")
    s_min, s_max = k["s_min"], k["s_max"]
    require(_finite(s_min) and s_min > 0, f"s_min must be a positive number, got {s_min!r}")
    require(_finite(s_max) and s_max > s_min,
            f"s_max must be a number above s_min {s_min}, got {s_max!r}")
    if k["snr_grid"] == "sensitive":
        lo, hi = schedules.SENSITIVE_BREAKS[1:]
        require(s_min < lo, f"s_min must be below {lo:g} on the sensitive grid (its first "
                f"segment runs s_min -> {lo:g}), got {s_min}")
        require(s_max > hi, f"s_max must be above {hi:g} on the sensitive grid (its last "
                f"segment runs {hi:g} -> s_max), got {s_max}")
    top_k = k["top_k"]
    require(_int(top_k) and top_k >= 1, f"top_k must be an integer >= 1, got {top_k!r}")
    require(_int(k["cache_refresh"]) and k["cache_refresh"] >= 0,
            f"cache_refresh must be an integer >= 0 (1: exact, 0: never refreshed), got "
            f"{k['cache_refresh']!r}")
    bl = k["block_length"]
    require(bl is None or (_int(bl) and bl >= 1),
            f"block_length must be an integer >= 1, got {bl!r}")
    require(k["remask_cache"] in REMASK_CACHES,
            f"remask_cache must be one of {REMASK_CACHES}, got {k['remask_cache']!r}")
    th = k["threshold"]
    require(th is None or (_finite(th) and 0 < th <= 1),
            f"threshold must be a number in (0, 1], got {th!r}")
    require(_finite(k["cfg_scale"]) and k["cfg_scale"] >= 0,
            f"cfg_scale must be a number >= 0, got {k['cfg_scale']!r}")
    require(isinstance(k["confidence_eos_eot_inf"], bool),
            f"confidence_eos_eot_inf must be true or false, got {k['confidence_eos_eot_inf']!r}")


@dataclasses.dataclass(frozen=True)
class Sampler:
    name: str
    label: str  # the name in reports and plots
    summary: str  # one line for help texts
    needs_dsl: bool  # needs a DSLModel (noise embedding and converter)
    # (model, prompt_ids, mask, positions, keys, request) -> tokens [B, G] int32, traced
    # inside one jitted function; the model is a DSLModel when needs_dsl, else a LLaDA.
    run: Callable
    passes: Callable[[int, str], int]  # model forward passes per batch: (NFE, SNR grid)
    block_length: int | None = None  # remasking in blocks of this length (None: one block)

    def check(self, nfe, gen_length: int, block_length: int | None = None) -> None:
        """One clear line if this sampler cannot run ``nfe`` steps over ``gen_length`` (in
        blocks of ``block_length``, a request's, else the sampler's own)."""
        schedules.check_nfe(nfe)
        block_length = block_length if block_length is not None else self.block_length
        if block_length is not None and not self.needs_dsl:
            schedules.block_plan(gen_length, nfe, block_length)


def _dsl_passes(nfe: int, snr_grid: str) -> int:  # Heun steps of two passes, one final pass
    return 2 * schedules.grid_steps(snr_grid, nfe) + 1


def _dsl(name: str, label: str, summary: str) -> Sampler:
    return Sampler(name, label, summary, True, functools.partial(sde.run_batch, variant=name),
                   _dsl_passes)


def _remask(name: str, label: str, summary: str, mode: str, block_length: int | None = None,
            suppress_eos: bool = False) -> Sampler:
    run = functools.partial(remask.run_batch, mode=mode, block_length=block_length,
                            suppress_eos=suppress_eos)
    return Sampler(name, label, summary, False, run, lambda nfe, snr_grid: nfe, block_length)


REGISTRY: dict[str, Sampler] = {s.name: s for s in (
    _dsl("sde", "DSL-SDE", "DSL-SDE, N = NFE // 2 Heun steps + one final pass (needs a DSL "
         "checkpoint)"),
    _dsl("ode", "DSL-ODE", "DSL-SDE with noise scale 0, the authors' deterministic sampler, "
         "same budget (needs a DSL checkpoint)"),
    _dsl("pf_ode", "DSL-PF-ODE", "the probability-flow ODE (halved drift, not the paper's), "
         "same budget (needs a DSL checkpoint)"),
    _remask("remask", "LLaDA low-conf.", "LLaDA low-confidence remasking, one block, NFE steps",
            "low_confidence"),
    _remask("random", "LLaDA random", "LLaDA random remasking, one block, NFE steps", "random"),
    _remask("eos_block", "LLaDA EOS+block", "LLaDA low-confidence remasking, EOS suppressed, "
            f"blocks of {schedules.EOS_BLOCK_LENGTH}", "low_confidence",
            block_length=schedules.EOS_BLOCK_LENGTH, suppress_eos=True),
)}
SAMPLERS = tuple(REGISTRY)
DSL_SAMPLERS = tuple(n for n, s in REGISTRY.items() if s.needs_dsl)


def get(name: str) -> Sampler:
    """The sampler called ``name``, or one clear line naming the choices."""
    require(name in REGISTRY, f"sampler must be one of {SAMPLERS}, got {name!r}")
    return REGISTRY[name]


def dsl_hint() -> str:
    """The way out when a checkpoint lacks DSL parameters: the samplers that run without."""
    plain = "/".join(n for n, s in REGISTRY.items() if not s.needs_dsl)
    return f"use {plain} or a DSL checkpoint"


def forward_passes(sampler: str, nfe: int, snr_grid: str = "sensitive") -> int:
    """Model forward passes a run of ``sampler`` with budget ``nfe`` makes (per batch);
    ``snr_grid`` matters to the DSL samplers only (5 passes at NFE 2-3 on the sensitive grid)."""
    schedules.check_nfe(nfe)
    return get(sampler).passes(nfe, snr_grid)
