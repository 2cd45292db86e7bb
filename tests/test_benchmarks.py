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
