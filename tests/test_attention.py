"""dsl_jax.attention: the Pallas splash kernel (run in Pallas interpret mode on CPU) against
the XLA path and a float64 numpy evaluation of the equations, alone, sharded, in gradients
and inside the whole model (with a KV cache).

Tolerances: float32 everywhere (the tests' matmul precision is "highest"), O(1) values, at
most 384 keys: the two paths differ only in the order of float32 sums (the kernel's online
softmax over 128-key blocks, its q pre-scaled by 1/sqrt(Dh)), errors of a few 1e-7; 1e-5
(relative to the largest value for logits and gradients) is far below any masking or
scaling mistake (those change outputs by O(0.1)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsl_jax import attention, config, model, sharding
from dsl_jax.errors import UserError


def reference(q, k, v, key_mask):
    """float64 numpy: softmax(q k^T / sqrt(Dh)) v over each row's real keys, GQA by
    query head h -> kv head h // (H / K)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    H, K = q.shape[2], k.shape[2]
    k, v = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(np.asarray(key_mask)[:, None, None, :], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


def qkv(B, T, S, H, K, D, seed=0):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.standard_normal(s), jnp.float32)
                 for s in ((B, T, H, D), (B, S, K, D), (B, S, K, D)))


def left_padding(lengths, S):
    """Key mask [B, S] of rows left-padded to S with ``lengths`` real keys."""
    return jnp.asarray(np.arange(S)[None] >= S - np.asarray(lengths)[:, None])


def splash(q, k, v, m):
    return jax.jit(lambda *a: attention.splash_attend(*a, interpret=True))(q, k, v, m)


def xla(q, k, v, m):
    return jax.nn.dot_product_attention(q, k, v, mask=m[:, None, None, :], implementation="xla")


def test_splash_equals_xla_with_left_padding_gqa_and_a_cache():
    """T=100 queries over S=300 keys (a cache's 200 + their own 100), 4 query heads on 2 kv
    heads; neither length a multiple of the kernel's 128 blocks; rows from 300 real keys
    down to 1 (a key mask whose real keys all sit in the last block)."""
    q, k, v = qkv(4, 100, 300, 4, 2, 16)
    m = left_padding([300, 251, 130, 1], 300)
    want = reference(q, k, v, m)
    got, ref = np.asarray(splash(q, k, v, m)), np.asarray(xla(q, k, v, m))
    assert got.shape == (4, 100, 4, 16) and np.isfinite(got).all()
    np.testing.assert_allclose(ref, want, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The single-key row returns that key's value for every query and head.
    np.testing.assert_allclose(got[3], np.broadcast_to(np.repeat(np.asarray(v)[3, -1], 2, axis=0),
                                                       (100, 4, 16)), atol=1e-6)


def test_splash_blocks_and_no_mask():
    assert attention.splash_blocks(100) == (128, 128)
    assert attention.splash_blocks(2048 + 256) == (256, 2304)
    assert attention.splash_blocks(4096) == (512, 4096)
    assert attention.splash_blocks(384) == (128, 384)
    q, k, v = qkv(2, 256, 256, 2, 2, 32, seed=1)
    got = np.asarray(jax.jit(lambda *a: attention.splash_attend(*a, None, interpret=True))(q, k, v))
    np.testing.assert_allclose(got, reference(q, k, v, np.ones((2, 256), bool)), atol=1e-5)


def test_splash_sharded_over_batch_and_heads(mesh8):
    """Under a (fsdp=4, tensor=2) mesh the kernel runs per device in a shard_map (batch on
    fsdp, heads on tensor) and gives the unsharded result."""
    q, k, v = qkv(4, 40, 72, 4, 2, 16, seed=2)
    m = left_padding([72, 60, 33, 9], 72)
    with jax.set_mesh(mesh8):
        fn = jax.jit(lambda *a: attention.splash_attend(*a, interpret=True))
        prims = {e.primitive.name for e in fn.trace(q, k, v, m).jaxpr.eqns}
        got = np.asarray(fn(q, k, v, m))
    assert "shard_map" in prims
    np.testing.assert_allclose(got, reference(q, k, v, m), atol=1e-5)


def test_splash_gradients_equal_xla():
    """The kernel's backward (dq, dk, dv kernels) against XLA's autodiff: training uses it."""
    q, k, v = qkv(2, 64, 160, 4, 2, 16, seed=3)
    m = left_padding([160, 47], 160)
    w = jnp.asarray(np.random.default_rng(4).standard_normal((2, 64, 4, 16)), jnp.float32)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v, m) * w)

    got = jax.jit(jax.grad(loss(lambda *a: attention.splash_attend(*a, interpret=True)),
                           argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        r = np.asarray(r)
        assert np.abs(r).max() > 0.1
        np.testing.assert_allclose(np.asarray(g), r, atol=1e-5 * np.abs(r).max())
    # No gradient reaches the masked keys.
    assert np.abs(np.asarray(got[1])[1, :113]).max() == 0.0


def test_auto_is_the_dot_product_attention_off_tpu():
    """On CPU ``auto`` stays jax.nn.dot_product_attention; a TPU target (a mesh of TPU
    devices, compile-only ones included) picks splash: tests/test_launch.py's compile-check
    of a TPU topology checks that side."""
    assert attention.target_platform() == "cpu"
    assert attention.kernel_for("auto") == "auto" and attention.kernel_for("splash") == "splash"
    q, k, v = qkv(1, 8, 8, 2, 2, 8)
    for name, want in (("splash", True), ("xla", False), ("auto", False)):
        cfg = config.preset("tiny", attention=name)
        jaxpr = str(jax.make_jaxpr(lambda *a: attention.attend(*a, None, cfg))(q, k, v))
        assert ("pallas_call" in jaxpr) == want, name
    with pytest.raises(UserError, match="attention must be one of"):
        config.preset("tiny", attention="flash")


@pytest.mark.slow
def test_model_logits_with_splash_equal_xla(mesh1):
    """The tiny model (GQA: 4 query heads on 2 kv heads): left-padded prompts, then the
    response positions against the prompts' KV cache (S != T), with attention="splash"
    and "xla" (the sharded kernel: test_splash_sharded_over_batch_and_heads)."""
    cfg = config.preset("tiny", n_heads=4, n_kv_heads=2)
    ms = {a: model.create(cfg.replace(attention=a), mesh1, seed=3) for a in ("xla", "splash")}
    r = np.random.default_rng(5)
    P, R = 40, 24
    ids = jnp.asarray(r.integers(3, cfg.vocab_size, (4, P + R)), jnp.int32)
    mask = left_padding([40, 31, 12, 2], P)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    resp_pos = positions[:, -1:] + 1 + jnp.arange(R)[None]
    out = {}
    with jax.set_mesh(mesh1):
        for a, m in ms.items():
            def run(mm):
                logits, cache = mm(ids[:, :P], attention_mask=mask, positions=positions,
                                   return_kv=True)
                return logits, mm(ids[:, P:], positions=resp_pos, cache=cache)
            out[a] = [np.asarray(x) for x in nnx.jit(run)(m)]
    for got, want in zip(out["splash"], out["xla"]):
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
