"""A simulated pod with everything in a bucket: 2 processes x 4 CPU devices (``dsl-jax
pod-sim``) run convert -> train (every process SIGKILLed mid-run, then restarted) ->
sample -> eval -> robustness with every path under gs:// on the local fake GCS server,
and give bit for bit what one uninterrupted 8-device process gives on local disk.

Both runs use gloo collectives (the reference is ``pod-sim -n 1``, one process of 8
devices): XLA's in-process collectives add the devices' partial sums in another order
(float32 sums differ in the last bits), so identity across process counts holds for one
collective implementation. The data is read as 2 input streams in both runs
(``data.streams=2``), so the batches do not depend on the number of hosts.
"""

import json
import os
import re
import signal
import threading
import time
import uuid

import jax
import numpy as np
import pytest

from dsl_jax import checkpoint, storage
from dsl_jax.errors import UserError
from dsl_jax.launch import pod_sim
from test_pod import _children_running, corpus, train_overrides  # noqa: F401 (fixture)
from test_train import WORDS

pytestmark = [pytest.mark.slow, pytest.mark.gcs]
RESUMED = re.compile(r"^\[0\] .*resuming from the checkpoint of step (\d+)$")


def _run(argv, n: int, lines: list, timeout: int = 150) -> int:
    """``dsl-jax ARGV`` as a simulated pod of ``n`` processes over 8 devices."""
    return pod_sim.run(argv, n, 8 // n, timeout=timeout,
                       on_line=lambda i, s: lines.append(f"[{i}] {s}"))


def _inputs(corpus, local: str) -> None:
    """The pipeline's inputs in ``local``: a Hugging Face LLaDA folder, training text, a
    tokenizer, prompts, a summarization benchmark and clean texts."""
    from dsl_jax.conversion.export import export

    os.makedirs(local)
    export(str(corpus / "init"), os.path.join(local, "hf"), progress=False)
    for name, src in (("data.jsonl", corpus / "data.jsonl"),
                      ("tokenizer.json", corpus / "tok" / "tokenizer.json")):
        with open(src, "rb") as f, open(os.path.join(local, name), "wb") as g:
            g.write(f.read())
    rows = [{"document": " ".join(WORDS[i:] + WORDS[:i]), "summary": " ".join(WORDS[i:i + 5])}
            for i in range(6)]
    texts = {"prompts.jsonl": [{"prompt": " ".join(WORDS[i:i + 6])} for i in range(3)],
             "bench.jsonl": rows, "texts.jsonl": [{"text": r["document"]} for r in rows[:3]]}
    for name, recs in texts.items():
        with open(os.path.join(local, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)


def _pipeline(n: int, inp: str, out: str, corpus, kill: bool = False) -> list[str]:
    """convert, train (SIGKILL every process once the step-2 checkpoint is complete and
    step 3 is logged, then the same command again), sample, eval, robustness."""
    lines: list[str] = []

    def ok(argv, timeout=150):
        status = _run(argv, n, lines, timeout)
        assert status == 0, "\n".join(lines[-60:])

    ok(["convert", "--hf", f"{inp}/hf", "--out", f"{out}/llada", "--dtype", "float32",
        "--no-progress"])
    over = {**train_overrides(corpus, f"{out}/run", steps=8), "init_ckpt": f"{out}/llada",
            "data.files": f"{inp}/data.jsonl", "data.tokenizer": f"{inp}/tokenizer.json",
            "data.streams": 2, "data.shuffle_buffer": 4}
    train = ["train", "--config", "configs/dsl_small.py", "--no-progress",
             *[f"--config.{k}={v}" for k, v in over.items()]]
    if kill:
        killed: list[int] = []

        def kill_all_after_step_3():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                try:
                    logged = [json.loads(x)["step"] for x in
                              storage.read_text(f"{out}/run/metrics.jsonl").splitlines()]
                    saved = storage.isfile(f"{out}/run/checkpoints/2/commit_success.txt")
                except (OSError, ValueError, UserError):  # not written yet
                    logged, saved = [], False
                pids = _children_running("dsl_jax.cli")
                if saved and max(logged, default=0) >= 3 and len(pids) == n:
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    killed.extend(pids)
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_all_after_step_3, daemon=True)
        watcher.start()
        status = _run(train, n, lines)
        watcher.join(timeout=5)
        assert len(killed) == n and status == 137, "\n".join(lines[-60:])
        assert not storage.exists(f"{out}/run/final")
    ok(train)
    ok(["sample", "--ckpt", f"{out}/run/final", "--tokenizer", f"{inp}/tokenizer.json",
        "--prompts-file", f"{inp}/prompts.jsonl", "--out", f"{out}/samples.jsonl",
        "--sampler", "sde", "--nfe", "4", "--gen-length", "8", "--no-progress"])
    ok(["eval", "--config", "configs/eval_summarization.py",
        f"--config.ckpt={out}/run/final", f"--config.tokenizer={inp}/tokenizer.json",
        f"--config.benchmarks=jsonl:{inp}/bench.jsonl", "--config.samplers=sde,remask",
        "--config.nfe=4", "--config.num_examples=5", "--config.batch_size=2",
        "--config.gen_length=8", f"--config.out_dir={out}/eval", "--config.plots=false"])
    ok(["robustness", "--ckpt", f"{out}/llada", "--ckpt", f"{out}/run/final", "--names",
        "llada,dsl", "--tokenizer", f"{inp}/tokenizer.json", "--texts", f"{inp}/texts.jsonl",
        "--out", f"{out}/rob", "--protocol", "grid", "--rates", "0.5", "--modes", "random",
        "--max-length", "16", "--no-plot"])
    return lines


def _losses(out: str) -> dict:
    """step -> loss of a run's metrics.jsonl."""
    return {r["step"]: r["loss"] for r in
            map(json.loads, storage.read_text(f"{out}/metrics.jsonl").splitlines()) if "loss" in r}


def _params(path: str) -> dict:
    from dsl_jax.sharding import make_mesh

    model = checkpoint.load(path, make_mesh(devices=jax.devices()[:1]))
    from flax import nnx
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model)))}


def test_pod_on_a_bucket_equals_one_process_on_local_disk(corpus, gcs, tmp_path):
    local_in = str(tmp_path / "in")
    _inputs(corpus, local_in)
    root = f"{gcs}/{uuid.uuid4().hex[:8]}"
    storage.copytree(local_in, f"{root}/in")

    t0 = time.monotonic()
    _pipeline(1, local_in, str(tmp_path / "out"), corpus)
    t1 = time.monotonic()
    pod_lines = _pipeline(2, f"{root}/in", f"{root}/out", corpus, kill=True)
    t2 = time.monotonic()
    print(f"one process: {t1 - t0:.0f} s; pod with a kill: {t2 - t1:.0f} s")
    assert not any("Traceback" in s for s in pod_lines), "\n".join(pod_lines[-60:])
    pod, ref = f"{root}/out", str(tmp_path / "out")

    # Training: the same losses at every step, the same parameters bit for bit; the pod's
    # restart resumed from a saved step (what the killed run logged after it is dropped).
    pod_losses, ref_losses = _losses(f"{pod}/run"), _losses(f"{ref}/run")
    assert sorted(ref_losses) == list(range(1, 9)) and pod_losses == ref_losses
    logged = [json.loads(x)["step"] for x in
              storage.read_text(f"{pod}/run/metrics.jsonl").splitlines()]
    assert logged == list(range(1, 9)), logged
    resumed = [int(m.group(1)) for m in map(RESUMED.search, pod_lines) if m]
    assert len(resumed) == 1 and resumed[0] >= 2 and resumed[0] % 2 == 0, resumed
    print(f"resumed from step {resumed[0]}")
    a, b = _params(f"{pod}/run/final"), _params(f"{ref}/run/final")
    assert a.keys() == b.keys() and "['converter']['w']" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sorted(storage.listdir(f"{pod}/run/data_state/8")) == ["stream_0.json",
                                                                  "stream_1.json"]
    # Sampling, the sweep and the robustness test: identical files.
    same = ["samples.jsonl", "eval/summary.csv", "eval/summary.json", "eval/table.md",
            "eval/cells/bench/sde-nfe4/examples.jsonl",
            "rob/robustness.json", "rob/robustness.csv", "rob/robustness.md"]
    for rel in same:
        with open(os.path.join(ref, rel), "rb") as f:
            assert storage.read_bytes(f"{pod}/{rel}") == f.read(), rel
    cell = "eval/cells/bench/remask-nfe4/cell.json"  # (its fingerprint names the paths)
    with open(os.path.join(ref, cell)) as f:
        want = {k: v for k, v in json.load(f).items() if k != "fingerprint"}
    assert {k: v for k, v in json.loads(storage.read_text(f"{pod}/{cell}")).items()
            if k != "fingerprint"} == want
    samples = [json.loads(x) for x in storage.read_text(f"{pod}/samples.jsonl").splitlines()]
    assert len(samples) == 3 and all(s["output"] for s in samples)
    # Nothing temporary left in the bucket.
    assert not [p for p in storage.glob(f"{pod}/**") if ".tmp" in p]


# ---- faults: one host killed during a save, the server gone, no permission ------------------

def _pid_of_process(i: int) -> int | None:
    """PID of simulated-pod process ``i`` (a child of this test running dsl_jax.cli)."""
    for pid in _children_running("dsl_jax.cli"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x)
        except OSError:
            continue
        if env.get(b"JAX_PROCESS_ID") == str(i).encode():
            return pid
    return None


def _when(condition, action, timeout: float = 120) -> threading.Thread:
    """A thread that runs ``action()`` once ``condition()`` holds (polled)."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    action()
                    return
            except (OSError, UserError):
                pass
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _train_argv(corpus, out: str, steps: int = 8) -> list[str]:
    over = train_overrides(corpus, out, steps=steps)
    return ["train", "--config", "configs/dsl_small.py", "--no-progress",
            *[f"--config.{k}={v}" for k, v in over.items()]]


def _complete_steps(run: str) -> list[int]:
    """The run's checkpoint steps that orbax finished (on a bucket: ``commit_success.txt``
    written last in the step's directory)."""
    root = f"{run}/checkpoints"
    return sorted(int(n) for n in storage.listdir(root) if n.isdigit() and
                  storage.isfile(f"{root}/{n}/commit_success.txt"))


def test_sigkill_of_one_process_during_a_save_keeps_the_last_checkpoint(corpus, gcs, tmp_path,
                                                                       monkeypatch):
    """Process 1 of 2 SIGKILLed as it starts the step-4 save (requests slowed by a proxy so
    that the save is under way): the pod ends, the step-2 checkpoint stays the latest
    complete one, and the same command resumes from it and finishes."""
    from gcs_faults import Proxy, client_env

    run = f"{gcs}/{uuid.uuid4().hex[:8]}/run"
    argv = _train_argv(corpus, run)
    assert not storage.exists(run)  # (this process's gcsfs client now talks to the server)
    proxy = Proxy(os.environ["STORAGE_EMULATOR_HOST"], delay=0.02)
    real = dict(os.environ)
    for k, v in client_env({}, proxy.url).items():
        monkeypatch.setenv(k, v)  # the pod's clients only: this process's gcsfs is set up
    killed = []
    watcher = _when(lambda: storage.isfile(f"{run}/data_state/4/stream_1.json") and
                    _complete_steps(run) == [2],  # the step-4 save is next, or under way
                    lambda: (killed.append(_pid_of_process(1)),
                             os.kill(killed[-1], signal.SIGKILL)))
    lines: list[str] = []
    status = _run(argv, 2, lines)
    watcher.join(timeout=5)
    proxy.go_away()
    for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL"):
        monkeypatch.setenv(k, real[k])
    assert killed and status == 137, "\n".join(lines[-40:])
    assert _complete_steps(run) == [2], storage.glob(f"{run}/checkpoints/**")
    lines.clear()
    assert _run(argv, 2, lines) == 0, "\n".join(lines[-40:])
    assert [int(m.group(1)) for m in map(RESUMED.search, lines) if m] == [2]
    assert checkpoint.is_checkpoint(f"{run}/final") and _complete_steps(run)[-1] == 8


def test_server_gone_mid_save_is_one_line_and_the_last_checkpoint_survives(corpus, gcs,
                                                                          monkeypatch):
    """The storage server goes away as the step-4 save starts: the run stops with one line
    (after the clients' retries), and with the server back the step-2 checkpoint is intact
    and the run resumes from it."""
    from gcs_faults import Proxy, client_env

    run = f"{gcs}/{uuid.uuid4().hex[:8]}/run"
    argv = _train_argv(corpus, run)
    assert not storage.exists(run)  # (this process's gcsfs client now talks to the server)
    proxy = Proxy(os.environ["STORAGE_EMULATOR_HOST"])
    real = dict(os.environ)
    for k, v in client_env({}, proxy.url).items():
        monkeypatch.setenv(k, v)
    watcher = _when(lambda: storage.isfile(f"{run}/data_state/4/stream_0.json") and
                    _complete_steps(run) == [2], proxy.go_away)
    lines: list[str] = []
    t0 = time.monotonic()
    status = _run(argv, 1, lines, timeout=360)
    watcher.join(timeout=5)
    print(f"server gone: stopped after {time.monotonic() - t0:.0f} s")
    errors = [s for s in lines if "error:" in s]
    assert status in (1, 2) and len(errors) == 1, "\n".join(lines[-40:])
    assert errors[0].startswith("[0] dsl-jax train: error: ") and "Traceback" not in \
        "\n".join(lines)
    for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL"):
        monkeypatch.setenv(k, real[k])
    assert _complete_steps(run) == [2]
    lines.clear()
    assert _run(argv, 1, lines) == 0, "\n".join(lines[-40:])
    assert [int(m.group(1)) for m in map(RESUMED.search, lines) if m] == [2]


def test_no_permission_and_no_bucket_are_one_line(corpus, gcs, tmp_path):
    """A bucket that answers 403 to everything, and one that does not exist: each
    command stops with one line naming the path, and writes nothing."""
    import subprocess
    import sys

    from gcs_faults import Forbidding, client_env

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cases = [
        _train_argv(corpus, "gs://locked-bucket/run"),
        ["convert", "--hf", str(tmp_path), "--out", "gs://locked-bucket/ck"],
        ["sample", "--ckpt", "gs://locked-bucket/ck", "--prompt", "hi"],
    ]
    with Forbidding() as server:
        env = client_env({**os.environ, "JAX_PLATFORMS": "cpu"}, server.url)
        for argv in cases:
            r = subprocess.run([sys.executable, "-m", "dsl_jax.cli", *argv], capture_output=True,
                               text=True, cwd=repo, env=env, timeout=120)
            err = r.stderr.strip().splitlines()
            assert r.returncode in (1, 2) and len(err) == 1, r.stderr[-2000:]
            assert "locked-bucket" in err[0] and "Traceback" not in r.stderr, err
            assert "permission denied" in err[0], err
    r = subprocess.run([sys.executable, "-m", "dsl_jax.cli",
                        *_train_argv(corpus, "gs://no-such-bucket-p4d/run")],
                       capture_output=True, text=True, cwd=repo,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "no-such-bucket-p4d" in err[0], r.stderr
