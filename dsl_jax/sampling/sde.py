"""DSL-SDE with Heun steps, its deterministic form (the authors' ODE) and the
probability-flow ODE (docs/method.md section 3).

State y = z / s per response position (d = noise_dim dims), float32. With
x_hat(y, s) the model's posterior mean of the noise embedding,

    f(y, s) = (x_hat(y, s) - y) / s,   g(s) = ns / s          (sde; ode: ns = 0)
    f(y, s) = (x_hat(y, s) - y) / (2 s), g = 0                (pf_ode, not the paper's)

and one Heun step from s to s' with dW = sqrt(|s' - s|) xi:

    y~ = y + f(y, s) (s' - s) + g(s) dW
    y' = y + (f(y, s) + f(y~, s')) / 2 (s' - s) + (g(s) + g(s')) / 2 dW   (the same dW).

``ode`` is the authors' deterministic sampler: the DSL-SDE loop with noise scale 0.
x_hat is any function (y, s) -> [B, G, d]; :func:`x_hat_from_logits` turns logits into the
top-k posterior mean. Everything here is pure JAX: the loop is one ``lax.fori_loop``.

A property of these equations worth knowing: for the SDE drift, a Heun step from s to
r s contracts the deviation y - x_hat by exactly 1/r whatever r is, but the
probability-flow ODE's halved drift is not stable for large r. The sensitive grid's first
step is 0.01 -> 7 (r = 700) for N < 40, where a Heun step of the halved drift multiplies
the deviation by about -87; at NFE 4 (N = 2) even an oracle denoiser then ends far from
its target (tests use NFE >= 8 for ``pf_ode``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dsl_jax.sampling import schedules

TOP_K = 512
BETA_INFER_SCALE = 2.0  # beta_infer = 2 * beta


def x_hat_from_logits(logits: jax.Array, noise_embed: jax.Array, top_k: int = TOP_K) -> jax.Array:
    """sum_k p_k E[k] over the top-k probabilities of softmax(logits), renormalised.

    logits [..., V] (float32), noise_embed E [V, d] -> [..., d] float32.
    """
    logits = logits.astype(jnp.float32)
    k = min(top_k, logits.shape[-1])
    top, idx = jax.lax.top_k(logits, k)
    p = jax.nn.softmax(top, axis=-1)  # softmax over the kept entries = renormalised top-k
    e = jnp.take(noise_embed.astype(jnp.float32), idx, axis=0)  # [..., k, d]
    return jnp.einsum("...k,...kd->...d", p, e)


# variant -> (noise scale for an NFE budget, halved drift)
VARIANTS = {
    "sde": (lambda nfe: schedules.noise_scale(nfe), False),
    "ode": (lambda nfe: 0.0, False),  # the authors' deterministic sampler
    "pf_ode": (lambda nfe: 0.0, True),  # the probability-flow ODE (not the paper's)
}


def drift(x_hat: jax.Array, y: jax.Array, s, halved: bool = False) -> jax.Array:
    f = (x_hat - y) / s
    return f / 2 if halved else f


def heun_step(x_hat_fn: Callable, y: jax.Array, s, s_next, xi: jax.Array, ns: float,
              halved: bool = False, x_hat0: jax.Array | None = None) -> jax.Array:
    """One Heun step of y from SNR s to s_next; xi ~ N(0, I) like y (zeros when ns = 0).
    ``x_hat0``: x_hat(y, s) when already computed (then ``x_hat_fn`` runs once, at s_next)."""
    ds = s_next - s
    dw = jnp.sqrt(jnp.abs(ds)) * xi
    g, g2 = ns / s, ns / s_next
    f = drift(x_hat_fn(y, s) if x_hat0 is None else x_hat0, y, s, halved)
    y_tilde = y + f * ds + g * dw
    f2 = drift(x_hat_fn(y_tilde, s_next), y_tilde, s_next, halved)
    return y + 0.5 * (f + f2) * ds + 0.5 * (g + g2) * dw


def unit_start(keys: jax.Array, gen_length: int, dim: int) -> jax.Array:
    """y_0: one random unit vector per response position; keys [B] typed or [B, 2] raw."""
    def one(k):
        v = jax.random.normal(jax.random.fold_in(k, 0), (gen_length, dim), jnp.float32)
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    return jax.vmap(one)(keys)


def step_noise(keys: jax.Array, step, gen_length: int, dim: int) -> jax.Array:
    """xi for Heun step ``step`` (0-based), per row from that row's own key."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step + 1),
                                                (gen_length, dim), jnp.float32))(keys)


def refresh_steps(n: int, cache_refresh: int) -> list[int]:
    """The Heun steps (0-based, of ``n``) whose first evaluation is a refresh (a full
    pass that also recomputes the prompt's cache): every step for ``cache_refresh`` 1
    (where every evaluation is a full pass), step 0 alone for 0, else the multiples of
    ``cache_refresh``."""
    if cache_refresh == 1:
        return list(range(n))
    return [0] if cache_refresh == 0 else list(range(0, n, cache_refresh))


def sde_states(x_hat_fn: Callable, keys: jax.Array, grid: jax.Array, ns: float,
               gen_length: int, dim: int, halved: bool = False, *,
               refresh_fn: Callable | None = None, cache_refresh: int = 1):
    """The Heun loop from the start state; returns (y_N [B, G, d], the latest cache).

    ``x_hat_fn(y, s, cache)`` -> [B, G, d]: with ``cache`` None a full pass, else one
    against that cache. ``cache_refresh`` k (:func:`refresh_steps`): 1 (or no
    ``refresh_fn``): every evaluation is ``x_hat_fn(y, s, None)`` and the cache is None;
    k >= 2: the first evaluation of step j is ``refresh_fn(y, s)`` -> (x_hat, cache) when
    j % k == 0, every other evaluation is cached against the latest cache; 0: only step 0
    refreshes. The Heun steps and their noise do not depend on k. The loop is static:
    an outer ``lax.fori_loop`` over groups of k steps (a refresh step, then an inner
    ``fori_loop`` of k - 1 cached steps), then the remaining N mod k steps, so a cached
    evaluation costs only its own FLOPs under jit (no ``lax.cond``).
    """
    grid = jnp.asarray(grid, jnp.float32)
    n = grid.shape[0] - 1
    y = unit_start(keys, gen_length, dim)

    def xi_of(i, y):
        return step_noise(keys, i, gen_length, dim) if ns else jnp.zeros_like(y)

    if cache_refresh == 1 or refresh_fn is None or n == 0:
        def body(i, y):
            return heun_step(lambda y, s: x_hat_fn(y, s, None), y, grid[i], grid[i + 1],
                             xi_of(i, y), ns, halved)
        return jax.lax.fori_loop(0, n, body, y), None

    k = n if cache_refresh == 0 else min(int(cache_refresh), n)

    def step(i, y, cache, refresh: bool):
        x0 = None
        if refresh:
            x0, cache = refresh_fn(y, grid[i])
        cached = lambda y, s: x_hat_fn(y, s, cache)  # noqa: E731
        return heun_step(cached, y, grid[i], grid[i + 1], xi_of(i, y), ns, halved,
                         x_hat0=x0), cache

    def group(start, y, cache, size: int):  # steps start .. start + size - 1
        y, cache = step(start, y, cache, True)
        y = jax.lax.fori_loop(0, size - 1, lambda j, y: step(start + 1 + j, y, cache,
                                                             False)[0], y)
        return y, cache

    # The cache's shapes, for the loop carry (its first value is overwritten at once).
    shapes = jax.eval_shape(refresh_fn, y, grid[0])[1]
    cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    full, rest = divmod(n, k)
    y, cache = jax.lax.fori_loop(0, full, lambda g, c: group(g * k, *c, k), (y, cache))
    if rest:
        y, cache = group(full * k, y, cache, rest)
    return y, cache


def sde_sample(x_hat_fn: Callable, final_logits_fn: Callable, keys: jax.Array, grid: jax.Array,
               ns: float, gen_length: int, dim: int, halved: bool = False, *,
               refresh_fn: Callable | None = None, cache_refresh: int = 1) -> jax.Array:
    """Run the whole DSL sampler; returns the argmax tokens [B, gen_length] int32.

    ``x_hat_fn(y, s)`` -> [B, G, d]; ``final_logits_fn(z)`` -> [B, G, V] for z = s_N y;
    ``grid`` [N + 1] float32 SNRs; ``keys`` one PRNG key per row; ``ns`` the noise scale
    (0: deterministic, no noise drawn); ``halved``: the probability-flow drift.
    With a prompt cache (``refresh_fn`` given, ``cache_refresh`` != 1; :func:`sde_states`)
    ``x_hat_fn(y, s, cache)`` and ``final_logits_fn(z, cache)`` take the latest cache and
    the final pass is cached too.
    """
    if refresh_fn is None or cache_refresh == 1:
        y, _ = sde_states(lambda y, s, c: x_hat_fn(y, s), keys, grid, ns, gen_length, dim,
                          halved)
        logits = final_logits_fn(jnp.asarray(grid, jnp.float32)[-1] * y)
    else:
        y, cache = sde_states(x_hat_fn, keys, grid, ns, gen_length, dim, halved,
                              refresh_fn=refresh_fn, cache_refresh=cache_refresh)
        logits = final_logits_fn(jnp.asarray(grid, jnp.float32)[-1] * y, cache)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


class Evaluator:
    """The model evaluations of one left-padded batch (:mod:`dsl_jax.sampling.batch`):
    logits [B, G, V] (float32) at the response positions for noisy states z [B, G, d].
    The prompt enters through wte, the response through the converter at beta_infer =
    ``beta_scale`` x beta; the converter and the LM head run on response positions only.

    - :meth:`full`: prompt and response through every layer (the exact evaluation);
    - :meth:`refresh`: the same pass, also returning the prompt's :class:`KVCache` (its
      keys and values per layer, computed with this response state);
    - :meth:`cached`: the response positions alone, attending to a prompt cache as well
      (equal to :meth:`full` when the cache was computed with the same z).

    A prompt cache holds keys and values [layers, B, P, kv_heads, head_dim] in the compute
    dtype: 2 x layers x kv_heads x head_dim x (2 bytes in bfloat16) per prompt token, 0.5
    MiB for LLaDA-8B (a batch of 16 prompts of 768 tokens: 6 GiB), split over the batch's
    devices and, by kv heads, over ``tensor``.
    """

    def __init__(self, model, prompt_ids, mask, positions, beta_scale: float = BETA_INFER_SCALE):
        from dsl_jax.sharding import constrain
        self.model, self.llada = model, model.llada
        self.P = prompt_ids.shape[1]
        self.mask, self.positions = mask, positions
        self.prompt_emb = self.llada.embed_ids(prompt_ids)
        self.beta_scale = beta_scale
        self._constrain = constrain

    def _embed(self, z):
        z = self._constrain(z, ("batch", "length", "noise"))
        return self.model.embed_noisy(z, beta_scale=self.beta_scale).astype(self.prompt_emb.dtype)

    def full(self, z):
        x = jnp.concatenate([self.prompt_emb, self._embed(z)], axis=1)
        hid = self.llada(inputs_embeds=x, attention_mask=self.mask, positions=self.positions,
                         return_hidden=True)
        return self.llada.head(hid[:, self.P:])

    def refresh(self, z):
        from dsl_jax.model import KVCache
        x = jnp.concatenate([self.prompt_emb, self._embed(z)], axis=1)
        hid, kv = self.llada(inputs_embeds=x, attention_mask=self.mask,
                             positions=self.positions, return_hidden=True, return_kv=True)
        c = kv.take(0, self.P)
        names = ("layers", "batch", "length", "kv_heads", "head_dim")
        cache = KVCache(self._constrain(c.k, names), self._constrain(c.v, names), c.mask)
        return self.llada.head(hid[:, self.P:]), cache

    def cached(self, z, cache):
        P = self.P
        hid = self.llada(inputs_embeds=self._embed(z), attention_mask=self.mask[:, P:],
                         positions=self.positions[:, P:], cache=cache, return_hidden=True)
        return self.llada.head(hid)


def run_batch(model, prompt_ids: jax.Array, mask: jax.Array, positions: jax.Array,
              keys: jax.Array, request, *, variant: str = "sde") -> jax.Array:
    """Response tokens [B, G] of a :class:`dsl_jax.dsl.DSLModel` for one left-padded batch
    (:mod:`dsl_jax.sampling.batch`; evaluations: :class:`Evaluator`); ``request``
    (:class:`dsl_jax.sampling.registry.Request`) gives the NFE, generation length, SNR grid
    and its ends, beta scale, top-k, noise scale (None: the variant's) and
    ``cache_refresh`` k: 1, every evaluation a full pass (exact); k >= 2, the prompt's
    keys/values are recomputed (a full pass) at the first evaluation of every k-th Heun
    step and every other evaluation, the final pass included, runs the response positions
    only against them; 0, recomputed at the first evaluation only (:func:`sde_states`).
    ``variant`` is a key of :data:`VARIANTS`."""
    ev = Evaluator(model, prompt_ids, mask, positions, request.beta_scale)
    E = model.noise_embed[...]

    def x_hat(logits):
        return x_hat_from_logits(logits, E, request.top_k)

    def x_hat_fn(y, s, cache=None):
        z = s * y
        return x_hat(ev.full(z) if cache is None else ev.cached(z, cache))

    def refresh_fn(y, s):
        logits, cache = ev.refresh(s * y)
        return x_hat(logits), cache

    def final_logits_fn(z, cache=None):
        return ev.full(z) if cache is None else ev.cached(z, cache)

    nfe = request.nfe
    grid = schedules.snr_grid(request.snr_grid, schedules.heun_steps(nfe), request.s_min,
                              request.s_max)
    ns_of, halved = VARIANTS[variant]
    ns = ns_of(nfe) if request.noise_scale is None else request.noise_scale
    k = int(getattr(request, "cache_refresh", 1))
    return sde_sample(x_hat_fn, final_logits_fn, keys, grid.astype(np.float32), float(ns),
                      request.gen_length, E.shape[1], halved=halved,
                      refresh_fn=None if k == 1 else refresh_fn, cache_refresh=k)
