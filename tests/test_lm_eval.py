"""dsl-jax in lm-evaluation-harness: LLaDA's Monte-Carlo masked log-likelihood against
float64 numpy references (exact for one token, the same masks, the exact expectation);
lm_eval runs the local tasks of tests/fixtures/lm_eval on a tiny DSL checkpoint and
reports what the project's estimator and samplers give when called directly; ``until``
and the chat template on scripted outputs; the ``dsl-jax lm-eval`` command."""

import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "fixtures", "lm_eval")
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import eval_fixtures as F  # noqa: E402

SCRIPTED = "tests.test_lm_eval:scripted_factory"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def tiny_llada():
    from flax import nnx

    from dsl_jax import config
    from dsl_jax.model import LLaDA
    return LLaDA(config.preset("tiny"), rngs=nnx.Rngs(params=1))


# ---- the estimator ---------------------------------------------------------------------

def test_one_token_estimate_is_the_exact_log_probability(tiny_llada):
    """With one target token every sample masks it (p = 1): the estimate is
    log softmax(logits)[token] at that position, whatever the seed or padding."""
    import jax.numpy as jnp

    from dsl_jax.evaluation.harness import masked_loglikelihood
    prefix, target = [0, 10, 20, 30, 40], [77]
    logits = np.asarray(tiny_llada(jnp.asarray([prefix + [2]], jnp.int32)))
    want = log_softmax64(logits[0, len(prefix)])[77]
    for seed in (0, 5):
        got = masked_loglikelihood(tiny_llada, prefix, target, mc_samples=6, batch_size=3,
                                   seed=seed)
        assert got == pytest.approx(want, abs=2e-5)
    assert masked_loglikelihood(tiny_llada, prefix, [], mc_samples=4, batch_size=2) == 0.0


def test_estimate_equals_a_float64_reference_on_the_same_masks(tiny_llada):
    """LLaDA's estimator, recomputed in float64 numpy from the drawn masks on unpadded
    rows: stratified counts x_j = ((round(k + j T / B) - 1) mod T) + 1, exactly x_j target
    positions masked, the prefix never; each batch sum_j sum_masked CE * T / x_j / B."""
    import jax.numpy as jnp

    from dsl_jax.evaluation.harness import batch_keys, draw_masks, masked_loglikelihood
    from dsl_jax.sampling.batch import bucket_length
    prefix, target = [0, 11, 12], [40, 41, 42, 43, 44]
    P, T, B, n = len(prefix), len(target), 4, 3
    seq = np.asarray(prefix + target)
    got, losses = masked_loglikelihood(tiny_llada, prefix, target, mc_samples=B * n,
                                       batch_size=B, seed=7, return_batches=True)
    length = bucket_length(P + T)
    ref = []
    for key in batch_keys(7, n):
        masked, x = (np.asarray(a) for a in draw_masks(key, P, T, length, B))
        masked, x = masked[:, :P + T], x
        assert not masked[:, :P].any() and (masked.sum(1) == x).all()
        assert any(np.array_equal(x, (np.round(k + np.arange(B) * T / B).astype(int) - 1) % T + 1)
                   for k in range(1, T + 1)), x
        noisy = np.where(masked, tiny_llada.cfg.mask_token_id, seq[None])
        logp = log_softmax64(tiny_llada(jnp.asarray(noisy, jnp.int32)))
        ce = -np.take_along_axis(logp, np.broadcast_to(seq, (B, P + T))[..., None], -1)[..., 0]
        ref.append(float(np.sum(np.where(masked, ce, 0.0).sum(1) * T / x) / B))
    np.testing.assert_allclose(losses, ref, rtol=2e-5)
    assert got == pytest.approx(-np.mean(ref), rel=2e-5)


def test_estimate_converges_to_the_exact_expectation(tiny_llada):
    """Many samples: the estimate is within 4 standard errors of its expectation,
    -(1/T) sum_x (T/x) mean_{|S|=x} sum_{i in S} CE_i(S), enumerated over every mask set
    S of the T = 4 target positions (B = T rows: no rounding ties, x_j uniform)."""
    import jax.numpy as jnp

    from dsl_jax.evaluation.harness import masked_loglikelihood
    prefix, target = [0, 21, 22], [50, 51, 52, 53]
    P, T = len(prefix), len(target)
    seq = np.asarray(prefix + target)
    est, losses = masked_loglikelihood(tiny_llada, prefix, target, mc_samples=4 * 128,
                                       batch_size=4, seed=11, return_batches=True)
    sets = [S for x in range(1, T + 1) for S in itertools.combinations(range(T), x)]
    noisy = np.stack([np.where(np.isin(np.arange(P + T), [P + i for i in S]),
                               tiny_llada.cfg.mask_token_id, seq) for S in sets])
    logp = log_softmax64(tiny_llada(jnp.asarray(noisy, jnp.int32)))
    exact = 0.0
    for r, S in enumerate(sets):
        x = len(S)
        ce = -sum(logp[r, P + i, seq[P + i]] for i in S)
        exact += (1 / T) * (T / x) * ce / len(list(itertools.combinations(range(T), x)))
    se = np.std(losses.astype(np.float64), ddof=1) / np.sqrt(len(losses))
    assert abs(est - (-exact)) < 4 * se, (est, -exact, se)
    assert se < 0.05 * abs(exact)  # a check that can fail: the samples are informative


# ---- lm_eval on a tiny checkpoint --------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from flax import nnx

    from dsl_jax import config
    from dsl_jax.checkpoint import save_model
    from dsl_jax.dsl import DSLConfig, DSLModel
    root = tmp_path_factory.mktemp("lm_eval")
    tok = str(root / "tokenizer.json")
    F.make_tokenizer(tok)
    ckpt = root / "dsl"
    save_model(str(ckpt), DSLModel(config.preset("tiny"), DSLConfig(noise_dim=16),
                                   rngs=nnx.Rngs(params=0)))
    shutil.copy(tok, ckpt / "tokenizer.json")
    env = {**OFFLINE, "HF_HOME": str(root / "hf"), "HF_DATASETS_CACHE": str(root / "hf" / "ds")}
    return {"root": root, "tok": tok, "ckpt": str(ckpt), "env": env}


@pytest.fixture
def lm_env(world, monkeypatch):
    """``world`` with Hugging Face offline and caching under it, run from the checkout
    (the task YAMLs name their data files relative to it)."""
    for k, v in world["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(ROOT)
    return world


def evaluate(tasks, model_args, **kw):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness: pip install -e .[lmeval]")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from dsl_jax.evaluation import harness
    assert harness.register() == "dsl-jax"
    return lm_eval.simple_evaluate(model="dsl-jax", model_args=model_args, tasks=tasks,
                                   task_manager=TaskManager(include_path=FIXTURES, include_defaults=False),
                                   log_samples=True, **kw)


def read_jsonl(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return [json.loads(line) for line in f if line.strip()]


def cut(text, stops):
    for s in stops:
        text = text.split(s)[0]
    return text


def test_lm_eval_tasks_report_the_projects_estimates_and_samples(lm_env):
    """Both local tasks on a tiny DSL checkpoint (sampler sde, NFE 4): every
    log-likelihood lm_eval logs equals masked_loglikelihood on the checkpoint's LLaDA
    (context = BOS + its ids, continuation split off the whole text's ids, same seed),
    acc follows from them; every generation equals sampling.generate on its prompt alone
    (16 positions = the task's max_gen_toks), cut at EOS and the task's stops."""
    import jax

    from dsl_jax import checkpoint, sampling
    from dsl_jax.evaluation.harness import masked_loglikelihood
    from dsl_jax.sharding import make_mesh
    from dsl_jax.tokenizer import Tokenizer
    args = {"ckpt": lm_env["ckpt"], "sampler": "sde", "nfe": 4, "mc_samples": 8, "seed": 5}
    out = evaluate(["dsl_jax_tiny_choice", "dsl_jax_tiny_gen"], args, batch_size=4)
    tok = Tokenizer.from_file(lm_env["tok"])
    model = checkpoint.load(lm_env["ckpt"], make_mesh(devices=jax.local_devices()))

    docs = read_jsonl("choice.jsonl")
    samples = sorted(out["samples"]["dsl_jax_tiny_choice"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs)
    correct = []
    for s, doc in zip(samples, docs):
        lls = []
        for (context, continuation), resp in zip(s["arguments"], s["filtered_resps"]):
            assert continuation == " " + doc["choices"][len(lls)]
            ctx = tok.encode(context)
            target = tok.encode(context + continuation)[len(ctx):]
            want = masked_loglikelihood(model.llada, [tok.bos_id] + ctx, target, mc_samples=8,
                                        batch_size=4, seed=5)
            assert float(resp[0]) == pytest.approx(want, rel=1e-5, abs=1e-5)
            lls.append(want)
        correct.append(float(np.argmax(lls) == doc["label"]))
    assert out["results"]["dsl_jax_tiny_choice"]["acc,none"] == pytest.approx(np.mean(correct))

    stops = ["\n\n", "Question:"]
    samples = sorted(out["samples"]["dsl_jax_tiny_gen"], key=lambda s: s["doc_id"])
    assert len(samples) == len(read_jsonl("qa.jsonl"))
    for s in samples:
        (context, gen_kwargs), = s["arguments"]
        assert gen_kwargs["max_gen_toks"] == 16
        ids = sampling.generate(model, [[tok.bos_id] + tok.encode(context)], sampler="sde",
                                nfe=4, gen_length=16, seed=5, shared_seed=True)[0]
        ends = [j for j, t in enumerate(ids) if t in (tok.eos_id, tok.eot_id)]
        want = cut(tok.decode(ids[:ends[0]] if ends else ids), stops)
        assert s["resps"][0][0] == want


def scripted_factory(settings, tok):
    """A GenerateFn (``generator=tests.test_lm_eval:scripted_factory``) whose responses
    are scripted per question: ``ANSWER|gGEN_LENGTH|hHEADER|bBOS_COUNT`` then a tail that
    ``until`` (or an EOS token) must cut off."""
    tails = {"build": "\n\nQuestion: next one", "welcomed": " Question: again",
             "meet": "<EOS> after the end\n\n", "legislation": "", "story": "\n\nmore\n\nQuestion:"}

    def generate(prompts, sampler, nfe, gen_length, seed):
        out = []
        for p in prompts:
            text = tok.decode(p)
            key = next(k for k in tails if k in text)
            head = (f"{key.upper()}|g{gen_length}|h{int(tok.start_header_id in p)}"
                    f"|b{list(p).count(tok.bos_id)}")
            before, _, after = tails[key].partition("<EOS>")
            ids = tok.encode(head + before) + ([tok.eos_id] + tok.encode(after) if _ else [])
            out.append(ids + [tok.eos_id] * max(0, gen_length - len(ids)))
        return out

    return generate


@pytest.mark.parametrize("chat", [False, True])
def test_until_cuts_scripted_outputs_and_chat_template(lm_env, chat):
    """Scripted responses through lm_eval's generate_until: cut at the first of the
    task's stops ("\\n\\n", "Question:") or at EOS; gen_length is max_gen_toks (16) or the
    model_args gen_length (24); with apply_chat_template the context is the tokenizer's
    chat (one BOS, the headers), else the raw prompt with one BOS."""
    from dsl_jax.tokenizer import Tokenizer
    args = {"generator": SCRIPTED, "tokenizer": lm_env["tok"], **({"gen_length": 24} if chat else {})}
    out = evaluate(["dsl_jax_tiny_gen"], args, apply_chat_template=chat)
    tok = Tokenizer.from_file(lm_env["tok"])
    got = {s["doc"]["question"]: s["resps"][0][0] for s in out["samples"]["dsl_jax_tiny_gen"]}
    g, h = (24, 1) if chat else (16, 0)
    keys = {"What does the council build?": "BUILD", "Who welcomed the news?": "WELCOMED",
            "When did the council meet?": "MEET",
            "Summarize the following legislation: a bill on roads.": "LEGISLATION",
            "What is the story about?": "STORY"}
    # The cut is exact: what precedes a stop is kept as it is (a space before "Question:").
    assert got == {q: f"{k}|g{g}|h{h}|b1" + (" " if k == "WELCOMED" else "")
                   for q, k in keys.items()}
    for s in out["samples"]["dsl_jax_tiny_gen"]:
        context = s["arguments"][0][0]
        user = f"Question: {s['doc']['question']}\nAnswer:"
        assert context == (tok.render_chat([{"role": "user", "content": user}]) if chat else user)


def test_harness_arguments_and_limits(world):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness: pip install -e .[lmeval]")
    from dsl_jax.errors import UserError
    from dsl_jax.evaluation import harness
    cls = harness.model_class()
    assert harness.cut_at_stops("a\n\nb Question: c", ["Question:", "\n\n"]) == "a"
    assert harness.cut_at_stops("abc", ["x", ""]) == "abc"
    a = harness.HarnessArgs.parse({"ckpt": "c", "nfe": "8", "batch_size": 2}, 16)
    assert (a.nfe, a.batch_size) == (8, 2)  # model_args' batch_size wins over --batch_size
    assert harness.HarnessArgs.parse({"ckpt": "c", "device": "cuda"}, 16).batch_size == 16
    assert harness.HarnessArgs.parse({"ckpt": "c"}, "auto").batch_size == 32
    with pytest.raises(UserError, match="unknown argument.*'steps'"):
        harness.HarnessArgs.parse({"ckpt": "c", "steps": 4})
    with pytest.raises(UserError, match="nfe: expected an integer"):
        harness.HarnessArgs.parse({"ckpt": "c", "nfe": "many"})
    with pytest.raises(UserError, match="no checkpoint"):
        harness.HarnessArgs.parse({})
    with pytest.raises(UserError, match="multiple of batch_size"):
        harness.HarnessArgs.parse({"ckpt": "c", "mc_samples": 40, "batch_size": 32})
    lm = cls.create_from_arg_string(f"generator={SCRIPTED},tokenizer={world['tok']}")
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([])
    with pytest.raises(UserError, match="needs a checkpoint"):
        lm._loglikelihood_tokens([(("a", " b"), [0, 7], [8])])


def test_module_imports_without_lm_eval():
    """The harness module (and the estimator) import with lm_eval absent; registering
    then says how to install it in one line."""
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from dsl_jax.evaluation import harness\n"
            "from dsl_jax.errors import UserError\n"
            "assert callable(harness.masked_loglikelihood)\n"
            "try:\n    harness.register()\nexcept UserError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'pip install -e ".[lmeval]"' in r.stdout


@pytest.mark.slow
def test_dsl_jax_lm_eval_command(world, tmp_path):
    """``dsl-jax lm-eval`` hands its arguments to lm_eval's CLI with ``--model dsl-jax``
    added and the model registered; the logged samples are the scripted ones, cut."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness: pip install -e .[lmeval]")
    exe = shutil.which("dsl-jax", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "dsl_jax.cli"]
    out = tmp_path / "out"
    r = subprocess.run(cmd + ["lm-eval", "--model_args",
                              f"generator={SCRIPTED},tokenizer={world['tok']}",
                              "--tasks", "dsl_jax_tiny_gen", "--include_path", FIXTURES,
                              "--limit", "2", "--log_samples", "--output_path", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, **world["env"], "PYTHONPATH": ROOT,
                            "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs
             if f.startswith("samples_dsl_jax_tiny_gen")]
    assert len(files) == 1, files
    with open(files[0]) as f:
        resps = [json.loads(line)["resps"][0][0] for line in f]
    assert resps == ["BUILD|g16|h0|b1", "WELCOMED|g16|h0|b1 "]
