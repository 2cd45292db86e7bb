"""`dsl-jax demo` end to end at its reduced (CI) scale: killed midway, resumed, finished."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def _env():
    # The demo runs as a user runs it: one CPU device, no fake device count.
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    return env


@pytest.mark.slow
def test_demo_quick_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "dsl_jax.cli", "demo", "--profile", "quick", "--out", str(out)]
    # Kill the demo with a real signal once the pretraining stage is recorded as done.
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    stages = out / "stages.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if stages.is_file() and "pretrain" in json.loads(stages.read_text())["done"]:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = set(json.loads(stages.read_text())["done"])
    assert {"data", "pretrain"} <= done_before and "eval DSL" not in done_before

    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[demo] pretrain: done before, skipped" in res.stderr
    done = json.loads(stages.read_text())["done"]
    assert {"convert", "dsl", "mdm", "eval DSL", "eval MDM control", "robustness"} <= set(done)
    # The real converter ran on the exported Hugging Face files.
    conv = done["convert"]["result"]
    assert os.path.isfile(os.path.join(conv["hf"], "model.safetensors.index.json"))
    assert conv["convert"]["tensors"] == conv["export"]["tensors"] > 0
    report = (out / "report.md").read_text()
    assert "| lead baseline" in report and "| DSL | DSL-SDE | 4 |" in report
    assert "| MDM pretrained | LLaDA low-conf. | 4 |" in report
    assert "Noisy-state robustness" in report and report in res.stdout
    # The claims section is stated from the run's own figures.
    sde = next(c for c in done["eval DSL"]["result"]["cells"] if c["sampler"] == "sde")
    assert "## What this run shows" in report and "## In plain words" in report
    assert f"DSL-SDE ROUGE-1 {sde['rouge1']:.1f} vs" in report
    rob = {(r["model"], r["mode"]): r for r in done["robustness"]["result"]["rows"]}
    assert (f"DSL fixes {rob['DSL', 'random']['fix_rate']:.1f}% of corrupted tokens (MDM "
            f"control {rob['MDM control', 'random']['fix_rate']:.1f}%)") in report
    for png in ("rouge1_vs_nfe.png", "robustness/robustness.png"):
        assert (out / png).stat().st_size > 1000
    rows = [json.loads(line) for line in
            (out / "eval/dsl/cells/test/sde-nfe4/examples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all("rouge1" in r and "output" in r for r in rows)
    # The adaptations trained on packed text, every position (no prompt_end_id).
    for name in ("dsl", "mdm"):
        cfg = json.loads((out / name / "config.json").read_text())
        assert cfg["data"]["pack"] is True and cfg["prompt_end_id"] < 0

    # A finished demo run again does nothing but print its report.
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("done before, skipped") == len(done)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"settings": {}, "done": {}}',
                                     '{"done": []}'])
def test_demo_refuses_a_bad_stages_file_in_one_line(tmp_path, capsys, monkeypatch, content):
    from dsl_jax import cli

    (tmp_path / "stages.json").write_text(content)
    monkeypatch.delenv("DSL_JAX_DEBUG", raising=False)
    assert cli.main(["demo", "--profile", "quick", "--out", str(tmp_path)]) == 2  # user error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("stages.json" in err[0] or "different settings" in err[0]), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stages.json"]  # nothing started


def test_demo_corpus_summaries_outrun_the_step_budget():
    """Summaries are several times longer than the smallest NFE, fit the generation length
    with room for the EOS tail, and every fact they state is in the document."""
    from dsl_jax import demo, demo_data

    s = demo.PROFILES["default"]
    for e in demo_data.train_split(200):
        words = e["summary"].split()
        assert len(words) >= 6 * min(s.nfe)
        for fact in demo_data.CITIES + demo_data.DAYS + demo_data.NAMES:
            if fact in e["summary"]:
                assert fact in e["document"], (fact, e)


def test_claims_are_stated_from_the_figures():
    """Claim 1 compares DSL-SDE with one-block remasking at NFE <= 8 only (ROUGE-1 higher,
    repetition lower: both, one or neither); claim 2 DSL's fix rate and clean kept with
    the MDM control's, per random-corruption rate."""
    from dsl_jax import demo

    s = demo.DemoSettings(nfe=(4, 16), robustness_rates=(0.1,))

    def cell(sampler, nfe, r1, rep):
        return {"sampler": sampler, "nfe": nfe, "rouge1": r1, "repetition": rep, "words": 30.0,
                "empty_rate": 0.0}

    sweeps = {"DSL": {"cells": [cell("sde", 4, 40.0, 0.02), cell("sde", 16, 10.0, 0.9),
                                cell("remask", 4, 35.0, None)]},  # None: every output empty
              "MDM control": {"cells": [cell("remask", 4, 45.0, 0.10),
                                        cell("remask", 16, 50.0, 0.0)]}}
    rob = [{"model": "DSL", "mode": "random", "rate": 0.1, "fix_rate": 30.0,
            "clean_kept_rate": 95.0},
           {"model": "MDM control", "mode": "random", "rate": 0.1, "fix_rate": 10.0,
            "clean_kept_rate": 96.5}]
    lines = demo.claims(s, sweeps, rob)
    assert len(lines) == 3 and not any("NFE 16" in x for x in lines)
    assert lines[0].startswith("- Claim 1, NFE 4, against MDM control + one-block remasking: "
                               "**partly reproduced**. DSL-SDE ROUGE-1 40.0 vs 45.0 (not higher), "
                               "adjacent-word repetition 2.0% vs 10.0% (lower)")
    assert "against DSL + one-block remasking: **partly reproduced**" in lines[1]
    assert "ROUGE-1 40.0 vs 35.0 (higher), adjacent-word repetition 2.0% vs -% (not lower)" \
        in lines[1]
    assert lines[2].startswith("- Claim 2, random corruption 10%: **partly reproduced**. DSL "
                               "fixes 30.0% of corrupted tokens (MDM control 10.0%) and keeps "
                               "95.0% of clean ones (MDM control 96.5%)")
