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
              halved: bool = False) -> jax.Array:
    """One Heun step of y from SNR s to s_next; xi ~ N(0, I) like y (zeros when ns = 0)."""
    ds = s_next - s
    dw = jnp.sqrt(jnp.abs(ds)) * xi
    g, g2 = ns / s, ns / s_next
    f = drift(x_hat_fn(y, s), y, s, halved)
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


def sde_sample(x_hat_fn: Callable, final_logits_fn: Callable, keys: jax.Array, grid: jax.Array,
               ns: float, gen_length: int, dim: int, halved: bool = False) -> jax.Array:
    """Run the whole DSL sampler; returns the argmax tokens [B, gen_length] int32.

    ``x_hat_fn(y, s)`` -> [B, G, d]; ``final_logits_fn(z)`` -> [B, G, V] for z = s_N y;
    ``grid`` [N + 1] float32 SNRs; ``keys`` one PRNG key per row; ``ns`` the noise scale
    (0: deterministic, no noise drawn); ``halved``: the probability-flow drift.
    """
    grid = jnp.asarray(grid, jnp.float32)
    n = grid.shape[0] - 1
    y = unit_start(keys, gen_length, dim)

    def body(i, y):
        xi = step_noise(keys, i, gen_length, dim) if ns else jnp.zeros_like(y)
        return heun_step(x_hat_fn, y, grid[i], grid[i + 1], xi, ns, halved)

    y = jax.lax.fori_loop(0, n, body, y)
    logits = final_logits_fn(grid[n] * y)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def run_batch(model, prompt_ids: jax.Array, mask: jax.Array, positions: jax.Array,
              keys: jax.Array, request, *, variant: str = "sde") -> jax.Array:
    """Response tokens [B, G] of a :class:`dsl_jax.dsl.DSLModel` for one left-padded batch
    (:mod:`dsl_jax.sampling.batch`): the prompt enters through wte, the response through
    the converter at beta_infer = ``request.beta_scale`` x beta; ``request``
    (:class:`dsl_jax.sampling.registry.Request`) gives the NFE, generation length, SNR grid
    and its ends, top-k and noise scale (None: the variant's); ``variant`` is a key of
    :data:`VARIANTS`."""
    llada = model.llada
    P = prompt_ids.shape[1]
    prompt_emb = llada.embed_ids(prompt_ids)
    E = model.noise_embed[...]

    def logits_of_z(z):
        h = model.embed_noisy(z, beta_scale=request.beta_scale).astype(prompt_emb.dtype)
        x = jnp.concatenate([prompt_emb, h], axis=1)
        hid = llada(inputs_embeds=x, attention_mask=mask, positions=positions, return_hidden=True)
        return llada.head(hid[:, P:])

    def x_hat_fn(y, s):
        return x_hat_from_logits(logits_of_z(s * y), E, request.top_k)

    nfe = request.nfe
    grid = schedules.snr_grid(request.snr_grid, schedules.heun_steps(nfe), request.s_min,
                              request.s_max)
    ns_of, halved = VARIANTS[variant]
    ns = ns_of(nfe) if request.noise_scale is None else request.noise_scale
    return sde_sample(x_hat_fn, logits_of_z, keys, grid.astype(np.float32), float(ns),
                      request.gen_length, E.shape[1], halved=halved)
