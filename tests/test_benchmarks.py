"""The CPU benchmarks run end to end at tiny sizes (figures are not asserted: timing lives
in the benchmarks, not in tests), and their two contenders agree on what they compute."""

import json
import os
import subprocess
import sys

import pytest

AGREEMENT = {"forward": "max_abs_logit_diff", "train": "loss_diff", "sample": "max_rel_x_hat_diff"}
CASES = {
    "forward": ["--preset", "tiny", "--batch", "2", "--length", "16"],
    "train": ["--preset", "tiny", "--batch", "2", "--length", "16", "--noise-dim", "8"],
    "sample": ["--preset", "tiny", "--noise-dim", "8", "--batch", "2", "--prompt-length", "48",
               "--gen-length", "8", "--nfe", "4", "--torch-prompts", "1", "--cache-refresh", "0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_writes_its_figures(name, tmp_path):
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "dsl_jax.cli", "bench", name, *CASES[name],
                        "--repeats", "1", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ratio" in r.stdout
    figures = json.loads(out.read_text())
    assert figures["ratio"] > 0
    assert figures[AGREEMENT[name]] < 1e-4  # both contenders compute the same thing
    if name == "sample":  # every row side by side; the prompt cache cuts the counted FLOPs
        rows = {(r["sampler"], r.get("cache_refresh"), r.get("remask_cache"), r.get("threshold")):
                r for r in figures["rows"]}
        assert set(rows) == {("sde", 1, None, None), ("sde", 0, None, None),
                             ("remask", None, None, None), ("remask", None, "prefix", None),
                             ("remask", None, "dual", None), ("remask", None, "dual", 0.9),
                             ("torch", None, None, None)}
        assert all(r["summaries_per_s"] > 0 for r in figures["rows"])
        off, on = rows[("sde", 1, None, None)], rows[("sde", 0, None, None)]
        # NFE 4: 5 passes over 40-56 prompt tokens (padded to 64) + 8; cached: 1 + 4 over 8
        assert off["flops_per_summary"] / on["flops_per_summary"] > 2.5


def test_cache_quality_compares_each_k_with_the_exact_sampler(tmp_path, capsys):
    """``bench cache_quality`` on a tiny DSL checkpoint: k = 1 is the reference (agreement 1,
    no ROUGE-1 difference), every other k gets a row, and the recommendation is one of them;
    a --demo folder that is no demo run is one line."""
    from flax import nnx

    from dsl_jax import config
    from dsl_jax.checkpoint import save_model
    from dsl_jax.cli import main
    from dsl_jax.dsl import DSLConfig, DSLModel
    from dsl_jax.textfiles import write_jsonl
    from eval_fixtures import make_tokenizer, xsum_rows

    ckpt = tmp_path / "dsl"
    save_model(str(ckpt), DSLModel(config.preset("tiny"), DSLConfig(noise_dim=16),
                                   rngs=nnx.Rngs(params=0)))
    make_tokenizer(str(ckpt / "tokenizer.json"))
    data = tmp_path / "test.jsonl"
    write_jsonl(str(data), [{"document": r["document"][:200], "summary": r["summary"]}
                            for r in xsum_rows(3)])
    out = tmp_path / "q.json"
    assert main(["bench", "cache_quality", "--ckpt", str(ckpt), "--data", str(data), "--ks", "0,2",
                 "--nfe", "8", "--gen-length", "8", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    cells = {c["k"]: c for c in figures["cells"]}
    assert set(cells) == {1, 0, 2} and figures["examples"] == 3
    assert cells[1]["token_agreement"] == 1.0 and cells[1]["delta_rouge1"] == 0.0
    assert all(0.0 <= c["token_agreement"] <= 1.0 for c in cells.values())
    assert figures["recommended_k"] in cells
    capsys.readouterr()
    assert main(["bench", "cache_quality", "--demo", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no stages.json" in err[0]
