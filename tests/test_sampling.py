"""Samplers (docs/method.md section 3): schedules, the Heun update against float64 numpy,
oracle runs of DSL-SDE and remasking, forward-pass budgets, batch invariance, 8 devices,
bad input, and the ``dsl-jax sample`` command."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsl_jax import config, dsl
from dsl_jax.errors import UserError
from dsl_jax.sampling import batch as batching
from dsl_jax.sampling import forward_passes, generate, schedules
from dsl_jax.sampling.remask import remask_sample, sample_x0
from dsl_jax.sampling.sde import VARIANTS, heun_step, sde_sample, unit_start, x_hat_from_logits


# ---------------------------------------------------------------- schedules


def design_noise_scale(nfe):  # docs/method.md: <=8: 0.1; <=16: 0.05; <=32: 0.01; else 0.005
    return 0.1 if nfe <= 8 else 0.05 if nfe <= 16 else 0.01 if nfe <= 32 else 0.005


@pytest.mark.parametrize("nfe", range(4, 129))
def test_snr_grids_and_noise_scale_match_design(nfe):
    n = nfe // 2
    assert schedules.heun_steps(nfe) == n
    assert forward_passes("sde", nfe) == 2 * n + 1
    assert forward_passes("ode", nfe) == forward_passes("pf_ode", nfe) == 2 * n + 1
    assert forward_passes("remask", nfe) == nfe
    assert schedules.noise_scale(nfe) == design_noise_scale(nfe)

    grid = schedules.snr_grid("sensitive", n)
    assert grid.shape == (n + 1,) and np.all(np.diff(grid) > 0)
    n1, n2 = max(1, math.floor(0.05 * n)), max(1, math.floor(0.9 * n))
    n3 = n - n1 - n2
    # Breakpoints: 0.01 at 0, 7 after n1 steps, 74 after n1 + n2, s_max = 100 at the end.
    expect = [(0, 0.01), (n1, 7.0), (n1 + n2, 74.0)] + ([(n, 100.0)] if n3 > 0 else [])
    for i, v in expect:
        assert grid[i] == pytest.approx(v, rel=1e-12)
    # Log-spacing: constant ratio inside each segment.
    for a, b in [(0, n1), (n1, n1 + n2)] + ([(n1 + n2, n)] if n3 > 0 else []):
        ratios = grid[a + 1:b + 1] / grid[a:b]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    lin = schedules.snr_grid("loglinear", n)
    np.testing.assert_allclose(lin, 0.01 * (100 / 0.01) ** (np.arange(n + 1) / n), rtol=1e-12)


def test_schedule_spot_values_and_small_n():
    np.testing.assert_allclose(schedules.snr_grid("sensitive", 8)[[0, 1, 8]], [0.01, 7, 74])
    g = schedules.snr_grid("sensitive", 32)  # n1 = 1, n2 = 28, n3 = 3
    np.testing.assert_allclose(g[[0, 1, 29, 32]], [0.01, 7, 74, 100])
    # N = 1 (NFE 2-3): the authors' rule gives n1 = n2 = 1 and n3 = -1 (no third segment).
    assert schedules.snr_grid("sensitive", 1).tolist() == [0.01, 7.0, 74.0]
    np.testing.assert_allclose(schedules.snr_grid("loglinear", 1), [0.01, 100])
    for nfe in (2, 3):
        assert schedules.grid_steps("sensitive", nfe) == 2
        assert forward_passes("sde", nfe) == forward_passes("ode", nfe) == 5
        assert forward_passes("sde", nfe, "loglinear") == 3
    assert forward_passes("remask", 3) == 3
    assert [schedules.noise_scale(k) for k in (8, 9, 16, 17, 32, 33)] == [0.1, 0.05, 0.05, 0.01,
                                                                          0.01, 0.005]


def test_llada_transfer_counts_and_block_plan():
    assert schedules.transfer_counts(10, 4).tolist() == [3, 3, 2, 2]
    assert schedules.transfer_counts(3, 5).tolist() == [1, 1, 1, 0, 0]
    counts, ends = schedules.block_plan(128, 16)
    assert counts.tolist() == [8] * 16 and ends.tolist() == [128] * 16
    counts, ends = schedules.block_plan(64, 5, 32)  # 5 steps over 2 blocks: 3 + 2
    assert counts.tolist() == [11, 11, 10, 16, 16]
    assert ends.tolist() == [32, 32, 32, 64, 64]
    counts, ends = schedules.block_plan(40, 2, 32)  # a shorter last block
    assert counts.tolist() == [32, 8] and ends.tolist() == [32, 40]
    with pytest.raises(UserError, match="nfe 3 is below the number of blocks 4"):
        schedules.block_plan(128, 3, 32)


# ---------------------------------------------------------------- DSL-SDE numerics


def test_heun_step_equals_float64_numpy():
    r = np.random.default_rng(0)
    B, G, d = 2, 5, 7
    A = r.standard_normal((d, d)) * 0.5
    b = r.standard_normal(d)
    y = r.standard_normal((B, G, d))
    xi = r.standard_normal((B, G, d))
    s, s2, ns = 0.7, 2.3, 0.05

    def x_hat_np(y, s):
        return np.tanh(y @ A + s * b)

    def x_hat_jx(y, s):
        return jnp.tanh(y @ jnp.asarray(A, jnp.float32) + s * jnp.asarray(b, jnp.float32))

    def ref(halved, nsx):  # docs/method.md section 3, float64
        k = 0.5 if halved else 1.0
        dw = math.sqrt(abs(s2 - s)) * xi
        f = k * (x_hat_np(y, s) - y) / s
        g, g2 = nsx / s, nsx / s2
        yt = y + f * (s2 - s) + g * dw
        f2 = k * (x_hat_np(yt, s2) - yt) / s2
        return y + (f + f2) / 2 * (s2 - s) + (g + g2) / 2 * dw

    for halved, nsx in [(False, ns), (False, 0.0), (True, 0.0)]:
        got = heun_step(x_hat_jx, jnp.asarray(y, jnp.float32), s, s2,
                        jnp.asarray(xi, jnp.float32), nsx, halved=halved)
        np.testing.assert_allclose(np.asarray(got), ref(halved, nsx), rtol=2e-5, atol=2e-5)
    # the three variants really differ
    assert np.max(np.abs(ref(False, ns) - ref(False, 0.0))) > 1e-2
    assert np.max(np.abs(ref(False, 0.0) - ref(True, 0.0))) > 1e-2


def test_x_hat_is_top_k_posterior_mean():
    r = np.random.default_rng(1)
    V, d, k = 40, 6, 5
    logits = r.standard_normal((3, V)) * 3
    E = r.standard_normal((V, d))
    got = np.asarray(x_hat_from_logits(jnp.asarray(logits, jnp.float32),
                                       jnp.asarray(E, jnp.float32), top_k=k))
    for i in range(3):
        top = np.argsort(-logits[i])[:k]
        p = np.exp(logits[i, top] - logits[i, top].max())
        p /= p.sum()
        np.testing.assert_allclose(got[i], p @ E[top], rtol=1e-5, atol=1e-6)


def test_dsl_sde_with_oracle_denoiser_returns_target():
    V, d, B, G = 512, 100, 3, 48
    E = jnp.asarray(dsl.noise_embedding(V, d, 0))
    target = jnp.asarray(np.random.default_rng(2).integers(0, V, (B, G)), jnp.int32)
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(B)])
    oracle_x_hat = lambda y, s: E[target]  # noqa: E731  the true token's embedding
    nearest = lambda z: z @ E.T  # noqa: E731  final pass: the Bayes posterior of a uniform prior
    for nfe, variant in [(2, "sde"), (4, "sde"), (16, "sde"), (4, "ode"), (16, "pf_ode")]:
        ns_of, halved = VARIANTS[variant]
        n = schedules.heun_steps(nfe)
        out = sde_sample(oracle_x_hat, nearest, keys, schedules.snr_grid("sensitive", n),
                         ns_of(nfe), G, d, halved=halved)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(target))
    # Without the denoiser's pull (x_hat = 0) the answer is not the target.
    out = sde_sample(lambda y, s: jnp.zeros_like(y), nearest, keys,
                     schedules.snr_grid("sensitive", 8), 0.05, G, d)
    assert np.mean(np.asarray(out) == np.asarray(target)) < 0.1


def test_ode_is_the_authors_heun_loop_with_noise_scale_zero():
    """``ode``: the authors' loop (docs/method.md section 3) with ns = 0, state for state
    against float64 numpy; ``sde`` with ns = 0 gives the same states; ``pf_ode`` does not."""
    r = np.random.default_rng(5)
    B, G, d, V = 2, 6, 5, 9
    A = r.standard_normal((d, d)) * 0.5
    b = r.standard_normal(d)
    E = r.standard_normal((V, d))
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(B)])
    nfe = 8
    grid = schedules.snr_grid("sensitive", schedules.heun_steps(nfe))  # [0.01, 7, ..., 74]
    grid = grid.astype(np.float32).astype(np.float64)  # the SNRs the sampler runs on

    def run(ns, halved):
        seen = []

        def x_hat(y, s):  # a stub denoiser; records every state it is asked about
            jax.debug.callback(lambda a, t: seen.append((np.asarray(a), float(t))), y, s)
            return jnp.tanh(y @ jnp.asarray(A, jnp.float32) + s * jnp.asarray(b, jnp.float32))

        final = lambda z: z @ jnp.asarray(E, jnp.float32).T  # noqa: E731
        out = sde_sample(x_hat, final, keys, grid.astype(np.float32), ns, G, d, halved=halved)
        return np.asarray(out), seen

    # The authors' loop in float64: f = (x_hat - y) / s, Heun, no noise; argmax of s_N y E^T.
    y = np.asarray(unit_start(keys, G, d), np.float64)
    want = []
    for s, s2 in zip(grid[:-1], grid[1:]):
        f = (np.tanh(y @ A + s * b) - y) / s
        yt = y + f * (s2 - s)
        f2 = (np.tanh(yt @ A + s2 * b) - yt) / s2
        want += [(y, s), (yt, s2)]
        y = y + 0.5 * (f + f2) * (s2 - s)
    want_tokens = np.argmax(grid[-1] * y @ E.T, axis=-1)

    assert VARIANTS["ode"][0](nfe) == 0.0 and VARIANTS["ode"][1] is False
    ode_tokens, ode_states = run(*[f(nfe) if callable(f) else f for f in VARIANTS["ode"]])
    assert len(ode_states) == len(want) == 2 * schedules.heun_steps(nfe)
    for (got, gs), (ref, rs) in zip(ode_states, want):
        assert gs == pytest.approx(rs, rel=1e-6)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)  # float32 vs float64
    np.testing.assert_array_equal(ode_tokens, want_tokens)
    sde0_tokens, sde0_states = run(0.0, False)  # sde with its noise scale set to 0
    np.testing.assert_array_equal(sde0_tokens, ode_tokens)
    for (a, _), (c, _) in zip(sde0_states, ode_states):
        np.testing.assert_array_equal(a, c)
    _, pf_states = run(0.0, True)  # the probability-flow ODE: another trajectory
    assert np.max(np.abs(pf_states[-1][0] - ode_states[-1][0])) > 1e-2
    _, sde_states = run(schedules.noise_scale(nfe), False)  # with noise: another trajectory
    assert np.max(np.abs(sde_states[-1][0] - ode_states[-1][0])) > 1e-3


# ---------------------------------------------------------------- remasking oracle


def simulate_remask(conf, target, counts, ends, V, mask_id):
    """numpy LLaDA: commit the counts[i] most confident masked in-block positions;
    the oracle's token at a step is (target + number already committed) % (V - 1)."""
    B, G = target.shape
    x = np.full((B, G), mask_id)
    history = [x.copy()]
    for c, e in zip(counts, ends):
        new = x.copy()
        for b in range(B):
            shift = int(np.sum(x[b] != mask_id))
            cand = [j for j in range(G) if x[b, j] == mask_id and j < e]
            cand.sort(key=lambda j: -conf[b, j])
            for j in cand[:c]:
                new[b, j] = (target[b, j] + shift) % (V - 1)
        x = new
        history.append(x.copy())
    return x, history


@pytest.mark.parametrize("gen_length,nfe,block", [(20, 6, None), (64, 5, 32)])
def test_remasking_commits_llada_counts_most_confident_first(gen_length, nfe, block):
    V, B, mask_id = 50, 2, 49
    r = np.random.default_rng(3)
    target = r.integers(0, V - 1, (B, gen_length))
    conf = r.permutation(B * gen_length).reshape(B, gen_length) / (B * gen_length) * 5 + 1
    seen = []

    def logits_fn(x):  # oracle: x0 depends on how many tokens are committed (to catch re-commits)
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), x)
        shift = jnp.sum(x != mask_id, axis=1, keepdims=True)
        tok = (jnp.asarray(target) + shift) % (V - 1)  # never the mask id
        return jax.nn.one_hot(tok, V) * jnp.asarray(conf, jnp.float32)[..., None]

    counts, ends = schedules.block_plan(gen_length, nfe, block)
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(B)])
    out = np.asarray(jax.jit(lambda k: remask_sample(logits_fn, k, counts, ends, gen_length,
                                                     mask_id))(keys))
    want, history = simulate_remask(conf, target, counts, ends, V, mask_id)
    np.testing.assert_array_equal(out, want)
    assert len(seen) == nfe  # one forward pass per step
    states = seen + [out]
    for i in range(nfe):
        before, after = states[i], states[i + 1]
        np.testing.assert_array_equal(before, history[i])
        newly = (before == mask_id) & (after != mask_id)
        assert newly.sum(axis=1).tolist() == [counts[i]] * B  # LLaDA's count per step
        kept = before != mask_id
        np.testing.assert_array_equal(after[kept], before[kept])  # never re-masked or changed
        assert not np.any(newly & (np.arange(gen_length) >= ends[i]))  # inside the block
    assert not np.any(out == mask_id)


def test_random_remasking_and_eos_suppression():
    V, B, G, mask_id, eos = 30, 2, 16, 29, 1
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(B)])
    logits = jnp.zeros((B, G, V)).at[..., eos].set(5.0).at[..., 7].set(4.0)
    counts, ends = schedules.block_plan(G, 4)
    seen = []

    def logits_fn(x):
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), x)
        return logits

    out = np.asarray(remask_sample(logits_fn, keys, counts, ends, G, mask_id, "random"))
    assert np.all(out == eos)  # EOS is the argmax
    states = seen + [out]
    for i in range(4):
        newly = (states[i] == mask_id) & (states[i + 1] != mask_id)
        assert newly.sum(axis=1).tolist() == [counts[i]] * B
    # Random confidence: the order of commits differs between rows (own keys).
    assert not np.array_equal(states[1][0] != mask_id, states[1][1] != mask_id)
    out = np.asarray(remask_sample(lambda x: logits, keys, counts, ends, G, mask_id,
                                   suppress_eos_id=eos))
    assert np.all(out == 7)  # EOS suppressed: the next best token


def test_gumbel_max_samples_softmax_of_logits_over_temperature():
    logits = jnp.asarray([[1.0, 0.0, -1.0, 0.5]] * 40000)
    for temp in (0.5, 1.0):
        x = np.asarray(sample_x0(logits, jax.random.PRNGKey(0), temp))
        freq = np.bincount(x, minlength=4) / len(x)
        want = np.asarray(jax.nn.softmax(logits[0] / temp))
        np.testing.assert_allclose(freq, want, atol=0.01)
    assert np.all(np.asarray(sample_x0(logits, jax.random.PRNGKey(0), 0.0)) == 0)


# ---------------------------------------------------------------- the real (tiny) model


@pytest.fixture(scope="module")
def tiny_dsl():
    from dsl_jax.sharding import make_mesh
    cfg = config.preset("tiny")
    return dsl.create_dsl(cfg, dsl.DSLConfig(noise_dim=16), make_mesh(devices=jax.devices()[:1]))


PROMPT_LENGTHS = (10, 40, 3, 25)


def tiny_prompts():
    r = np.random.default_rng(4)
    return [r.integers(6, 512, n).tolist() for n in PROMPT_LENGTHS]


@pytest.mark.parametrize("sampler", ["sde", "random"])
def test_batch_invariance_and_eight_devices(tiny_dsl, sampler, mesh8):
    prompts = tiny_prompts()
    seeds = [11, 12, 13, 14]
    batch = generate(tiny_dsl, prompts, sampler=sampler, nfe=4, gen_length=24, seeds=seeds)
    assert len(batch) == 4 and all(len(o) == 24 for o in batch)
    # Prompt 0 alone (a shorter bucket, a batch of one) gives the same tokens.
    alone = generate(tiny_dsl, prompts[:1], sampler=sampler, nfe=4, gen_length=24, seeds=seeds[:1])
    assert alone[0] == batch[0]
    if sampler == "sde":  # keys from (seed, index): batches of 2 with one bucket give the same
        by_index = generate(tiny_dsl, prompts, sampler=sampler, nfe=4, gen_length=24, seed=5)
        in_pairs = generate(tiny_dsl, prompts, sampler=sampler, nfe=4, gen_length=24, seed=5,
                            batch_size=2, bucket=64)
        assert in_pairs == by_index
        assert by_index != batch  # the seed matters
    # 8 fake devices (batch over fsdp=4, parameters over fsdp x tensor) give the same output.
    on8 = generate(tiny_dsl, prompts, sampler=sampler, nfe=4, gen_length=24, seeds=seeds,
                   mesh=mesh8)
    assert on8 == batch


def test_ode_sampler_equals_sde_with_noise_scale_zero(tiny_dsl, monkeypatch):
    """On the tiny model: ``ode`` gives ``sde``'s tokens and every forward pass's input
    when ``sde``'s noise scale is 0; the real ``sde`` does not."""
    from dsl_jax import model as model_mod
    from dsl_jax import sampling

    seen = []
    original = model_mod.LLaDA.hidden_states

    def recorded(self, x, *a, **k):
        jax.debug.callback(lambda v: seen.append(np.asarray(v)), x)
        return original(self, x, *a, **k)

    monkeypatch.setattr(model_mod.LLaDA, "hidden_states", recorded)
    prompts = tiny_prompts()[:2]

    def run(sampler):
        monkeypatch.setattr(sampling, "_JIT_CACHE", {})
        seen.clear()
        out = generate(tiny_dsl, prompts, sampler=sampler, nfe=4, gen_length=16, seed=3)
        return out, list(seen)

    ode, ode_passes = run("ode")
    sde, sde_passes = run("sde")
    monkeypatch.setattr(schedules, "noise_scale", lambda nfe: 0.0)
    sde0, sde0_passes = run("sde")
    assert sde0 == ode and len(sde0_passes) == len(ode_passes) == 5
    for a, b in zip(sde0_passes, ode_passes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ode_passes[0], sde_passes[0])  # same start state
    assert not np.array_equal(sde_passes[-1], ode_passes[-1])  # the noise moves the rest


def test_shared_seed_draws_do_not_depend_on_example_ids(tiny_dsl):
    a, b, c = tiny_prompts()[:3]
    for sampler in ("sde", "random"):
        kw = dict(sampler=sampler, nfe=4, gen_length=16, seed=9, batch_size=3, bucket=64)
        # Two sets of example ids: prompt b is example 1 of one and example 0 of the other.
        one = generate(tiny_dsl, [a, b], shared_seed=True, **kw)
        two = generate(tiny_dsl, [b, c, a], shared_seed=True, **kw)
        assert one[1] == two[0] and one[0] == two[2]
        # Every example starts from the key of the seed itself (the same prompt: the same output).
        alone = generate(tiny_dsl, [b], seeds=[9], **kw)
        assert alone[0] == one[1] == generate(tiny_dsl, [b, b], shared_seed=True, **kw)[1]
        # Without it, the draws follow the example's index.
        plain = generate(tiny_dsl, [b, b], **kw)
        assert plain[0] != plain[1]
    assert np.array_equal(batching.row_key(9, 0, shared_seed=True),
                          batching.row_key(9, 5, shared_seed=True))
    with pytest.raises(UserError, match="seeds and shared_seed exclude each other"):
        generate(tiny_dsl, [a], sampler="sde", nfe=4, gen_length=8, seeds=[1], shared_seed=True)


def test_forward_passes_are_exactly_the_budget(tiny_dsl, monkeypatch):
    from dsl_jax import model as model_mod
    from dsl_jax import sampling

    calls = []
    original = model_mod.LLaDA.hidden_states

    def counted(self, x, *a, **k):
        jax.debug.callback(lambda: calls.append(1))
        return original(self, x, *a, **k)

    monkeypatch.setattr(model_mod.LLaDA, "hidden_states", counted)
    monkeypatch.setattr(sampling, "_JIT_CACHE", {})
    prompts = tiny_prompts()[:2]
    for sampler, nfe, want in [("sde", 5, 5), ("ode", 4, 5), ("sde", 3, 5), ("remask", 3, 3),
                               ("eos_block", 3, 3)]:
        calls.clear()
        out = generate(tiny_dsl, prompts, sampler=sampler, nfe=nfe, gen_length=40,
                       batch_size=2)
        assert len(calls) == want == forward_passes(sampler, nfe), sampler
        assert len(out) == 2 and all(len(o) == 40 for o in out)
        if sampler in ("remask", "eos_block"):  # every position committed, none re-masked
            assert all(t != tiny_dsl.cfg.mask_token_id for o in out for t in o)
        if sampler == "eos_block":
            assert all(t != tiny_dsl.cfg.eos_token_id for o in out for t in o)


def test_bad_input_one_line_errors(tiny_dsl):
    p = [[6, 7, 8]]
    with pytest.raises(UserError, match=r"nfe must be an integer >= 2"):
        generate(tiny_dsl, p, sampler="sde", nfe=1, gen_length=8)
    with pytest.raises(UserError, match="gen_length must be a positive integer, got 0"):
        generate(tiny_dsl, p, sampler="remask", nfe=4, gen_length=0)
    with pytest.raises(UserError, match="250 prompt tokens \\+ gen_length 8 exceed the model's "
                                        "maximum sequence length 256"):
        generate(tiny_dsl, [[6] * 250], sampler="sde", nfe=4, gen_length=8)
    with pytest.raises(UserError, match="needs a model with DSL parameters"):
        generate(tiny_dsl.llada, p, sampler="sde", nfe=4, gen_length=8)
    with pytest.raises(UserError, match="sampler must be one of"):
        generate(tiny_dsl, p, sampler="greedy", nfe=4, gen_length=8)
    with pytest.raises(UserError, match="token id 512 is out of range"):
        generate(tiny_dsl, [[6, 512]], sampler="remask", nfe=4, gen_length=8)
    with pytest.raises(UserError, match="nfe 2 is below the number of blocks 3"):
        generate(tiny_dsl, p, sampler="eos_block", nfe=2, gen_length=70)


def test_sample_command_end_to_end(tiny_dsl, tmp_path, capsys, monkeypatch):
    from dsl_jax import checkpoint, tokenizer
    from dsl_jax.cli import main

    dsl_ckpt, plain = str(tmp_path / "dsl"), str(tmp_path / "plain")
    checkpoint.save_model(dsl_ckpt, tiny_dsl)
    checkpoint.save_model(plain, tiny_dsl.llada)
    texts = ["the quick brown fox jumps over the lazy dog"] * 20 + ["summaries are short"] * 20
    tokenizer.train_small(texts, vocab_size=512, path=str(tmp_path / "dsl" / "tokenizer.json"))
    assert type(checkpoint.load(dsl_ckpt, kind="dsl")).__name__ == "DSLModel"
    assert type(checkpoint.load(plain, kind="auto")).__name__ == "LLaDA"
    with pytest.raises(UserError, match="no DSL parameters"):
        checkpoint.load(plain, kind="dsl")

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the fox"}) + "\n" + json.dumps("a dog") + "\n")
    out = tmp_path / "out.jsonl"
    rc = main(["sample", "--ckpt", dsl_ckpt, "--sampler", "sde", "--nfe", "4", "--gen-length",
               "16", "--prompts-file", str(prompts), "--out", str(out), "--no-progress",
               "--mesh", "fsdp=1,data=-1"])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the fox", "a dog"]
    assert all(len(r["token_ids"]) == 16 and isinstance(r["output"], str) for r in rows)
    tok = tokenizer.Tokenizer.from_file(dsl_ckpt)
    assert rows[0]["output"] == tok.decode(rows[0]["token_ids"])

    capsys.readouterr()
    rc = main(["sample", "--ckpt", plain, "--tokenizer", dsl_ckpt, "--sampler", "sde",
               "--prompt", "hi"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "has no DSL parameters" in err
    # --shared-seed: the same prompt twice gives the same draws, hence the same tokens.
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps("the fox") + "\n" + json.dumps("the fox") + "\n")
    for flag, equal in [([], False), (["--shared-seed"], True)]:
        rc = main(["sample", "--ckpt", dsl_ckpt, "--sampler", "sde", "--nfe", "4",
                   "--gen-length", "16", "--prompts-file", str(same), "--out", str(out),
                   "--no-progress", "--mesh", "fsdp=1,data=-1", *flag])
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert rc == 0 and (rows[0]["token_ids"] == rows[1]["token_ids"]) == equal
    capsys.readouterr()

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(checkpoint, "load", no_load)  # every bad request fails before the load
    for bad, msg in [(["--nfe", "1"], "nfe must be"), (["--gen-length", "0"], "--gen-length"),
                     (["--sampler", "eos_block", "--nfe", "2", "--gen-length", "70"],
                      "nfe 2 is below the number of blocks 3")]:
        rc = main(["sample", "--ckpt", dsl_ckpt, "--prompt", "hi", *bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and msg in err


# ---------------------------------------------------------------- the DSL knobs


def test_dsl_knobs_defaults_are_todays_and_each_reaches_the_sampler(tiny_dsl, monkeypatch):
    """Each knob of ``generate`` reaches the loop as given (grid, noise scale, beta, top-k
    recorded at trace time; the first pass's state has norm s_min); the defaults equal the
    paper's values given explicitly."""
    from dsl_jax import sampling
    from dsl_jax.sampling import sde as sde_mod

    seen = {}
    orig_sample, orig_xhat = sde_mod.sde_sample, sde_mod.x_hat_from_logits
    orig_embed = dsl.DSLModel.embed_noisy

    def sample_spy(x_hat_fn, final_fn, keys, grid, ns, *a, **k):
        seen.update(grid=np.asarray(grid, np.float64), ns=ns)
        return orig_sample(x_hat_fn, final_fn, keys, grid, ns, *a, **k)

    def xhat_spy(logits, e, top_k=sde_mod.TOP_K):
        seen["top_k"] = top_k
        return orig_xhat(logits, e, top_k)

    def embed_spy(self, z, beta_scale=1.0):
        seen["beta"] = beta_scale
        jax.debug.callback(lambda v: seen.setdefault("z", []).append(np.asarray(v)), z)
        return orig_embed(self, z, beta_scale=beta_scale)

    monkeypatch.setattr(sde_mod, "sde_sample", sample_spy)
    monkeypatch.setattr(sde_mod, "x_hat_from_logits", xhat_spy)
    monkeypatch.setattr(dsl.DSLModel, "embed_noisy", embed_spy)
    prompts = tiny_prompts()[:2]

    def run(sampler="sde", **knobs):
        monkeypatch.setattr(sampling, "_JIT_CACHE", {})
        seen.clear()
        out = generate(tiny_dsl, prompts, sampler=sampler, nfe=4, gen_length=16, seed=3, **knobs)
        return out, dict(seen)

    default, d = run()
    # NFE 4: N = 2, sensitive n1 = n2 = 1, n3 = 0: [0.01, 7, 74]; ns 0.1; beta x2; top-512.
    np.testing.assert_allclose(d["grid"], [0.01, 7, 74], rtol=1e-6)
    assert (d["ns"], d["beta"], d["top_k"]) == (0.1, 2.0, 512)
    explicit, _ = run(snr_grid="sensitive", s_min=0.01, s_max=100.0, beta_scale=2.0,
                      noise_scale=0.1, top_k=512)
    assert explicit == default
    for sampler in ("ode", "pf_ode"):  # the others keep noise scale 0 and the same knobs
        assert run(sampler)[1]["ns"] == 0.0

    out, s = run(snr_grid="loglinear", s_min=1.0, s_max=100.0)
    np.testing.assert_allclose(s["grid"], [1, 10, 100], rtol=1e-6)  # log-spaced 1 -> 100
    first = np.linalg.norm(s["z"][0], axis=-1)  # z = s_0 y_0, y_0 unit: |z| = s_min
    np.testing.assert_allclose(first, 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(d["z"][0], axis=-1), 0.01, rtol=1e-5)
    _, s = run(s_min=0.5)
    np.testing.assert_allclose(s["grid"], [0.5, 7, 74], rtol=1e-6)
    _, s = run(snr_grid="sensitive", s_max=300.0)  # unused at N = 2 (no third segment) ...
    np.testing.assert_allclose(s["grid"], [0.01, 7, 74], rtol=1e-6)
    monkeypatch.setattr(sampling, "_JIT_CACHE", {})
    seen.clear()
    generate(tiny_dsl, prompts, sampler="sde", nfe=80, gen_length=16, s_max=300.0)
    assert seen["grid"][-1] == pytest.approx(300.0, rel=1e-6)  # ... the end at N = 40
    out, s = run(noise_scale=0.3)
    assert s["ns"] == 0.3 and out != default
    _, s = run(beta_scale=1.0)
    assert s["beta"] == 1.0 and not np.array_equal(s["z"][1], d["z"][1])
    out, s = run(top_k=1)
    assert s["top_k"] == 1 and not np.array_equal(s["z"][1], d["z"][1])


def test_x_hat_top_k_one_is_the_argmax_embedding():
    logits = jnp.array([[0.1, 2.0, -1.0, 0.5]])
    E = jnp.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(x_hat_from_logits(logits, E, 1), [[2.0, 3.0]])
    p = np.exp([2.0, 0.5]) / np.exp([2.0, 0.5]).sum()  # top-2: rows 1 and 3, renormalised
    np.testing.assert_allclose(x_hat_from_logits(logits, E, 2), [p @ np.array([[2, 3], [6, 7]])],
                               rtol=1e-6)


@pytest.mark.parametrize("knobs, message", [
    (dict(beta_scale=0.0), "beta_scale must be a positive number, got 0.0"),
    (dict(noise_scale=-0.1), "noise_scale must be a number >= 0"),
    (dict(s_min=0.0), "s_min must be a positive number"),
    (dict(s_min=8.0), "s_min must be below 7 on the sensitive grid"),
    (dict(s_max=50.0), "s_max must be above 74 on the sensitive grid"),
    (dict(snr_grid="loglinear", s_min=5.0, s_max=2.0), "s_max must be a number above s_min 5.0"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(snr_grid="cosine"), "snr_grid must be one of"),
])
def test_dsl_knob_bad_values_one_line(tiny_dsl, knobs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        generate(tiny_dsl, [[6, 7]], sampler="sde", nfe=4, gen_length=8, **knobs)


def test_dsl_knobs_on_samplers_that_do_not_use_them(tiny_dsl):
    with pytest.raises(UserError, match=r"noise_scale is an option of sde only \(ode runs"):
        generate(tiny_dsl, [[6, 7]], sampler="ode", nfe=4, gen_length=8, noise_scale=0.1)
    with pytest.raises(UserError, match="top_k, beta_scale|beta_scale, top_k"):
        generate(tiny_dsl, [[6, 7]], sampler="remask", nfe=4, gen_length=8, top_k=3,
                 beta_scale=1.0)


def test_sample_command_knob_flags(tiny_dsl, tmp_path, capsys, monkeypatch):
    """The flags reach generate as the knobs (absent flags: not passed, today's defaults);
    a bad one is one line naming the flag, before the model is loaded."""
    from dsl_jax import checkpoint, tokenizer
    from dsl_jax import sampling
    from dsl_jax.cli import main

    ckpt = str(tmp_path / "dsl")
    checkpoint.save_model(ckpt, tiny_dsl)
    tokenizer.train_small(["the quick brown fox"] * 20, vocab_size=512,
                          path=str(tmp_path / "dsl" / "tokenizer.json"))
    calls = []
    real = sampling.generate
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    base = ["sample", "--ckpt", ckpt, "--prompt", "the fox", "--nfe", "4", "--gen-length", "8",
            "--no-progress", "--mesh", "fsdp=1,data=-1"]
    assert main(base) == 0
    assert not set(calls[-1]) & {"snr_grid", "s_min", "s_max", "beta_scale", "noise_scale",
                                 "top_k"}
    assert main(base + ["--snr-grid", "loglinear", "--s-min", "0.1", "--s-max", "50",
                        "--beta-scale", "1.5", "--noise-scale", "0.2", "--top-k", "7"]) == 0
    assert {k: calls[-1][k] for k in ("snr_grid", "s_min", "s_max", "beta_scale", "noise_scale",
                                      "top_k")} == dict(snr_grid="loglinear", s_min=0.1,
                                                        s_max=50.0, beta_scale=1.5,
                                                        noise_scale=0.2, top_k=7)
    capsys.readouterr()
    monkeypatch.setattr(checkpoint, "load", lambda *a, **k: 1 / 0)
    for bad, msg in [(["--s-max", "20"], "--s-max must be above 74 on the sensitive grid"),
                     (["--sampler", "pf_ode", "--noise-scale", "0.1"],
                      "--noise-scale is an option of sde only (pf_ode runs"),
                     (["--sampler", "remask", "--top-k", "4"], "--top-k: DSL-sampler option(s)"),
                     (["--beta-scale", "-1"], "--beta-scale must be a positive number")]:
        assert main(base + bad) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and msg in err, err


def test_sweep_knob_fields():
    """The eval config's knob fields: defaults give no knob away from the paper's (old cell
    fingerprints stay valid), set ones reach the DSL samplers only, bad ones are one line."""
    from dsl_jax.evaluation import sweep
    from dsl_jax.sampling.registry import DSL_KNOBS, KNOB_DEFAULTS, REMASK_KNOBS

    s = sweep.Settings.from_config({"samplers": "sde,ode,remask"})
    assert s.knobs("sde") == {k: v for k, v in KNOB_DEFAULTS.items() if k in DSL_KNOBS
                              and k != "noise_scale"}
    # The default prompt cache is recorded (cells of the exact sampler stay apart).
    assert s.changed_knobs("sde") == {"cache_refresh": 8} and s.changed_knobs("remask") == {}
    assert sweep.Settings.from_config({"samplers": "sde", "cache_refresh": "1"}
                                      ).changed_knobs("sde") == {}
    assert s.knobs("remask") == {k: v for k, v in KNOB_DEFAULTS.items() if k in REMASK_KNOBS}
    s = sweep.Settings.from_config({"samplers": "sde,ode,remask", "noise_scale": "0.02",
                                    "top_k": "64", "snr_grid": "loglinear"})
    assert s.changed_knobs("sde") == {"noise_scale": 0.02, "top_k": 64, "snr_grid": "loglinear",
                                      "cache_refresh": 8}
    assert s.changed_knobs("ode") == {"top_k": 64, "snr_grid": "loglinear", "cache_refresh": 8}
    assert s.changed_knobs("remask") == {}
    s = sweep.Settings.from_config({"samplers": "sde,remask", "threshold": "0.9",
                                    "remask_cache": "dual", "cache_refresh": "4"})
    assert s.changed_knobs("remask") == {"threshold": 0.9, "remask_cache": "dual"}
    assert s.changed_knobs("sde") == {"cache_refresh": 4}
    for bad, msg in [({"s_min": "9"}, "config s_min must be below 7 on the sensitive grid"),
                     ({"noise_scale": "lots"}, "config noise_scale: expected a number"),
                     ({"beta_scale": "0"}, "config beta_scale must be a positive number"),
                     ({"threshold": "high"}, "config threshold: expected a number"),
                     ({"samplers": "remask", "threshold": "1.5"},
                      "config threshold must be a number in"),
                     ({"samplers": "remask", "remask_cache": "all"},
                      "config remask_cache must be one of"),
                     ({"cache_refresh": "-1"}, "config cache_refresh must be an integer >= 0")]:
        with pytest.raises(UserError, match=msg):
            sweep.Settings.from_config({"samplers": "sde", **bad} if "samplers" not in bad
                                       else bad)


# ---------------------------------------------------------------- DSL-SDE's prompt cache


def test_prompt_cache_schedule_equals_float64_numpy():
    """``sde_states`` with a stand-in model whose x_hat depends on the cache (the state at
    the latest refresh): k = 1 every evaluation full; k >= 2 a refresh at the first
    evaluation of steps 0, k, 2k, ...; 0 at step 0 only; every other evaluation against
    the latest cache; against a float64 numpy loop of docs/method.md's rule."""
    from dsl_jax.sampling.sde import refresh_steps, sde_states, step_noise

    r = np.random.default_rng(2)
    B, G, d, n = 2, 3, 5, 5
    A, C = r.standard_normal((d, d)) * 0.4, r.standard_normal((d, d)) * 0.8
    b = r.standard_normal(d)
    grid = np.geomspace(0.5, 20.0, n + 1)
    keys = jax.random.split(jax.random.PRNGKey(3), B)
    ns = 0.1
    y0 = np.asarray(unit_start(keys, G, d), np.float64)
    xis = [np.asarray(step_noise(keys, i, G, d), np.float64) for i in range(n)]

    def f_np(y, s, c):
        return np.tanh(y @ A + c @ C + s * b)

    def f_jx(y, s, c):
        return jnp.tanh(y @ jnp.asarray(A, jnp.float32) + c @ jnp.asarray(C, jnp.float32)
                        + s * jnp.asarray(b, jnp.float32))

    calls = []

    def x_hat_fn(y, s, cache):  # a full pass sees its own state as the "prompt's" input
        calls.append("full" if cache is None else "cached")
        return f_jx(y, s, y if cache is None else cache)

    def refresh_fn(y, s):
        calls.append("refresh")
        return f_jx(y, s, y), y

    def reference(k):
        y, c = y0, None
        refresh = set(refresh_steps(n, k))
        for j in range(n):
            s, s2 = grid[j], grid[j + 1]
            if k == 1 or j in refresh:
                c = y
            dw = math.sqrt(s2 - s) * xis[j]
            f = (f_np(y, s, c) - y) / s
            yt = y + f * (s2 - s) + ns / s * dw
            f2 = (f_np(yt, s2, yt if k == 1 else c) - yt) / s2
            y = y + (f + f2) / 2 * (s2 - s) + (ns / s + ns / s2) / 2 * dw
        return y, c

    assert refresh_steps(5, 1) == [0, 1, 2, 3, 4] and refresh_steps(5, 0) == [0]
    assert refresh_steps(5, 2) == [0, 2, 4] and refresh_steps(5, 3) == [0, 3]
    got = {}
    for k, traced in [(1, ["full"]), (0, ["refresh", "cached"]), (2, ["refresh", "cached"]),
                      (3, ["refresh", "cached"]), (7, ["refresh", "cached"])]:
        calls.clear()
        y, c = jax.jit(lambda: sde_states(x_hat_fn, keys, grid, ns, G, d, refresh_fn=refresh_fn,
                                          cache_refresh=k))()
        assert set(calls) == set(traced), (k, calls)
        want_y, want_c = reference(min(k, n) if k else 0)
        np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-4, atol=1e-5)
        if k != 1:
            np.testing.assert_allclose(np.asarray(c), want_c, rtol=1e-4, atol=1e-5)
        got[k] = np.asarray(y)
    np.testing.assert_array_equal(got[7], got[0])  # k >= N: one refresh, as k = 0
    for k in (0, 2, 3):  # the stale cache really changes the trajectory here
        assert np.max(np.abs(got[k] - got[1])) > 1e-2


def _tiny_batch(cfg, lengths, gen_length, seed=0, P=None):
    r = np.random.default_rng(seed)
    prompts = [r.integers(6, cfg.vocab_size, n).tolist() for n in lengths]
    keys = [batching.row_key(0, i) for i in range(len(prompts))]
    P = P or batching.bucket_length(max(lengths))
    return batching.make_batch(prompts, keys, gen_length, cfg.pad_token_id, len(prompts), P)


def test_cached_pass_equals_the_full_pass(tiny_dsl):
    """A response-only pass against the prompt cache of the same state gives the full
    pass's logits (left-padded rows of different lengths); a cache of another state or of
    another prompt gives other logits (the cache is really read)."""
    from dsl_jax.sampling.sde import Evaluator

    cfg = tiny_dsl.cfg
    G = 12
    b = _tiny_batch(cfg, (40, 17), G)
    other = _tiny_batch(cfg, (40, 17), G, seed=1)
    r = np.random.default_rng(5)
    z, z2 = (jnp.asarray(r.standard_normal((2, G, 16)) * 3, jnp.float32) for _ in range(2))

    @jax.jit
    def run(ids, mask, pos, ids2):
        ev = Evaluator(tiny_dsl, ids, mask, pos)
        full = ev.full(z)
        ref_logits, cache = ev.refresh(z)
        _, stale = ev.refresh(z2)
        _, foreign = Evaluator(tiny_dsl, ids2, mask, pos).refresh(z)
        return (full, ref_logits, ev.cached(z, cache), ev.cached(z, stale),
                ev.cached(z, foreign), cache)

    full, ref_logits, cached, stale, foreign, cache = run(b.prompt_ids, b.attention_mask,
                                                          b.positions, other.prompt_ids)
    P = b.prompt_ids.shape[1]
    assert cache.k.shape == (cfg.n_layers, 2, P, cfg.n_kv_heads, cfg.head_dim)
    np.testing.assert_array_equal(np.asarray(cache.mask), b.attention_mask[:, :P])
    np.testing.assert_array_equal(np.asarray(ref_logits), np.asarray(full))
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.asarray(stale) - np.asarray(full))) > 1e-5
    assert np.max(np.abs(np.asarray(foreign) - np.asarray(full))) > 1e-3


def test_cache_refresh_passes_and_tokens(tiny_dsl, monkeypatch):
    """The passes each k makes (lengths P + G for a full pass or G for a cached one, in
    order), k = 1 equal to the uncached sampler's tokens exactly, k >= N equal to k = 0."""
    from dsl_jax import model as model_mod
    from dsl_jax import sampling

    seen = []
    original = model_mod.LLaDA.hidden_states

    def recorded(self, x, *a, cache=None, **k):
        tag = ("cached" if cache is not None else "full", x.shape[1])
        jax.debug.callback(lambda: seen.append(tag), ordered=True)
        return original(self, x, *a, cache=cache, **k)

    prompts = tiny_prompts()[:2]  # 10 and 40 tokens: P = 48
    plain = generate(tiny_dsl, prompts, sampler="sde", nfe=8, gen_length=16, seed=3,
                     cache_refresh=1)  # no pass recorded: the uncached sampler
    default = generate(tiny_dsl, prompts, sampler="sde", nfe=8, gen_length=16, seed=3)
    monkeypatch.setattr(model_mod.LLaDA, "hidden_states", recorded)
    out = {}
    F, C = ("full", 64), ("cached", 16)
    for k, want in [(1, [F] * 9), (2, [F, C, C, C, F, C, C, C, C]), (3, [F, C, C, C, C, C, F, C, C]),
                    (0, [F] + [C] * 8), (4, [F] + [C] * 8), (9, [F] + [C] * 8)]:
        monkeypatch.setattr(sampling, "_JIT_CACHE", {})
        seen.clear()
        out[k] = generate(tiny_dsl, prompts, sampler="sde", nfe=8, gen_length=16, seed=3,
                          cache_refresh=k)
        assert seen == want, (k, seen)
    assert out[1] == plain and default == out[0]  # the default k = 8 >= N = 4: once
    assert out[4] == out[9] == out[0]
    assert out[2] != out[1] or out[0] != out[1]  # the approximation is not a no-op


def test_cache_refresh_flops(tiny_dsl):
    """Matmul FLOPs of the jitted batch (loop trip counts included) at prompt >> response:
    k = 1 makes 2N + 1 full passes, k = 0 one and 2N response-only ones."""
    from dsl_jax.benchmarks.sample import batch_flops
    from dsl_jax.sampling import Request

    cfg = tiny_dsl.cfg
    P, G, nfe = 192, 16, 8  # N = 4: 9 passes
    flops = {k: batch_flops(tiny_dsl, "sde", Request(nfe, G, cache_refresh=k), 2, P)
             for k in (1, 0, 2)}
    # Per-pass matmul FLOPs of this model: projections, MLP and attention for T tokens
    # attending to S keys, the LM head and converter on the G response positions.
    d, f, L, V, dn = cfg.d_model, cfg.mlp_hidden_size, cfg.n_layers, cfg.vocab_size, 16
    kv = cfg.n_kv_heads * cfg.head_dim

    def pass_flops(T, S):
        return 2 * (L * T * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * S * d)
                    + G * (d * V + dn * V + d * (V + 1)) + G * 512 * dn)

    full, cached = pass_flops(P + G, P + G), pass_flops(G, P + G)
    assert flops[1] == pytest.approx(2 * 9 * full, rel=0.02)  # two rows
    assert flops[0] == pytest.approx(2 * (full + 8 * cached), rel=0.02)
    assert flops[2] == pytest.approx(2 * (2 * full + 7 * cached), rel=0.02)
    assert flops[1] / flops[0] > 4


def test_cache_refresh_keeps_batch_sharding_on_eight_devices(tiny_dsl, mesh8, monkeypatch):
    """On 8 devices (batch over fsdp = 4) the converter's output and the prompt cache stay
    split by rows, and the tokens equal one device's."""
    from dsl_jax import sampling
    from dsl_jax.sampling import sde as sde_mod

    shards = []
    orig_embed, orig_refresh = dsl.DSLModel.embed_noisy, sde_mod.Evaluator.refresh

    def embed_spy(self, z, beta_scale=1.0):
        h = orig_embed(self, z, beta_scale=beta_scale)
        jax.debug.inspect_array_sharding(
            h, callback=lambda s: shards.append(("converter", s.shard_shape(h.shape))))
        return h

    def refresh_spy(self, z):
        logits, cache = orig_refresh(self, z)
        jax.debug.inspect_array_sharding(
            cache.k, callback=lambda s: shards.append(("cache", s.shard_shape(cache.k.shape))))
        return logits, cache

    prompts = tiny_prompts()
    kw = dict(sampler="sde", nfe=4, gen_length=16, seed=2, cache_refresh=2)
    one = generate(tiny_dsl, prompts, **kw)
    monkeypatch.setattr(dsl.DSLModel, "embed_noisy", embed_spy)
    monkeypatch.setattr(sde_mod.Evaluator, "refresh", refresh_spy)
    monkeypatch.setattr(sampling, "_JIT_CACHE", {})
    on8 = generate(tiny_dsl, prompts, mesh=mesh8, **kw)
    assert on8 == one
    kinds = {k for k, _ in shards}
    assert kinds == {"converter", "cache"}, shards
    for kind, shape in shards:  # 4 rows over fsdp = 4: one row per shard
        assert shape[1 if kind == "cache" else 0] == 1, (kind, shape)
    cache_shapes = [s for k, s in shards if k == "cache"]
    assert all(s[3] == tiny_dsl.cfg.n_kv_heads // 2 for s in cache_shapes)  # kv heads / tensor


# ---------------------------------------------------------------- remasking options (issue 13)


def _remask_args(cfg, G, prompt_lengths=(10, 3), P=16):
    b = _tiny_batch(cfg, prompt_lengths, G, seed=4, P=P)
    return [jnp.asarray(a) for a in (b.prompt_ids, b.attention_mask, b.positions, b.keys)]


@pytest.mark.slow  # 11 compilations of the sampler (about 50 s on 2 shared cores)
def test_remask_caches_refreshed_every_step_equal_no_cache(tiny_dsl, monkeypatch):
    """Fast-dLLM's prefix and dual caches on the tiny LLaDA: with the cache recomputed from
    the current state before every cached step they give the uncached sampler's tokens
    (argmax, Gumbel, threshold, CFG); each block's first pass is full and the others run
    only the block and its suffix (prefix) or the block (dual)."""
    from dsl_jax import model as model_mod
    from dsl_jax.sampling import remask
    from dsl_jax.sampling.registry import Request

    llada, G, P = tiny_dsl.llada, 16, 16
    args = _remask_args(llada.cfg, G)
    ids = jnp.concatenate([args[0], jnp.full((2, G), llada.cfg.mask_token_id)], 1)
    p0 = np.asarray(jax.nn.softmax(llada(ids, attention_mask=args[1], positions=args[2])[:, P:],
                                   -1).max(-1))
    th = float(np.median(p0[:, :8]))  # about half the first block at the first step
    lengths = []
    original = model_mod.LLaDA.hidden_states

    def recorded(self, x, *a, **k):
        jax.debug.callback(lambda v: lengths.append(v.shape[1]), x, ordered=True)
        return original(self, x, *a, **k)

    monkeypatch.setattr(model_mod.LLaDA, "hidden_states", recorded)

    def run(refresh=0, mode="low_confidence", **kw):
        req = Request(4, G, block_length=8, **kw)
        lengths.clear()
        out = jax.jit(lambda *a: remask.run_batch(llada, *a, req, mode=mode,
                                                  refresh_every=refresh))(*args)
        return np.asarray(out), list(lengths)

    for kw in [dict(), dict(threshold=th), dict(mode="random", cfg_scale=1.5, temperature=0.5)]:
        base, _ = run(**kw)
        assert not np.any(base == llada.cfg.mask_token_id)
        for cache in ("prefix", "dual"):
            fresh, passes = run(1, remask_cache=cache, **kw)
            np.testing.assert_array_equal(fresh, base, err_msg=f"{cache} {kw}")
            if "threshold" not in kw:  # 2 blocks x (full pass, (refresh, cached pass))
                part = [G, G - 8] if cache == "prefix" else [8, 8]
                assert passes == [x for w in part for x in (P + G, P + G, w)], passes
    # Without refreshing: one full pass per block, the other steps cached (an approximation).
    for cache, part in [("prefix", [G, G - 8]), ("dual", [8, 8])]:
        out, passes = run(0, remask_cache=cache)
        assert passes == [x for w in part for x in (P + G, w)], passes
        assert not np.any(out == llada.cfg.mask_token_id)


def _scripted(p, tok, V):
    """float32 logits [..., V] whose softmax gives token ``tok`` probability ``p`` exactly
    (every other logit 0)."""
    big = jnp.log(p * (V - 1) / (1 - p))
    return jax.nn.one_hot(tok, V) * big[..., None]


def test_threshold_decoding_commits_the_confident_positions_at_least_one_a_step():
    """Fast-dLLM's rule on scripted confidences that rise as tokens are committed: each
    step commits every masked position of the row's current block with p >= threshold, and
    the most confident one when none reaches it; rows move through their blocks on their own."""
    V, G, mask_id, th, bl = 20, 10, 19, 0.6, 4
    base = np.array([[0.3, 0.65, 0.2, 0.1, 0.9, 0.5, 0.58, 0.2, 0.1, 0.05],
                     [0.7, 0.8, 0.61, 0.9, 0.2, 0.1, 0.3, 0.4, 0.95, 0.5]])
    tok = np.arange(G)[None].repeat(2, 0) + 3 * np.arange(2)[:, None]
    seen = []

    def logits_fn(x):
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), x)
        n = jnp.sum(x != mask_id, axis=1, keepdims=True)
        p = jnp.minimum(jnp.asarray(base, jnp.float32) + 0.1 * n, 0.97)
        return _scripted(p, jnp.asarray(tok), V)

    counts, ends = schedules.block_plan(G, 3, bl)  # blocks [0, 4), [4, 8), [8, 10)
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(2)])
    out = np.asarray(jax.jit(lambda k: remask_sample(logits_fn, k, counts, ends, G, mask_id,
                                                     threshold=th))(keys))
    # numpy: the same rule, row by row
    want_states = []
    for b in range(2):
        x, states = np.full(G, mask_id), []
        while np.any(x == mask_id):
            states.append(x.copy())
            n = np.sum(x != mask_id)
            p = np.minimum(base[b] + 0.1 * n, 0.97)
            first = np.argmax(x == mask_id)
            end = min(G, (first // bl + 1) * bl)
            cand = [j for j in range(first, end) if x[j] == mask_id]
            best = max(cand, key=lambda j: (p[j], -j))
            for j in cand:
                if p[j] >= th - 1e-6 or j == best:
                    x[j] = tok[b, j]
        want_states.append(states + [x.copy()])
    np.testing.assert_array_equal(out, tok)
    assert len(seen) == max(len(s) for s in want_states) - 1  # passes: until both rows finish
    for b in range(2):
        got = [s[b] for s in seen] + [out[b]]
        steps = len(want_states[b])
        for i in range(steps):
            np.testing.assert_array_equal(got[i], want_states[b][i])
        assert all(np.sum(want_states[b][i + 1] != want_states[b][i]) >= 1
                   for i in range(steps - 1))
    # A parallel step happened (rows 0 and 1 commit several at once), and some step committed
    # one token below the threshold.
    commits = [np.sum(want_states[0][i + 1] != want_states[0][i])
               for i in range(len(want_states[0]) - 1)]
    assert max(commits) >= 2 and min(commits) == 1


class _FakeLLaDA:
    """A stand-in LLaDA whose 'hidden states' are the logits: response position t scores
    A[t] + s C[t], s = (sum of the real, unmasked prompt ids) / 100 (0 with the prompt
    masked); it records the ids of every pass."""

    def __init__(self, cfg, A, C):
        self.cfg, self.A, self.C, self.seen = cfg, jnp.asarray(A), jnp.asarray(C), []

    def __call__(self, ids, attention_mask=None, positions=None, return_hidden=True, **kw):
        jax.debug.callback(lambda a: self.seen.append(np.asarray(a)), ids)
        B, T = ids.shape
        G = self.A.shape[0]
        prompt = ids[:, :T - G]
        real = attention_mask[:, :T - G] & (prompt != self.cfg.mask_token_id)
        s = jnp.sum(jnp.where(real, prompt, 0), axis=1).astype(jnp.float32) / 100
        resp = self.A[None] + s[:, None, None] * self.C[None]
        return jnp.concatenate([jnp.zeros((B, T - G, self.A.shape[1])), resp], axis=1)

    def head(self, h):
        return h


def _simulate_fixed(logits, counts, ends, mask_id, zero=()):
    """numpy LLaDA on logits that do not depend on the state: the states after each step."""
    B, G, V = logits.shape
    x0 = logits.argmax(-1)
    lc = logits.astype(np.float64).copy()
    lc[..., list(zero)] = -np.inf
    p = np.exp(lc - lc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf = np.take_along_axis(p, x0[..., None], -1)[..., 0]
    x, states = np.full((B, G), mask_id), []
    for c, e in zip(counts, ends):
        for b in range(B):
            cand = sorted((j for j in range(e) if x[b, j] == mask_id), key=lambda j: -conf[b, j])
            x[b, cand[:c]] = x0[b, cand[:c]]
        states.append(x.copy())
    return states


def test_cfg_scale_is_llada_unsupervised_guidance_and_zero_is_off():
    """cfg_scale w: a second set of rows with the prompt masked, logits u + (w + 1)(c - u);
    hand-computed on a fake model. w = 0 runs the plain rows and gives today's sampler."""
    from dsl_jax.sampling import remask
    from dsl_jax.sampling.registry import Request

    cfg = config.preset("tiny", vocab_size=16)
    G, V, P = 8, 16, 16
    r = np.random.default_rng(0)
    A, C = r.normal(size=(G, V)).astype(np.float32), r.normal(size=(G, V)).astype(np.float32)
    A[:, cfg.mask_token_id] = C[:, cfg.mask_token_id] = -30  # never predicted
    fake = _FakeLLaDA(cfg, A, C)
    args = _remask_args(cfg, G)
    prompt, mask = np.asarray(args[0]), np.asarray(args[1])
    s = np.where(mask[:, :P], prompt, 0).sum(1) / 100
    counts, ends = schedules.block_plan(G, 4)
    for w in (0.0, 2.0):
        fake.seen.clear()
        out = np.asarray(remask.run_batch(fake, *args, Request(4, G, cfg_scale=w),
                                          mode="low_confidence"))
        cond = A[None] + s[:, None, None] * C[None]
        guided = A[None] + (w + 1) * (cond - A[None])  # u = A: the masked prompt's s is 0
        want = _simulate_fixed(guided, counts, ends, cfg.mask_token_id)
        np.testing.assert_array_equal(out, want[-1])
        first = fake.seen[0]
        assert len(fake.seen) == 4 and first.shape[0] == (4 if w else 2)
        if w:  # the unconditional rows: every prompt position the mask id, the response alike
            assert np.all(first[2:, :P] == cfg.mask_token_id)
            np.testing.assert_array_equal(first[2:, P:], first[:2, P:])
            np.testing.assert_array_equal(first[:2, :P], prompt)
            assert np.any(guided.argmax(-1) != cond.argmax(-1))  # the guidance matters here
    # cfg_scale 0 is exactly the plain sampler on the model's logits.
    plain = np.asarray(remask_sample(lambda x: jnp.asarray(A[None] + s[:, None, None] * C[None]),
                                     args[3], counts, ends, G, cfg.mask_token_id))
    np.testing.assert_array_equal(np.asarray(remask.run_batch(
        fake, *args, Request(4, G), mode="low_confidence")), plain)


def test_block_length_overrides_the_samplers_own():
    """A request's block_length replaces the sampler's (eos_block's 32, remask's one block):
    each step commits inside its block only; the NFE split is checked."""
    from dsl_jax.sampling.registry import REGISTRY, Request, get

    cfg = config.preset("tiny", vocab_size=16)
    G, V = 12, 16
    r = np.random.default_rng(1)
    A = r.normal(size=(G, V)).astype(np.float32)
    A[:, cfg.mask_token_id] = -30
    fake = _FakeLLaDA(cfg, A, np.zeros_like(A))
    args = _remask_args(cfg, G)
    for sampler, bl, nfe in [("eos_block", 4, 6), ("remask", 4, 7), ("remask", None, 3),
                             ("eos_block", None, 3)]:
        fake.seen.clear()
        out = np.asarray(REGISTRY[sampler].run(fake, *args, Request(nfe, G, block_length=bl)))
        logits = np.broadcast_to(A, (2, G, V)).copy()
        if sampler == "eos_block":
            logits[..., cfg.eos_token_id] = -np.inf
        own = None if sampler == "remask" else schedules.EOS_BLOCK_LENGTH
        counts, ends = schedules.block_plan(G, nfe, bl if bl is not None else own)
        want = _simulate_fixed(logits, counts, ends, cfg.mask_token_id)
        np.testing.assert_array_equal(out, want[-1])
        states = [s[:, -G:] for s in fake.seen[1:]] + [out]
        for st, w in zip(states, want):
            np.testing.assert_array_equal(st, w)
        if bl is not None:  # blocks of 4: the last step of each block completes it
            assert sorted(set(ends.tolist())) == [4, 8, 12]
            for st, e in zip(states, ends):
                assert np.all(st[:, e:] == cfg.mask_token_id)
    with pytest.raises(UserError, match="nfe 2 is below the number of blocks 3 .gen_length 12 "
                                        "in blocks of 4"):
        get("remask").check(2, 12, 4)
    with pytest.raises(UserError, match="block_length must be an integer >= 1"):
        schedules.block_plan(12, 4, 0)


def test_confidence_eos_eot_inf_scores_eos_and_eot_predictions_zero():
    """LLaDA's confidence_eos_eot_inf on scripted logits: x0 is still the argmax (EOS may
    win), but the confidence softmax leaves EOS and EoT out: positions predicting them
    score 0 and come last; the others' confidences are renormalised without them."""
    from dsl_jax.sampling import remask
    from dsl_jax.sampling.registry import Request

    cfg = config.preset("tiny", vocab_size=16)
    V, G, eos, eot, mask_id = 16, 6, cfg.eos_token_id, 5, cfg.mask_token_id
    assert remask.eot_token_id(cfg) == eot and remask.eot_token_id(config.preset("llada-8b")) \
        == config.EOT_ID
    logits = np.full((1, G, V), 0.0, np.float32)
    logits[0, 0, eos] = 6.0           # EOS, very confident
    logits[0, 1, eot] = 5.0           # EoT, confident
    logits[0, 2, [7, eot]] = [3.0, 2.9]  # 7 wins, EoT close: renormalised up without it
    logits[0, 3, 8] = 2.6             # 8, no EOS/EoT competitor
    logits[0, 4, [9, eos]] = [2.8, 2.7]
    logits[0, 5, 10] = 1.0
    counts, ends = schedules.block_plan(G, 3)
    keys = jnp.stack([jax.random.PRNGKey(0)])
    seen = []

    def logits_fn(x):
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), x)
        return jnp.asarray(logits)

    for zero in ((), (eos, eot)):
        seen.clear()
        out = np.asarray(remask_sample(logits_fn, keys, counts, ends, G, mask_id,
                                       zero_conf_ids=zero))
        want = _simulate_fixed(logits, counts, ends, mask_id, zero)
        for st, w in zip(seen[1:] + [out], want):
            np.testing.assert_array_equal(st, w)
        first = set(np.flatnonzero(want[0][0] != mask_id))
        # Off: EOS and EoT first. On: the renormalised 2 and 4 beat 3; EOS/EoT last.
        assert first == ({0, 1} if not zero else {2, 4})
        assert set(np.flatnonzero(want[1][0] != mask_id)) - first == ({2, 3} if not zero
                                                                      else {3, 5})
        np.testing.assert_array_equal(out[0], logits[0].argmax(-1))
    # The request's flag reaches the sampler with the model's EOS and EoT ids.
    fake = _FakeLLaDA(cfg, logits[0], np.zeros_like(logits[0]))
    args = _remask_args(cfg, G, (4,))
    fake.seen.clear()
    out = remask.run_batch(fake, *args, Request(3, G, confidence_eos_eot_inf=True),
                           mode="low_confidence")
    states = [s[:, -G:] for s in fake.seen[1:]] + [np.asarray(out)]
    for st, w in zip(states, _simulate_fixed(logits, counts, ends, mask_id, (eos, eot))):
        np.testing.assert_array_equal(st, w)


def test_sample_command_remasking_flags(tiny_dsl, tmp_path, capsys, monkeypatch):
    from dsl_jax import checkpoint, tokenizer
    from dsl_jax import sampling
    from dsl_jax.cli import main

    ckpt = str(tmp_path / "m")
    checkpoint.save_model(ckpt, tiny_dsl.llada)
    tokenizer.train_small(["the quick brown fox"] * 20, vocab_size=512,
                          path=str(tmp_path / "m" / "tokenizer.json"))
    calls = []
    real = sampling.generate
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    base = ["sample", "--ckpt", ckpt, "--prompt", "the fox", "--sampler", "remask", "--nfe", "4",
            "--gen-length", "8", "--no-progress", "--mesh", "fsdp=1,data=-1"]
    assert main(base) == 0
    assert not set(calls[-1]) & {"block_length", "remask_cache", "threshold", "cfg_scale",
                                 "confidence_eos_eot_inf"}
    assert main(base + ["--block-length", "4", "--remask-cache", "dual", "--threshold", "0.5",
                        "--cfg-scale", "1.5", "--confidence-eos-eot-inf"]) == 0
    assert {k: calls[-1][k] for k in ("block_length", "remask_cache", "threshold", "cfg_scale",
                                      "confidence_eos_eot_inf")} == dict(
        block_length=4, remask_cache="dual", threshold=0.5, cfg_scale=1.5,
        confidence_eos_eot_inf=True)
    capsys.readouterr()
    monkeypatch.setattr(checkpoint, "load", lambda *a, **k: 1 / 0)
    for bad, msg in [(["--block-length", "0"], "--block-length must be an integer >= 1"),
                     (["--block-length", "1"], "nfe 4 is below the number of blocks 8"),
                     (["--threshold", "1.5"], "--threshold must be a number in (0, 1]"),
                     (["--cfg-scale", "-1"], "--cfg-scale must be a number >= 0"),
                     (["--sampler", "sde", "--remask-cache", "prefix"],
                      "--remask-cache: remasking-sampler option(s)")]:
        assert main(base + bad) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and msg in err, err


def test_geometric_prompt_buckets():
    """Prompt lengths round up to 32 x (1, 1.5, 2, 3, 4, ...), capped by the model's limit:
    XSum-like prompts of 500-700 tokens compile two shapes, not seven."""
    assert batching.buckets(32, 4096) == [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                                          1536, 2048, 3072, 4096]
    assert batching.buckets(64, upto=200) == [64, 96, 128, 192, 256]
    assert [batching.bucket_length(n) for n in (0, 1, 32, 33, 48, 49, 97, 500, 700)] == [
        32, 32, 32, 48, 48, 64, 128, 512, 768]
    assert batching.bucket_length(900, limit=896) == 896 == batching.bucket_length(800, 32, 896)
    assert {batching.bucket_length(n) for n in range(500, 701)} == {512, 768}
    for n in range(1, 3000):  # padding under a third of the padded length (above 32)
        p = batching.bucket_length(n)
        assert n <= p and p % 16 == 0 and (p <= 32 or p < 1.5 * n), n
    with pytest.raises(UserError, match="bucket must be an even integer"):
        batching.bucket_length(10, 7)
