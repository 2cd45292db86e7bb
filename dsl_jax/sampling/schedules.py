"""Step schedules of the samplers (docs/method.md section 3), as plain numpy.

DSL-SDE / ODE:
- :func:`heun_steps`: N = NFE // 2 Heun steps (two forward passes each) plus one final
  argmax pass, so a run makes ``2 * (NFE // 2) + 1`` forward passes
  (:func:`dsl_jax.sampling.registry.forward_passes`), except on the sensitive grid at
  N = 1 (below).
- :func:`noise_scale`: ns by NFE: <= 8: 0.1; <= 16: 0.05; <= 32: 0.01; else 0.005.
- :func:`snr_grid`: the SNRs s_0 < ... < s_N. ``"sensitive"``: log-spaced
  0.01 -> 7 over n1 = max(1, floor(0.05 N)) steps, 7 -> 74 over n2 = max(1, floor(0.9 N))
  steps, 74 -> s_max over the remaining N - n1 - n2 steps (none when that is 0, so the grid
  then ends at 74; the rule of docs/method.md read literally). For N = 1 (NFE 2-3) the two
  fixed segments take one step each and the third none, as in the authors' code: the grid
  is [0.01, 7, 74], two Heun steps. ``"loglinear"``: log-spaced 0.01 -> s_max over N steps.

LLaDA remasking:
- :func:`transfer_counts`: tokens committed per step of one block, the block's masked
  count split evenly over its steps with the remainder going to the first steps.
- :func:`block_plan`: per step, how many tokens to commit and where the current block
  ends, for one block (``remask``/``random``), blocks of 32 (``eos_block``) or a
  request's ``block_length`` (overriding the sampler's). When NFE is
  not a multiple of the number of blocks, the first NFE % n_blocks blocks get one extra
  step, so the run makes exactly NFE forward passes; NFE below the number of blocks is an
  error. A generation length that is not a multiple of the block length gets a shorter
  last block.
"""

from __future__ import annotations

import math

import numpy as np

from dsl_jax.errors import require

SNR_MIN = 0.01
SNR_MAX = 100.0
SENSITIVE_BREAKS = (0.01, 7.0, 74.0)  # then s_max
SNR_GRIDS = ("sensitive", "loglinear")
EOS_BLOCK_LENGTH = 32


def check_nfe(nfe) -> None:
    require(isinstance(nfe, (int, np.integer)) and not isinstance(nfe, bool) and nfe >= 2,
            f"nfe must be an integer >= 2 (forward passes per sample), got {nfe!r}")


def heun_steps(nfe: int) -> int:
    """N = NFE // 2 Heun steps."""
    check_nfe(nfe)
    return nfe // 2


def noise_scale(nfe: int) -> float:
    """DSL-SDE's noise scale ns for an NFE budget."""
    check_nfe(nfe)
    if nfe <= 8:
        return 0.1
    if nfe <= 16:
        return 0.05
    if nfe <= 32:
        return 0.01
    return 0.005


def _logspace(a: float, b: float, steps: int) -> np.ndarray:
    """steps + 1 log-spaced points from a to b (inclusive, exactly), float64."""
    out = np.exp(np.linspace(math.log(a), math.log(b), steps + 1))
    out[0], out[-1] = a, b
    return out


def sensitive_segments(n: int) -> tuple[int, int, int]:
    """Steps (n1, n2, n3) of the sensitive grid's three log-spaced segments (n3 is -1 at
    n = 1: no third segment)."""
    n1 = max(1, math.floor(0.05 * n))
    n2 = max(1, math.floor(0.9 * n))
    return n1, n2, n - n1 - n2


def snr_grid(name: str, n_steps: int, s_min: float = SNR_MIN, s_max: float = SNR_MAX) -> np.ndarray:
    """The SNRs of an N-step DSL sampler run (float64): N + 1 of them, except the
    sensitive grid at N = 1, which is [s_min, 7, 74] (three)."""
    require(name in SNR_GRIDS, f"snr_grid must be one of {SNR_GRIDS}, got {name!r}")
    require(n_steps >= 1, f"the SNR grid needs at least one step, got {n_steps}")
    if name == "loglinear":
        return _logspace(s_min, s_max, n_steps)
    n1, n2, n3 = sensitive_segments(n_steps)
    a, b, c = SENSITIVE_BREAKS
    parts = [_logspace(s_min, b, n1), _logspace(b, c, n2)[1:]]
    if n3 > 0:
        parts.append(_logspace(c, s_max, n3)[1:])
    grid = np.concatenate(parts)
    assert len(grid) == max(n_steps, n1 + n2) + 1
    return grid


def grid_steps(name: str, nfe: int) -> int:
    """Heun steps a DSL sampler run with budget ``nfe`` on grid ``name`` makes: N = NFE // 2,
    but 2 on the sensitive grid at NFE 2-3."""
    return len(snr_grid(name, heun_steps(nfe))) - 1


def transfer_counts(masked: int, steps: int) -> np.ndarray:
    """LLaDA's per-step commit counts for a block of ``masked`` masked tokens."""
    require(steps >= 1, f"a block needs at least one step, got {steps}")
    counts = np.full(steps, masked // steps, np.int32)
    counts[: masked % steps] += 1
    return counts


def block_plan(gen_length: int, nfe: int, block_length: int | None = None):
    """(counts [NFE] int32, block_end [NFE] int32): per step, how many response tokens to
    commit and the response index where the current block ends (exclusive)."""
    check_nfe(nfe)
    require(gen_length > 0, f"gen_length must be positive, got {gen_length}")
    require(block_length is None or (isinstance(block_length, (int, np.integer))
                                     and not isinstance(block_length, bool) and block_length >= 1),
            f"block_length must be an integer >= 1, got {block_length!r}")
    block_length = gen_length if block_length is None else block_length
    n_blocks = -(-gen_length // block_length)
    require(nfe >= n_blocks,
            f"nfe {nfe} is below the number of blocks {n_blocks} (gen_length {gen_length} in "
            f"blocks of {block_length}); every block needs at least one step")
    counts, ends = [], []
    for b in range(n_blocks):
        start, end = b * block_length, min(gen_length, (b + 1) * block_length)
        steps = nfe // n_blocks + (1 if b < nfe % n_blocks else 0)
        counts.append(transfer_counts(end - start, steps))
        ends.append(np.full(steps, end, np.int32))
    return np.concatenate(counts).astype(np.int32), np.concatenate(ends).astype(np.int32)
