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
    assert s.changed_knobs("sde") == {} and s.changed_knobs("remask") == {}
    assert s.knobs("remask") == {k: v for k, v in KNOB_DEFAULTS.items() if k in REMASK_KNOBS}
    s = sweep.Settings.from_config({"samplers": "sde,ode,remask", "noise_scale": "0.02",
                                    "top_k": "64", "snr_grid": "loglinear"})
    assert s.changed_knobs("sde") == {"noise_scale": 0.02, "top_k": 64, "snr_grid": "loglinear"}
    assert s.changed_knobs("ode") == {"top_k": 64, "snr_grid": "loglinear"}
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
