"""LLaDA's own sampler: iterative unmasking with low-confidence or random remasking,
with LLaDA's and Fast-dLLM's options (docs/method.md section 3).

Response positions start as the mask id. Each step runs the model on the current
response, picks x0 = argmax of the logits (temperature 0) or a Gumbel-max sample, scores
each still-masked position inside the current block by the softmax probability of x0
(``low_confidence``) or a uniform number (``random``), and commits the ``counts[step]``
best; committed tokens never change. Positions at or beyond the block's end are never
candidates (semi-autoregressive blocks). Options:

- ``suppress_eos_id`` (LLaDA's ``logits_eos_inf``, the "EOS+block" variant): that logit is
  -inf before x0 is picked.
- ``zero_conf_ids`` (LLaDA's ``confidence_eos_eot_inf``): x0 is picked as usual, but the
  confidence softmax runs with these logits (EOS, EoT) at -inf, so a position whose x0 is
  one of them scores 0 and is committed only when a step needs more positions than score
  above 0.
- ``threshold`` (Fast-dLLM's confidence-aware parallel decoding): instead of the step
  counts, a step commits every candidate whose confidence is at least the threshold, and
  the most confident one whatever its confidence; a block runs until it has no mask left
  (at most its length in steps; NFE then does not set the steps). The steps are a
  ``lax.while_loop``; each row keeps its own block and step count, so its tokens do not
  depend on its batch-mates.
- ``cached`` (Fast-dLLM's KV caches, :class:`Cached`): the first step of each block is a
  full pass, which also gives the keys/values of every position; the block's other steps
  run only the block and what follows it (``prefix``: attending to the cached prompt and
  earlier blocks) or only the block (``dual``: attending to the cached prefix and suffix).
  ``refresh_every`` k > 0 (a debug setting) recomputes the cache from the current state
  before every k-th cached step; with k = 1 the result equals the uncached sampler's.
- classifier-free guidance is done by :func:`run_batch` inside the model calls.

Randomness: step i of a row draws from ``fold_in(row key, i)``; Gumbel noise and random
confidences are drawn for the whole response and sliced, so a cached step draws what the
uncached step would.

Gumbel-max precision: LLaDA draws its noise in float64 and computes
exp(l) / (-log U)^T. JAX's float64 needs the process-wide ``jax_enable_x64`` flag; it
cannot be switched on for one region of a jitted function (tried: ``jax.enable_x64``
inside a trace fails to lower mixed-width reductions), and switching it on globally
would change the default dtypes of the whole model. We therefore take the argmax of the
equivalent log form l - T log(-log U) in float32: the same argmax (log is monotone),
without the overflow of exp(l) that float64 guards against in LLaDA; U is a float32
uniform (24-bit resolution), which only truncates the extreme Gumbel tail.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dsl_jax import config as config_lib
from dsl_jax.sampling import schedules

MODES = ("low_confidence", "random")
CACHES = ("none", "prefix", "dual")


def sample_x0(logits: jax.Array, key, temperature: float, offset: int = 0,
              total: int | None = None) -> jax.Array:
    """argmax (temperature 0) or Gumbel-max sample of float32 logits [W, V] -> [W].
    ``offset``/``total``: the logits are rows offset:offset+W of a [total, V] whole, and
    the noise is that whole's draw sliced."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    W, V = logits.shape
    total = W if total is None else total
    u = jax.random.uniform(key, (total, V), jnp.float32, minval=jnp.finfo(jnp.float32).tiny,
                           maxval=1.0)[offset:offset + W]
    return jnp.argmax(logits - temperature * jnp.log(-jnp.log(u)), axis=-1)


def commit_mask(confidence: jax.Array, k) -> jax.Array:
    """Boolean [G]: the k highest-confidence entries (ties: lower index first)."""
    order = jnp.argsort(-confidence, stable=True)
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    return ranks < k


class Cached(NamedTuple):
    """The model calls of a cached run. ``full(x [B, G])`` -> (logits [B, G, V], KVCache of
    every prompt and response position); ``part(x_part [B, W], lo, cache)`` -> logits
    [B, W, V] of response positions lo:lo+W attending also to ``cache``."""
    kind: str  # "prefix" or "dual"
    full: Callable
    part: Callable


def _blocks(counts: np.ndarray, ends: np.ndarray):
    """[(start, end, counts of its steps, index of its first step)] of a block plan."""
    out, start, first = [], 0, 0
    for e in sorted(set(int(v) for v in ends)):
        steps = np.asarray(counts)[np.asarray(ends) == e]
        out.append((start, e, steps, first))
        start, first = e, first + len(steps)
    return out


def remask_sample(logits_fn: Callable, keys: jax.Array, counts, block_end, gen_length: int,
                  mask_id: int, mode: str = "low_confidence", temperature: float = 0.0,
                  suppress_eos_id: int | None = None, *, threshold: float | None = None,
                  zero_conf_ids: tuple[int, ...] = (), cached: Cached | None = None,
                  refresh_every: int = 0) -> jax.Array:
    """Tokens [B, gen_length] int32. ``logits_fn(x [B, G] int32)`` -> logits [B, G, V]
    (unused with ``cached``); ``counts``/``block_end`` [steps] int32 from
    :func:`schedules.block_plan` (with ``threshold``, only the blocks are used)."""
    assert mode in MODES, mode
    counts = np.asarray(counts, np.int32)
    block_end = np.asarray(block_end, np.int32)
    G = gen_length
    B = keys.shape[0]
    zero_conf_ids = tuple(int(i) for i in zero_conf_ids)

    def row(x_r, logits_r, key_r, i, k, end, lo):
        """One row's step on the logits [W, V] of positions lo:lo+W (``k`` commits, or the
        threshold rule when k is None); positions at or beyond ``end`` are not candidates."""
        W = logits_r.shape[0]
        k_sample, k_conf = jax.random.split(jax.random.fold_in(key_r, i))
        x0 = sample_x0(logits_r, k_sample, temperature, lo, G).astype(jnp.int32)
        if mode == "low_confidence":
            lc = logits_r.at[:, list(zero_conf_ids)].set(-jnp.inf) if zero_conf_ids else logits_r
            p = jax.nn.softmax(lc, axis=-1)
            conf = jnp.take_along_axis(p, x0[:, None], axis=-1)[:, 0]
        else:
            conf = jax.random.uniform(k_conf, (G,), jnp.float32)[lo:lo + W]
        xw = x_r[lo:lo + W]
        cand = (xw == mask_id) & (lo + jnp.arange(W) < end)
        conf = jnp.where(cand, conf, -jnp.inf)
        if k is None:
            take = cand & ((conf >= threshold) | commit_mask(conf, 1))
        else:
            take = cand & commit_mask(conf, k)
        return x_r.at[lo:lo + W].set(jnp.where(take, x0, xw))

    def step(x, logits, i, k, end, lo=0):
        """x [B, G] after one step; ``i`` [B] the rows' step indices, ``end`` [B] or a
        scalar, ``logits`` [B, W, V] of positions lo:lo+W."""
        logits = logits.astype(jnp.float32)
        if suppress_eos_id is not None:
            logits = logits.at[..., suppress_eos_id].set(-jnp.inf)
        i = jnp.broadcast_to(jnp.asarray(i, jnp.int32), (B,))
        end = jnp.broadcast_to(jnp.asarray(end, jnp.int32), (B,))
        return jax.vmap(lambda a, b, c, d, e: row(a, b, c, d, k, e, lo))(x, logits, keys, i, end)

    x = jnp.full((B, G), mask_id, jnp.int32)
    if cached is None and threshold is None:  # LLaDA's loop: one fori_loop over the plan
        c, e = jnp.asarray(counts), jnp.asarray(block_end)

        def body(i, x):
            return step(x, logits_fn(x), i, c[i], e[i])

        return jax.lax.fori_loop(0, len(counts), body, x)

    if cached is None:  # threshold: each row in the block of its first masked position
        bounds = jnp.asarray(sorted(set(int(v) for v in block_end)), jnp.int32)
        pos = jnp.arange(G)

        def cond(state):
            x, _, n = state
            return jnp.any(x == mask_id) & (n < G)

        def body(state):
            x, i, n = state
            masked = x == mask_id
            first = jnp.min(jnp.where(masked, pos, G), axis=1)
            end = bounds[jnp.minimum(jnp.searchsorted(bounds, first, side="right"),
                                     len(bounds) - 1)]
            new = step(x, logits_fn(x), i, None, end)
            return new, i + jnp.any(masked, axis=1).astype(jnp.int32), n + 1

        zeros = jnp.zeros((B,), jnp.int32)
        return jax.lax.while_loop(cond, body, (x, zeros, jnp.int32(0)))[0]

    assert cached.kind in ("prefix", "dual"), cached.kind
    i_row = jnp.zeros((B,), jnp.int32)  # threshold: each row's steps so far
    for start, end, bcounts, first in _blocks(counts, block_end):
        stop = G if cached.kind == "prefix" else end

        def cut(kv, start=start, end=end):
            P = kv.k.shape[2] - G
            if cached.kind == "prefix":
                return kv.take(0, P + start)
            return type(kv).concat([kv.take(0, P + start), kv.take(P + end, P + G)])

        def cached_step(x, kv, j, i, k, start=start, end=end, stop=stop):
            """A cached step: j is the step's index within the block (for refreshing)."""
            if refresh_every > 0:
                kv = jax.lax.cond(j % refresh_every == 0, lambda: cut(cached.full(x)[1]),
                                  lambda: kv)
            logits = cached.part(x[:, start:stop], start, kv)
            return step(x, logits, i, k, end, lo=start), kv

        logits, kv = cached.full(x)  # the block's first step: a full pass, the cache refreshed
        kv = cut(kv)
        if threshold is None:
            x = step(x, logits, first, int(bcounts[0]), end)
            c = jnp.asarray(bcounts)

            def body(j, state, c=c, first=first, cached_step=cached_step):
                x, kv = state
                return cached_step(x, kv, j, first + j, c[j])

            x, kv = jax.lax.fori_loop(1, len(bcounts), body, (x, kv))
            continue
        active = jnp.any(x[:, start:end] == mask_id, axis=1)
        x = step(x, logits, i_row, None, end)
        i_row = i_row + active.astype(jnp.int32)

        def cond(state, start=start, end=end):
            x, _, _, j = state
            return jnp.any(x[:, start:end] == mask_id) & (j < end - start)

        def body(state, start=start, end=end, cached_step=cached_step):
            x, kv, i, j = state
            active = jnp.any(x[:, start:end] == mask_id, axis=1)
            x, kv = cached_step(x, kv, j, i, None)
            return x, kv, i + active.astype(jnp.int32), j + 1

        x, kv, i_row, _ = jax.lax.while_loop(cond, body, (x, kv, i_row, jnp.int32(1)))
    return x


def eot_token_id(cfg) -> int:
    """The EoT id of a model: LLaDA's ``<|eot_id|>`` when its vocabulary holds it, else the
    id dsl-jax's small tokenizers give it (the special tokens first, in
    ``dsl_jax.tokenizer.SPECIAL_TOKENS`` order)."""
    if cfg.vocab_size > config_lib.EOT_ID:
        return config_lib.EOT_ID
    from dsl_jax.tokenizer import EOT, SPECIAL_TOKENS
    return SPECIAL_TOKENS.index(EOT)


def run_batch(llada, prompt_ids: jax.Array, mask: jax.Array, positions: jax.Array,
              keys: jax.Array, request, *, mode: str, block_length: int | None = None,
              suppress_eos: bool = False, refresh_every: int = 0) -> jax.Array:
    """Response tokens [B, G] of a LLaDA for one left-padded batch
    (:mod:`dsl_jax.sampling.batch`). ``request`` (:class:`dsl_jax.sampling.registry.Request`)
    gives the NFE, generation length, temperature and the remasking knobs:
    ``block_length`` (None: this sampler's ``block_length``; None there: one block),
    ``remask_cache``, ``threshold``, ``cfg_scale`` (LLaDA's unsupervised classifier-free
    guidance: a second set of rows with every prompt position set to the mask id, and
    logits u + (scale + 1)(c - u)) and ``confidence_eos_eot_inf``. ``suppress_eos``: the
    EOS logit at -inf. ``refresh_every``: see :func:`remask_sample` (debug)."""
    cfg = llada.cfg
    B, P = prompt_ids.shape
    G = request.gen_length
    bl = request.block_length if request.block_length is not None else block_length
    scale = float(request.cfg_scale)
    if scale > 0:  # rows [conditional; unconditional]
        prompt_rows = jnp.concatenate([prompt_ids, jnp.full_like(prompt_ids, cfg.mask_token_id)])
        mask, positions = (jnp.concatenate([a, a]) for a in (mask, positions))
    else:
        prompt_rows = prompt_ids

    def rows(x):
        return jnp.concatenate([x, x]) if scale > 0 else x

    def guide(logits):
        if scale == 0:
            return logits
        c, u = logits[:B], logits[B:]
        return u + (scale + 1) * (c - u)

    def run(x, **kw):
        ids = jnp.concatenate([prompt_rows, rows(x)], axis=1)
        return llada(ids, attention_mask=mask, positions=positions, return_hidden=True, **kw)

    def logits_fn(x):
        return guide(llada.head(run(x)[:, P:]))

    def full(x):
        hid, kv = run(x, return_kv=True)
        return guide(llada.head(hid[:, P:])), kv

    def part(x_part, lo, kv):
        hi = lo + x_part.shape[1]
        hid = llada(rows(x_part), attention_mask=mask[:, P + lo:P + hi],
                    positions=positions[:, P + lo:P + hi], return_hidden=True, cache=kv)
        return guide(llada.head(hid))

    cached = None if request.remask_cache == "none" else Cached(request.remask_cache, full, part)
    zero = (cfg.eos_token_id, eot_token_id(cfg)) if request.confidence_eos_eot_inf else ()
    counts, ends = schedules.block_plan(G, request.nfe, bl)
    return remask_sample(logits_fn, keys, counts, ends, G, cfg.mask_token_id, mode,
                         request.temperature, cfg.eos_token_id if suppress_eos else None,
                         threshold=request.threshold, zero_conf_ids=zero, cached=cached,
                         refresh_every=refresh_every)
