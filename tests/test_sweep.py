"""``dsl-jax eval``: a sweep run as a subprocess, killed with SIGKILL midway, started
again, ends with exactly the tables of an uninterrupted run; reports; bad input is one
error line before any sampling."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import eval_fixtures as F  # noqa: E402

GENERATOR = "tests.eval_fixtures:fake_factory"
N, BATCH = 12, 4
CELLS = [(b, s, n) for b in ("xsum", "cnn_dailymail") for s in ("remask", "eos_block") for n in (4, 8)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data_dir = str(root / "data")
    F.prepare_tfds("xsum", data_dir, {"test": F.xsum_rows(30)})
    F.prepare_tfds("cnn_dailymail", data_dir, {"test": F.cnn_rows(16)}, version="3.0.0")
    train_only = str(root / "train_only")
    F.prepare_tfds("xsum", train_only, {"train": F.xsum_rows(4)})
    tok = str(root / "tokenizer.json")
    F.make_tokenizer(tok)
    return {"root": root, "data_dir": data_dir, "train_only": train_only, "tok": tok}


def overrides(world, out_dir, **extra):
    o = {"tokenizer": world["tok"], "data_dir": world["data_dir"], "benchmarks": "xsum,cnn_dailymail",
         "samplers": "remask,eos_block", "nfe": "4,8", "num_examples": N, "batch_size": BATCH,
         "out_dir": str(out_dir), "generator": GENERATOR, **extra}
    return [f"--config.{k}={v}" for k, v in o.items()]


def command():
    exe = shutil.which("dsl-jax", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "dsl_jax.cli"]


def env(**extra):
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    e.pop("XLA_FLAGS", None)
    e.update(extra)
    return e


def host_lines(out_dir):
    counts = {}
    for b, s, n in CELLS:
        d = os.path.join(out_dir, "cells", b, f"{s}-nfe{n}")
        path = os.path.join(d, "host00000.jsonl")
        done = os.path.isfile(os.path.join(d, "cell.json"))
        lines = 0
        if os.path.isfile(path):
            with open(path, "rb") as f:
                lines = f.read().count(b"\n")
        counts[(b, s, n)] = (lines, done)
    return counts


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.slow
def test_killed_sweep_resumes_to_identical_tables(world, tmp_path):
    from dsl_jax.configlib import load_config
    from dsl_jax.evaluation import metrics as M
    from dsl_jax.evaluation.sweep import Settings, run_sweep

    # Uninterrupted reference, in this process.
    ref = tmp_path / "ref"
    cfg = load_config("eval_summarization", [o[len("--config."):] for o in overrides(world, ref)])
    rows = run_sweep(Settings.from_config(cfg), progress=False)
    assert len(rows) == len(CELLS)

    # The same sweep as a subprocess, killed with SIGKILL inside the third cell.
    out, log = tmp_path / "run", tmp_path / "calls.jsonl"
    proc = subprocess.Popen(command() + ["eval"] + overrides(world, out), cwd=ROOT,
                            env=env(FAKE_GEN_SLEEP="0.4", FAKE_GEN_LOG=str(log)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, killed_at = time.time() + 240, None
    try:
        while time.time() < deadline and proc.poll() is None:
            c = host_lines(str(out))
            finished = sum(done for _, done in c.values())
            partial = [k for k, (lines, done) in c.items() if 0 < lines < N and not done]
            if finished >= 2 and partial:
                proc.send_signal(signal.SIGKILL)
                killed_at = c
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert killed_at is not None, f"sweep ended before it could be killed: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(out / "summary.csv")
    written = host_lines(str(out))
    with open(log) as f:
        calls_first = len(f.readlines())
    batches_written = sum(lines // BATCH for lines, _ in written.values())
    assert 0 < batches_written < len(CELLS) * N // BATCH

    # Started again: finishes, computing only what was missing.
    res = subprocess.run(command() + ["eval"] + overrides(world, out), cwd=ROOT,
                         env=env(FAKE_GEN_LOG=str(log)), capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    with open(log) as f:
        calls = [json.loads(x) for x in f]
    assert len(calls) - calls_first == len(CELLS) * N // BATCH - batches_written
    gen_length = {"xsum": 128, "cnn_dailymail": 256}
    again = [(c["gen_length"], c["sampler"], c["nfe"]) for c in calls[calls_first:]]
    for (b, s, n), (lines, done) in written.items():
        # finished cells are not sampled again; a partial cell only its missing batches
        assert again.count((gen_length[b], s, n)) == (0 if done else (N - lines) // BATCH)

    for name in ("summary.csv", "summary.json", "table.md"):
        assert read(out / name) == read(ref / name), name
    for b, s, n in CELLS:
        rel = os.path.join("cells", b, f"{s}-nfe{n}", "examples.jsonl")
        assert read(out / rel) == read(ref / rel), rel

    # The reports hold what the examples say.
    summary = json.loads(read(ref / "summary.json"))
    assert [(r["benchmark"], r["sampler"], r["nfe"]) for r in summary] == CELLS
    for r in summary:
        with open(ref / "cells" / r["benchmark"] / f"{r['sampler']}-nfe{r['nfe']}" /
                  "examples.jsonl") as f:
            ex = [json.loads(x) for x in f]
        assert [e["index"] for e in ex] == list(range(N))
        for e in ex:
            got = M.rouge(e["reference"], e["output"])
            assert e["rouge1"] == pytest.approx(got["rouge1"])
            assert e["words"] == len(e["output"].split())
        outputs = [e["output"] for e in ex]
        want = M.cell_metrics(ex, outputs)
        for k in ("rouge1", "rouge2", "rougeL", "words", "empty_rate", "repetition",
                  "distinct1", "distinct2"):
            assert r[k] == pytest.approx(want[k]), k
        # repetition and distinct-n are pooled over the cell's non-empty outputs
        assert r["repetition"] == pytest.approx(M.pooled_repetition(o for o in outputs if o.strip()))
    assert any(r["empty_rate"] > 0 for r in summary)
    rem = {(r["benchmark"], r["nfe"]): r["repetition"] for r in summary if r["sampler"] == "remask"}
    eos = {(r["benchmark"], r["nfe"]): r["repetition"] for r in summary if r["sampler"] == "eos_block"}
    assert all(rem[k] > eos[k] for k in rem)  # the fake's remask doubles tokens
    table = read(ref / "table.md").decode()
    assert "| LLaDA low-conf. | 4 |" in table and "XSum R-1" in table and "CNN/DM R-L" in table

    import matplotlib.image as mpimg
    for png in ("rouge1_vs_nfe.png", "repetition_vs_nfe.png", "lengths.png"):
        img = mpimg.imread(str(ref / png))
        assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05, png


def test_draw_defaults_are_the_benchmarks_unless_set():
    """num_examples and max_words 0 (the defaults): each benchmark's own (AESLC 100 and 300,
    the others 1,000 and 1,500); a value set in the config applies to every benchmark."""
    from dsl_jax.configlib import load_config
    from dsl_jax.evaluation import benchmarks as B
    from dsl_jax.evaluation.sweep import Settings

    def draws(*over):
        s = Settings.from_config(load_config("eval_summarization", ["benchmarks=xsum,aeslc", *over]))
        return [s.draw(B.get(k)) for k in ("xsum", "aeslc")]

    assert draws() == [(1000, 1500), (100, 300)]
    assert draws("num_examples=7") == [(7, 1500), (7, 300)]
    assert draws("max_words=50") == [(1000, 50), (100, 50)]
    from dsl_jax.errors import UserError
    with pytest.raises(UserError, match="config max_words: must be positive"):
        draws("max_words=-1")


def test_changed_settings_are_refused_in_an_old_run_dir(world, tmp_path):
    from dsl_jax.configlib import load_config
    from dsl_jax.errors import UserError
    from dsl_jax.evaluation.sweep import Settings, run_sweep

    def settings(**extra):
        ov = [o[len("--config."):] for o in overrides(world, tmp_path / "r", benchmarks="cnn_dailymail",
                                                      nfe="4", samplers="remask", **extra)]
        return Settings.from_config(load_config("eval_summarization", ov))

    run_sweep(settings(plots=False), progress=False)
    with pytest.raises(UserError, match=r"cnn_dailymail/remask-nfe4 holds results of different settings "
                                        r"\(seed: 0 vs 5\)"):
        run_sweep(settings(seed=5, plots=False), progress=False)


def test_config_strings_convert_as_overrides_do(world, tmp_path, monkeypatch):
    """String values in a config dict read as ``--config.KEY=VALUE`` does: "false" is
    False, a bad number is one error line; the help's field list survives missing source."""
    import inspect

    from dsl_jax.commands import eval as eval_command
    from dsl_jax.errors import UserError
    from dsl_jax.evaluation.sweep import Settings

    base = {"tokenizer": world["tok"], "data_dir": world["data_dir"], "generator": GENERATOR}
    s = Settings.from_config({**base, "shared_seed": "false", "plots": "0", "batch_size": "3"})
    assert s.shared_seed is False and s.plots is False and s.batch_size == 3
    assert Settings.from_config({**base, "shared_seed": "true"}).shared_seed is True
    with pytest.raises(UserError, match=r"^config batch_size: expected int, got 'x'$"):
        Settings.from_config({**base, "batch_size": "x"})
    with pytest.raises(UserError, match=r"^config plots: expected true or false, got 'maybe'$"):
        Settings.from_config({**base, "plots": "maybe"})
    assert "shared_seed = False" in eval_command._config_help()

    def no_source(obj):
        raise OSError("could not get source code")

    monkeypatch.setattr(inspect, "getsource", no_source)
    assert eval_command._config_help() == ""


def cli(args, capsys):
    from dsl_jax.cli import main
    rc = main(["eval", *args])
    return rc, capsys.readouterr().err.strip()


def test_bad_input_is_one_error_line_before_sampling(world, tmp_path, capsys, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_GEN_LOG", str(log))
    out = tmp_path / "out"

    rc, err = cli(overrides(world, out, benchmarks="xsum,gigaword"), capsys)
    assert rc == 2 and err.count("\n") == 0
    assert err.startswith("dsl-jax eval: error: unknown benchmark 'gigaword'; choose from xsum")

    rc, err = cli(overrides(world, out, data_dir=world["train_only"], benchmarks="xsum"), capsys)
    assert rc == 2 and err.count("\n") == 0, err
    assert "xsum: xsum:1.0.0 in" in err and "has no prepared 'test' split (found train)" in err

    rc, err = cli(overrides(world, out, samplers="nope"), capsys)
    assert rc == 2 and "unknown sampler 'nope'" in err and err.count("\n") == 0

    rc, err = cli(["--config.no_such_key=1"], capsys)
    assert rc == 2 and "unknown config key 'no_such_key'" in err

    # A checkpoint without DSL parameters, asked for the sde sampler.
    # (zeros of the right shapes: the check reads the checkpoint's metadata, not weights)
    import numpy as np
    from flax import nnx

    from dsl_jax import checkpoint, config, model
    cfg = config.preset("tiny")
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(model.build(cfg))))
    import jax
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    ckpt = str(tmp_path / "llada")
    checkpoint.save(ckpt, {"model": zeros}, checkpoint.make_meta(cfg))
    rc, err = cli(overrides(world, out, generator="", samplers="remask,sde") +
                  [f"--config.ckpt={ckpt}"], capsys)
    assert rc == 2 and err.count("\n") == 0, err
    assert "checkpoint has no DSL parameters" in err and "sde" in err

    # A budget the sampler cannot run: found before any sampling.
    rc, err = cli(overrides(world, out, generator="", samplers="remask,eos_block", nfe="8,2",
                            benchmarks="xsum", max_words=12) + [f"--config.ckpt={ckpt}"], capsys)
    assert rc == 2 and err.count("\n") == 0, err
    assert "xsum: eos_block: nfe 2 is below the number of blocks 4" in err
    # Prompts longer than the model can take.
    rc, err = cli(overrides(world, out, generator="", samplers="remask", benchmarks="xsum")
                  + [f"--config.ckpt={ckpt}"], capsys)
    assert rc == 2 and err.count("\n") == 0 and "exceeds the model's maximum sequence length 256" in err

    assert not log.exists()  # nothing was sampled
    assert not (out / "cells").exists()


def test_eval_end_to_end_on_a_tiny_real_checkpoint(world, tmp_path, capsys):
    """``dsl-jax eval`` with the real samplers on a tiny DSL checkpoint: remask and sde at
    NFE 4 on a few XSum examples; outputs equal a direct call of the sampler."""

    from dsl_jax import checkpoint, config, sampling
    from dsl_jax.checkpoint import save_model
    from dsl_jax.dsl import DSLConfig
    from dsl_jax.evaluation import generation, sweep
    from dsl_jax.sharding import make_mesh

    assert sweep.SAMPLERS == sampling.SAMPLERS and generation.DSL_SAMPLERS == sampling.DSL_SAMPLERS
    from flax import nnx

    from dsl_jax.dsl import DSLModel
    ckpt = tmp_path / "dsl"
    # Built eagerly (no sharded initialiser to compile); the sweep loads it onto the mesh.
    save_model(str(ckpt), DSLModel(config.preset("tiny"), DSLConfig(noise_dim=16),
                                   rngs=nnx.Rngs(params=0)))
    shutil.copy(world["tok"], ckpt / "tokenizer.json")
    out = tmp_path / "out"
    args = overrides(world, out, generator="", benchmarks="xsum", samplers="remask,sde", nfe="4",
                     num_examples=3, batch_size=3, max_words=12, gen_length=16, tokenizer="")
    from dsl_jax.cli import main
    rc = main(["eval", *args, f"--config.ckpt={ckpt}"])
    err = capsys.readouterr().err
    assert rc == 0, err
    summary = json.loads(read(out / "summary.json"))
    assert [(r["sampler"], r["nfe"], r["n"]) for r in summary] == [("remask", 4, 3), ("sde", 4, 3)]
    assert (out / "table.md").exists() and (out / "rouge1_vs_nfe.png").exists()

    # The sweep's outputs are the sampler's, decoded (same prompts, batches and seeds).
    settings = sweep.Settings.from_config(__import__("dsl_jax.configlib", fromlist=["x"]).load_config(
        "eval_summarization", [a[len("--config."):] for a in args] + [f"ckpt={ckpt}"]))
    tok, loaded = sweep.prepare(settings)
    bench, examples, prompts, gen_length = loaded["xsum"]
    assert gen_length == 16
    with open(out / "cells" / "xsum" / "remask-nfe4" / "examples.jsonl") as f:
        got = [json.loads(x)["output"] for x in f]
    cell = sweep.Cell(bench, "remask", 4)
    model = checkpoint.load(str(ckpt), make_mesh(), kind="dsl")
    want = [None] * 3
    for b in sweep.make_batches([len(p) for p in prompts], 3):
        ids = sampling.generate(model, [prompts[i] for i in b], sampler="remask", nfe=4,
                                gen_length=16, seed=sweep.batch_seed(0, cell, min(b)),
                                batch_size=3)
        for i, x in zip(b, ids):
            want[i] = tok.decode(x)
    assert got == want


def test_shared_seed_gives_every_batch_the_sweep_seed(world, tmp_path):
    """``shared_seed``: every batch of every cell is generated from the sweep's seed itself
    (the generator draws every example alike); without it, per batch and cell."""
    from dsl_jax.configlib import load_config
    from dsl_jax.evaluation import sweep

    seeds = {}
    for shared in (True, False):
        ov = [o[len("--config."):] for o in overrides(
            world, tmp_path / f"r{shared}", benchmarks="cnn_dailymail", nfe="4,8",
            samplers="remask", seed=42, shared_seed=shared, plots=False)]
        settings = sweep.Settings.from_config(load_config("eval_summarization", ov))
        assert settings.shared_seed is shared
        calls = []

        def fake(prompts, sampler, nfe, gen_length, seed):
            calls.append(seed)
            return [[0] * gen_length for _ in prompts]

        sweep.run_sweep(settings, generate_fn=fake, progress=False)
        seeds[shared] = calls
    assert len(seeds[True]) == 2 * -(-N // BATCH) and set(seeds[True]) == {42}
    assert len(set(seeds[False])) == len(seeds[False])


@pytest.mark.slow
def test_sample_eval_and_robustness_on_a_simulated_pod(world, tmp_path):
    """2 processes x 2 devices (pod-sim): ``sample`` and ``robustness`` gather arrays that
    span both hosts and report on the lead only; ``eval`` with one batch (host 1 has no
    share) loads the model on both hosts (a restore is a collective). Each result equals
    the same computation in this one process."""
    from flax import nnx

    from dsl_jax import checkpoint, config, sampling
    from dsl_jax.checkpoint import save_model
    from dsl_jax.configlib import load_config
    from dsl_jax.evaluation import robustness as R
    from dsl_jax.evaluation import sweep
    from dsl_jax.launch import pod_sim
    from dsl_jax.model import LLaDA
    from dsl_jax.sharding import make_mesh
    from dsl_jax.tokenizer import Tokenizer
    import jax

    ckpt = tmp_path / "llada"
    save_model(str(ckpt), LLaDA(config.preset("tiny", dtype="float32"), rngs=nnx.Rngs(params=3)))
    shutil.copy(world["tok"], ckpt / "tokenizer.json")
    texts = ["the cat sat on the mat", "a dog ran far away in the sun"]
    with open(tmp_path / "texts.txt", "w") as f:
        f.write("\n".join(texts) + "\n")

    def pod(*argv):
        lines = []
        rc = pod_sim.run(list(argv), 2, 2, timeout=120, on_line=lambda i, s: lines.append((i, s)))
        text = "\n".join(f"[{i}] {s}" for i, s in lines)
        assert rc == 0 and "Traceback" not in text, text[-3000:]
        return [(i, s) for i, s in lines if "Gloo" not in s]

    # sample: one global 4-device mesh over both hosts.
    prompt = "Summarize: the cat sat on the mat."
    lines = pod("sample", "--ckpt", str(ckpt), "--sampler", "remask", "--nfe", "4",
                "--gen-length", "8", "--prompt", prompt, "--out", str(tmp_path / "s.jsonl"),
                "--no-progress")
    assert any("wrote 1 result(s)" in s for i, s in lines if i == 0)
    assert not any("wrote" in s for i, s in lines if i == 1)
    got = json.loads(read(tmp_path / "s.jsonl"))["token_ids"]
    mesh4 = make_mesh({"fsdp": 4}, jax.devices()[:4])
    tok = Tokenizer.from_file(world["tok"])
    model = checkpoint.load(str(ckpt), mesh4)
    want = sampling.generate(model, [tok.prompt(prompt)], sampler="remask", nfe=4, gen_length=8,
                             mesh=mesh4)[0]
    assert got == want

    # robustness: a batch of 4 rows over the 4 devices of both hosts.
    pod("robustness", "--ckpt", str(ckpt), "--texts", str(tmp_path / "texts.txt"),
        "--protocol", "grid", "--modes", "random", "--rates", "0.3", "--batch-size", "4",
        "--out", str(tmp_path / "rob"), "--no-plot")
    rows = json.loads(read(tmp_path / "rob" / "robustness.json"))
    want = R.run_robustness({"llada": model}, [tok.encode(t) for t in texts],
                            R.grid_cells(["random"], [0.3]), batch_size=4)
    assert [(r["fixed"], r["kept"]) for r in rows] == [(r["fixed"], r["kept"]) for r in want]

    # eval: one batch of 3, so host 1 samples nothing; each host on its own 2 devices.
    out = tmp_path / "eval"
    args = overrides(world, out, generator="", benchmarks="xsum", samplers="remask", nfe="4",
                     num_examples=3, batch_size=3, max_words=12, gen_length=16, tokenizer="",
                     plots=False)
    pod("eval", *args, f"--config.ckpt={ckpt}")
    with open(out / "cells" / "xsum" / "remask-nfe4" / "examples.jsonl") as f:
        got = [json.loads(x)["output"] for x in f]
    settings = sweep.Settings.from_config(load_config(
        "eval_summarization", [a[len("--config."):] for a in args] + [f"ckpt={ckpt}"]))
    _, loaded = sweep.prepare(settings)
    _, _, prompts, _ = loaded["xsum"]
    mesh2 = make_mesh({"fsdp": 2}, jax.devices()[:2])
    [b] = sweep.make_batches([len(p) for p in prompts], 3)
    ids = sampling.generate(checkpoint.load(str(ckpt), mesh2), [prompts[i] for i in b],
                            sampler="remask", nfe=4, gen_length=16, mesh=mesh2, batch_size=3,
                            seed=sweep.batch_seed(0, sweep.Cell(loaded["xsum"][0], "remask", 4),
                                                  min(b)))
    want = [None] * 3
    for i, x in zip(b, ids):
        want[i] = tok.decode(x)
    assert got == want


# ---- the authors' records, lead-k baselines, intervals, tokens/s, keys --------------------

def _sweep(out_dir, **cfg):
    from dsl_jax.evaluation.sweep import Settings
    return Settings.from_config({"out_dir": str(out_dir), "plots": False, **cfg})


def test_authors_json_is_evaluated_with_its_own_prompts(world, tmp_path):
    """A file of the authors' records: its prompts (chat-templated) are what the generator
    gets, in file order, its ids are the examples' ids, ROUGE is scored against its
    references; the report has ROUGE-Lsum and intervals."""
    from dsl_jax.evaluation import metrics as M
    from dsl_jax.evaluation.sweep import run_sweep
    from dsl_jax.tokenizer import Tokenizer

    recs = [{"id": f"doc{9 - i}", "source": f"Source text number {i}.",
             "reference": f"The council voted for room {i}. Residents welcomed it.",
             "prompt": f"Please summarize, {'briefly ' * i}this:\n\nThe council met on day {i}."}
            for i in range(5)]
    path = tmp_path / "cnn_dailymail_1000.json"
    path.write_text(json.dumps(recs))
    tok = Tokenizer.from_file(world["tok"])
    seen = {}

    def fake(prompts, sampler, nfe, gen_length, seed):
        out = []
        for p in prompts:
            i = [tuple(tok.prompt(r["prompt"])) for r in recs].index(tuple(p))
            seen[i] = gen_length
            ids = tok.encode(f"The council voted for room {i}." + (" Yes" if i % 2 else ""))
            out.append(ids + [tok.eos_id] * (gen_length - len(ids)))
        return out

    s = _sweep(tmp_path / "out", tokenizer=world["tok"], benchmarks=f"json:{path}",
               samplers="remask", nfe="4", batch_size=2, generator=GENERATOR, num_examples=4)
    rows = run_sweep(s, generate_fn=fake, progress=False)
    assert seen == {0: 256, 1: 256, 2: 256, 3: 256}  # the first 4, CNN/DM's length
    with open(tmp_path / "out" / "cells" / "cnn_dailymail_1000" / "remask-nfe4" /
              "examples.jsonl") as f:
        ex = [json.loads(x) for x in f]
    assert [e["id"] for e in ex] == ["doc9", "doc8", "doc7", "doc6"]
    assert [e["prompt_tokens"] for e in ex] == [len(tok.prompt(r["prompt"])) for r in recs[:4]]
    for e, r in zip(ex, recs):
        assert e["reference"] == r["reference"]
        assert {k: e[k] for k in M.ROUGE_KEYS} == pytest.approx(M.rouge(r["reference"], e["output"]))
    [row] = rows.values()
    # outputs "The council voted for room i." (+ " Yes"): 6 (7) words against 9 -> P = 6/6,
    # R = 6/9: F = 0.8 for even i; odd: P = 6/7 -> F = 2 * 6/7 * 6/9 / (6/7 + 6/9) = 0.75
    assert row["rouge1"] == pytest.approx(100 * (0.8 + 0.75 + 0.8 + 0.75) / 4)
    assert row["rougeLsum"] == pytest.approx(row["rougeL"])  # one sentence of the reference matched
    assert row["rouge1_lo"] < row["rouge1"] < row["rouge1_hi"]
    header = (tmp_path / "out" / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"rougeLsum", "rouge1_lo", "rouge1_hi", "rougeLsum_lo", "rougeLsum_hi"} <= set(header)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "cnn_dailymail_1000 R-Lsum" in table and "with 95% bootstrap intervals" in table
    assert f"{row['rouge1']:.2f} [{row['rouge1_lo']:.2f}, {row['rouge1_hi']:.2f}]" in table


def test_lead_baselines_need_no_model(tmp_path, capsys):
    """``--config.samplers=lead1,lead3`` with no checkpoint, tokenizer or generator: one cell
    per benchmark, outputs the sources' first sentences, scored like any output."""
    from dsl_jax.cli import main
    from dsl_jax.evaluation import metrics as M

    rows = [{"document": f"Storm {i} hit the coast. Mr. Lee said it was bad! Roads closed. "
                         f"Schools stay shut.", "summary": f"Storm {i} hit the coast."}
            for i in range(3)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rc = main(["eval", f"--config.benchmarks=jsonl:{tmp_path}/a/test.jsonl,"
               f"jsonl:{tmp_path}/b/test.jsonl", "--config.samplers=lead1,lead3",
               f"--config.out_dir={out}", "--config.data_dir=unused"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(read(out / "summary.json"))
    assert [(r["benchmark"], r["sampler"], r["nfe"], r["n"]) for r in summary] == [
        ("a_test", "lead1", None, 3), ("a_test", "lead3", None, 3),
        ("b_test", "lead1", None, 3), ("b_test", "lead3", None, 3)]
    with open(out / "cells" / "a_test" / "lead3" / "examples.jsonl") as f:
        ex = [json.loads(x) for x in f]
    doc0 = rows[int(ex[0]["id"])]["document"]  # the id: the row in the file
    assert ex[0]["output"].split("\n") == [doc0[:doc0.index(".") + 1], "Mr. Lee said it was bad!",
                                           "Roads closed."]
    # lead-1 is the reference itself: every ROUGE is 100, the interval a point
    lead1 = summary[0]
    for k in M.ROUGE_KEYS:
        assert lead1[k] == lead1[f"{k}_lo"] == lead1[f"{k}_hi"] == pytest.approx(100.0)
    # lead-3, by hand: the 5 reference tokens all among the output's 13 (storm i hit the
    # coast / mr lee said it was bad / roads closed): P = 5/13, R = 1 -> F = 10/18; ROUGE-Lsum
    # alike (the reference sentence is the output's first)
    assert summary[1]["rouge1"] == pytest.approx(100 * 10 / 18)
    assert summary[1]["rougeLsum"] == pytest.approx(100 * 10 / 18)
    table = read(out / "table.md").decode()
    assert "| Lead-3 | - |" in table and "a_test R-1" in table and "b_test R-Lsum" in table
    assert not (out / "timing.json").exists()  # nothing was sampled
    assert (out / "summary.csv").read_text().splitlines()[1].startswith("a_test,lead1,,3,100.0")

    # An earlier dsl-jax's finished cell (no ROUGE-Lsum, no intervals) is scored again, not
    # refused and not resampled.
    cell = out / "cells" / "a_test" / "lead3"
    stored = json.loads(read(cell / "cell.json"))
    for k in ("rougeLsum",) + M.CI_KEYS:
        stored["summary"].pop(k)
    (cell / "cell.json").write_text(json.dumps(stored))
    assert main(["eval", f"--config.benchmarks=jsonl:{tmp_path}/a/test.jsonl,"
                 f"jsonl:{tmp_path}/b/test.jsonl", "--config.samplers=lead1,lead3",
                 f"--config.out_dir={out}", "--config.data_dir=unused"]) == 0
    assert json.loads(read(out / "summary.json")) == summary

    capsys.readouterr()
    rc = main(["eval", "--config.samplers=lead0", f"--config.out_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unknown sampler 'lead0'" in err and "lead3" in err and "\n" not in err


def test_mixed_sweep_times_tokens_and_skips_the_model_for_lead(world, tmp_path):
    from dsl_jax.evaluation.sweep import run_sweep

    calls = []

    def fake(prompts, sampler, nfe, gen_length, seed):
        calls.append(sampler)
        time.sleep(0.05)  # a cell takes >= 0.15 s: timing.json's rounded seconds are close
        return [[5] * (gen_length - 3) + [0] * 3 for _ in prompts]

    s = _sweep(tmp_path / "out", tokenizer=world["tok"], data_dir=world["data_dir"],
               benchmarks="cnn_dailymail", samplers="lead3,remask", nfe="4,8", batch_size=4,
               generator=GENERATOR, num_examples=N)
    rows = run_sweep(s, generate_fn=fake, progress=False)
    assert list(rows) == ["cnn_dailymail/lead3", "cnn_dailymail/remask-nfe4",
                          "cnn_dailymail/remask-nfe8"]
    assert set(calls) == {"remask"} and len(calls) == 2 * N // 4
    timing = json.loads(read(tmp_path / "out" / "timing.json"))
    assert set(timing) == {"cnn_dailymail/remask-nfe4", "cnn_dailymail/remask-nfe8"}
    for t in timing.values():
        assert t["examples"] == N and t["tokens"] == N * 256  # response positions
        assert t["tokens_per_s"] == pytest.approx(t["tokens"] / t["seconds"], rel=0.01)
        assert t["tokens_per_s"] == pytest.approx(256 * t["examples_per_s"], rel=1e-4)


def test_compilation_cache_for_the_sweep_only(tmp_path):
    """The sweep's persistent compilation cache: OUT_DIR/.jax_cache by default, a path, or
    off; programs compiled inside the block are stored there, none after it, and JAX's
    setting is restored."""
    import jax
    import jax.numpy as jnp

    from dsl_jax.configlib import load_config
    from dsl_jax.evaluation.generation import compilation_cache
    from dsl_jax.evaluation.sweep import Settings

    def settings(**over):
        o = {"benchmarks": "lead_only.jsonl", "samplers": "lead1", "nfe": "8",
             "out_dir": str(tmp_path / "run"), **over}
        (tmp_path / "lead_only.jsonl").write_text('{"document": "a b.", "summary": "a"}\n')
        o["benchmarks"] = f"jsonl:{tmp_path / 'lead_only.jsonl'}"
        return Settings.from_config(load_config("eval_summarization",
                                                [f"{k}={v}" for k, v in o.items()]))

    assert settings().cache_dir() == str(tmp_path / "run" / ".jax_cache")
    assert settings(compile_cache="off").cache_dir() == ""
    assert settings(compile_cache=str(tmp_path / "c")).cache_dir() == str(tmp_path / "c")

    before = jax.config.jax_compilation_cache_dir
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    cache = tmp_path / "cache"
    try:
        with compilation_cache(str(cache)):
            jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
        stored = sorted(os.listdir(cache))
        assert stored and jax.config.jax_compilation_cache_dir == before
        jax.jit(lambda x: x * 5.0 - 2.0)(jnp.arange(9.0)).block_until_ready()
        assert sorted(os.listdir(cache)) == stored  # nothing stored after the block
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
