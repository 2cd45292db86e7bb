"""Pods on one machine: topology-ordered and multi-slice meshes, the multi-process start,
and ``dsl-jax pod-sim`` (N processes of one command joined by ``jax.distributed`` on CPU,
gloo collectives). The simulated-pod runs carry the slow marker."""

import json
import os
import re
import signal
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from dsl_jax import cli, config, model, sharding
from dsl_jax.errors import UserError
from dsl_jax.launch import compile_check, distributed, pod_sim
from test_train import make_corpus

PY = (sys.executable, "-c")


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def by_process(out: str) -> dict[int, list[str]]:
    """Output lines of pod-sim by process id, gloo's connection notices left out."""
    lines: dict[int, list[str]] = {}
    for line in out.splitlines():
        m = re.fullmatch(r"\[(\d+)\] (.*)", line)
        assert m, f"line without a process id: {line!r}"
        if "[Gloo]" not in m.group(2):
            lines.setdefault(int(m.group(1)), []).append(m.group(2))
    return lines


# ---- meshes ---------------------------------------------------------------------------

def tpu_devices(name: str, num_slices: int = 1):
    return compile_check.topology_devices(compile_check.parse_topology(name, num_slices))


def _along_one_axis(group) -> bool:
    """Chips that form one whole line of the 4x4x4 torus (a ring with its wraparound link)."""
    coords = np.array([d.coords for d in group])
    varying = [a for a in range(3) if len(set(coords[:, a])) > 1]
    return len(varying) == 1 and sorted(coords[:, varying[0]]) == [0, 1, 2, 3]


def test_mesh_follows_the_tpu_topology():
    """On a 4x4x4 torus (v5p-128) a 4-way tensor axis is one physical line of chips (a
    ring over ICI); reshaping the device list in enumeration order (host by host) gave
    2x2 blocks instead."""
    devices = tpu_devices("v5p-128")
    mesh = sharding.make_mesh({"fsdp": 16, "tensor": 4}, devices)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    groups = mesh.devices.reshape(16, 4)
    assert all(_along_one_axis(g) for g in groups)
    assert {d.id for d in mesh.devices.reshape(-1)} == {d.id for d in devices}
    enumeration = np.array(devices, dtype=object).reshape(16, 4)
    assert not any(_along_one_axis(g) for g in enumeration)
    # A device subset the topology cannot hold keeps the given order.
    assert [d.id for d in sharding.make_mesh({"fsdp": 3}, devices[:3]).devices.reshape(-1)] == \
        [d.id for d in devices[:3]]


def test_multi_slice_mesh_puts_slices_on_dcn_axes():
    devices = tpu_devices("v5p-8", num_slices=2)  # 2 slices of 4 chips
    assert sharding.num_slices(devices) == 2
    mesh = sharding.make_mesh(None, devices)  # default: slices on dcn_data, fsdp within
    assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == \
        {"dcn_data": 2, "dcn_fsdp": 1, "data": 1, "fsdp": 4, "tensor": 1}
    for s in range(2):  # each dcn_data index holds exactly one slice's chips
        assert {d.slice_index for d in mesh.devices[s].reshape(-1)} == {s}
    mesh = sharding.make_mesh({"dcn_fsdp": -1, "fsdp": 2, "tensor": 2}, devices)
    assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == \
        {"dcn_data": 1, "dcn_fsdp": 2, "data": 1, "fsdp": 2, "tensor": 2}
    assert {d.slice_index for d in mesh.devices[0, 1].reshape(-1)} == {1}
    # Parameters: fsdp then dcn_fsdp; the batch over every batch axis, in mesh order.
    assert sharding.spec_for(("embed", "mlp"), (8, 8), mesh) == \
        jax.sharding.PartitionSpec(("fsdp", "dcn_fsdp"), "tensor")
    assert sharding.spec_for(("embed",), (2,), mesh) == jax.sharding.PartitionSpec("fsdp")
    assert sharding.batch_axes(mesh) == ("dcn_data", "dcn_fsdp", "data", "fsdp")
    assert sharding.batch_axes_size(mesh) == 4
    with pytest.raises(UserError, match="dcn_data x dcn_fsdp = 4, but the devices span 2 slices"):
        sharding.make_mesh({"dcn_data": 4}, devices)
    with pytest.raises(UserError, match="a slice has 4"):
        sharding.make_mesh({"fsdp": 8}, devices)


@pytest.mark.slow
def test_dcn_axes_on_one_slice_compute_the_same_logits(mesh8):
    """On one slice dcn sizes above 1 are outer axes of its devices: a model sharded over
    (dcn_data, dcn_fsdp, fsdp, tensor) gives the logits of the plain 8-device mesh."""
    mesh = sharding.make_mesh(sharding.parse_mesh("dcn_data=2,dcn_fsdp=2,tensor=2"))
    assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == \
        {"dcn_data": 2, "dcn_fsdp": 2, "data": 1, "fsdp": 1, "tensor": 2}
    cfg = config.preset("tiny", dtype="float32")
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 16)).astype(np.int32)
    outs = []
    for m in (mesh8, mesh):
        net = model.create(cfg, m, seed=0)
        with jax.set_mesh(m):
            x = jax.device_put(ids, sharding.batch_sharding(m))
            outs.append(np.asarray(net(x)))
    specs = [str(v.sharding.spec) for v in jax.tree.leaves(nnx.state(net, nnx.Param))]
    assert any("'fsdp'" not in s and "dcn_fsdp" in s for s in specs), specs
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


# ---- multi-host saves: one temporary directory, committed by the lead ---------------------

def test_atomic_dir_removes_a_dead_saves_leftover_and_keeps_the_old_on_error(tmp_path):
    """The temporary directory is named after the target alone (all hosts agree on it):
    one left by a save that died is removed by the next; a failing save leaves the
    target as it was and no temporary directory."""
    from dsl_jax import checkpoint

    target = tmp_path / "ck"
    tmp = checkpoint.temp_dir_for(str(target))
    assert tmp == str(tmp_path / ".ck.tmp")
    os.makedirs(tmp)
    (tmp_path / ".ck.tmp" / "half-written").write_text("x")  # a dead save's leftover
    with checkpoint.atomic_dir(str(target)) as d:
        assert d == tmp and os.listdir(d) == []
        (tmp_path / ".ck.tmp" / "a").write_text("new")
    assert os.listdir(target) == ["a"] and sorted(os.listdir(tmp_path)) == ["ck"]
    with pytest.raises(RuntimeError, match="boom"):
        with checkpoint.atomic_dir(str(target), overwrite=True) as d:
            (tmp_path / ".ck.tmp" / "b").write_text("partial")
            raise RuntimeError("boom")
    assert os.listdir(target) == ["a"] and sorted(os.listdir(tmp_path)) == ["ck"]


@pytest.mark.gcs
def test_atomic_dir_on_a_bucket_writes_the_marker_last(gcs, monkeypatch):
    """A bucket has no atomic rename: the commit copies objects one by one. The server
    gone mid-copy leaves no marker (``dsl_jax.json``), so the half-copied directory is
    not taken for a checkpoint; the next save completes it."""
    import uuid

    from dsl_jax import checkpoint, storage

    target = f"{gcs}/{uuid.uuid4().hex[:8]}/ck"

    def write(d):
        storage.write_text(storage.join(d, "params", "x"), "arrays")
        storage.write_text(storage.join(d, checkpoint.META_FILE), "{}")

    real = storage.copytree

    def copy_then_fail(src, dst, last=None):  # every object but the marker (copied last)
        for rel in storage._files_under(src):
            if rel != last:
                storage.write_bytes(storage.join(dst, rel),
                                    storage.read_bytes(storage.join(src, rel)))
        raise OSError("server gone")

    monkeypatch.setattr(storage, "copytree", copy_then_fail)
    with pytest.raises(OSError, match="server gone"):
        with checkpoint.atomic_dir(target, marker=checkpoint.META_FILE) as d:
            write(d)
    assert storage.isfile(f"{target}/params/x") and not checkpoint.is_checkpoint(target)
    monkeypatch.setattr(storage, "copytree", real)
    with checkpoint.atomic_dir(target, overwrite=True, marker=checkpoint.META_FILE) as d:
        write(d)
    assert checkpoint.is_checkpoint(target)
    assert storage.read_text(f"{target}/{checkpoint.META_FILE}") == "{}"
    assert not storage.exists(checkpoint.temp_dir_for(target))


# ---- joining a multi-process run --------------------------------------------------------

def test_initialize_kwargs_from_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert distributed.initialize_kwargs(env) == {
        "coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3}
    assert distributed.initialize_kwargs({}) == {}  # JAX detects the cluster (TPU VM)
    # Only the address (SLURM, Open MPI, GKE): JAX finds the processes itself.
    assert distributed.initialize_kwargs({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}) == {
        "coordinator_address": "10.0.0.2:1234"}
    assert distributed.initialize_kwargs({"JAX_PROCESS_ID": "2"}) == {"process_id": 2}
    for bad, message in [({"JAX_PROCESS_ID": "4"}, r"must be in \[0, JAX_NUM_PROCESSES=4\)"),
                         ({"JAX_PROCESS_ID": "-1", "JAX_NUM_PROCESSES": None},
                          r"JAX_PROCESS_ID=-1 must be in \[0"),
                         ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES=0 must be >= 1"),
                         ({"JAX_NUM_PROCESSES": "two"}, "must be an integer"),
                         ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2"}, "expected host:port")]:
        e = {k: v for k, v in {**env, **bad}.items() if v is not None}
        with pytest.raises(UserError, match=message):
            distributed.initialize_kwargs(e)


def test_maybe_initialize_passes_the_processes_and_uses_gloo_on_cpu(monkeypatch):
    calls, updates = [], []
    monkeypatch.setattr(distributed, "_started", False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda k, v: updates.append((k, v)))
    env = {"DSL_JAX_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:5", "JAX_PLATFORMS":
           "cpu", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert distributed.maybe_initialize(env) is True
    assert calls == [{"coordinator_address": "127.0.0.1:5", "num_processes": 2, "process_id": 1}]
    assert updates == [("jax_cpu_collectives_implementation", "gloo")]


def test_pod_sim_process_environment():
    env = pod_sim.process_env(1, 2, 4321, 4, {"XLA_FLAGS": "--xla_foo=1 "
                                              "--xla_force_host_platform_device_count=8"})
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert (env["DSL_JAX_DISTRIBUTED"], env["JAX_COORDINATOR_ADDRESS"], env["JAX_NUM_PROCESSES"],
            env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]) == ("1", "127.0.0.1:4321", "2", "1", "cpu")
    assert distributed.initialize_kwargs(env)["process_id"] == 1


# ---- pod-sim's processes: output, exit status, ending them ----------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pod_sim_lines_and_worst_status():
    lines = []
    code = ("import os, sys; i = int(os.environ['JAX_PROCESS_ID']); print('hello', i, "
            "os.environ['XLA_FLAGS'].split('=')[-1]); print('err', i, file=sys.stderr); "
            "sys.exit(3 * i)")
    status = pod_sim.run([code], 2, 5, on_line=lambda i, s: lines.append((i, s)), program=PY)
    assert status == 3
    assert sorted(lines) == [(0, "err 0"), (0, "hello 0 5"), (1, "err 1"), (1, "hello 1 5")]
    assert pod_sim.exit_status(-9) == 137 and pod_sim.exit_status(2) == 2


def test_pod_sim_ends_the_others_when_one_fails_and_on_timeout(tmp_path):
    code = ("import os, sys, time; i = int(os.environ['JAX_PROCESS_ID']); "
            f"open(os.path.join({str(tmp_path)!r}, str(i)), 'w').write(str(os.getpid())); "
            "time.sleep(0.5); sys.exit(5) if i == 0 else time.sleep(120)")
    t0 = time.monotonic()
    assert pod_sim.run([code], 2, 1, program=PY, grace=2) == 5  # not process 1's SIGTERM
    assert time.monotonic() - t0 < 20
    pid1 = int((tmp_path / "1").read_text())
    assert not _alive(pid1)
    # A process that ignores SIGTERM is killed after the grace period.
    code = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"open(os.path.join({str(tmp_path)!r}, 't' + os.environ['JAX_PROCESS_ID']), 'w')"
            ".write(str(os.getpid())); time.sleep(120)")
    t0 = time.monotonic()
    assert pod_sim.run([code], 2, 1, timeout=3, program=PY, grace=1) == pod_sim.TIMEOUT_STATUS
    assert time.monotonic() - t0 < 20
    for i in range(2):
        assert not _alive(int((tmp_path / f"t{i}").read_text()))


@pytest.mark.parametrize("argv, message", [
    (["--"], "no command given"),
    (["--", "launch", "--tpu", "x"], "launch runs on this machine alone"),
    (["--", "fly"], "'fly' is not a dsl-jax subcommand"),
    (["-n", "0", "--", "forward"], "-n must be at least 1"),
])
def test_pod_sim_bad_input(capsys, argv, message):
    rc, out, err = run_cli(["pod-sim", *argv], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


# ---- simulated pods (2 processes x 4 CPU devices) --------------------------------------

@pytest.mark.slow
def test_pod_sim_forward_two_processes_see_8_devices_and_agree(capsys):
    argv = ["forward", "--model", "tiny", "--batch", "8", "--length", "16"]
    rc, out, err = run_cli(["pod-sim", "-n", "2", "--devices-per-process", "4", "--timeout",
                            "120", "--", *argv], capsys)
    assert rc == 0, out + err
    lines = by_process(out)
    assert sorted(lines) == [0, 1]
    for i in (0, 1):
        assert any("mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in s for s in lines[i]), lines[i]
    logits = {i: [s for s in lines[i] if s.startswith(("logits:", "argmax"))] for i in (0, 1)}
    assert len(logits[0]) == 2 and logits[0] == logits[1]
    # ... and the logits of one process with the same 8 devices.
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0 and [s for s in out.splitlines() if s.startswith(("logits:", "argmax"))] == \
        logits[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder with data.jsonl, tok/tokenizer.json and init/ (the training tests' corpus)."""
    return make_corpus(tmp_path_factory.mktemp("pod"))["dir"]


def train_overrides(d, out, steps=4):
    return {"model": "tiny", "init_ckpt": f"{d}/init", "data.files": f"{d}/data.jsonl",
            "data.tokenizer": f"{d}/tok/tokenizer.json", "steps": steps, "global_batch": 8,
            "seq_len": 32, "dsl.noise_dim": 16, "dsl.chunk_positions": 16, "optimizer.lr": 3e-3,
            "optimizer.warmup_steps": 2, "out_dir": str(out), "save_every": 2, "log_every": 1,
            "eval.every": 0, "micro_batches": 2, "mesh": "fsdp=4,tensor=2"}


def _children_running(marker: str) -> list[int]:
    """PIDs of this process's children whose command line holds ``marker``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and marker in cmd:
            pids.append(int(name))
    return pids


@pytest.mark.slow
def test_pod_sim_sigterm_on_both_is_one_coordinated_save_and_resumes(corpus, tmp_path):
    """SIGTERM to both processes of a 2 x 4 pod-sim run, a few steps in: JAX's preemption
    service names one step, both hosts save it (parameters and each host's data state)
    and stop with one line; the same command started again resumes from that step."""
    import threading

    out = tmp_path / "run"
    over = {**train_overrides(corpus, out, steps=400), "save_every": 200}
    argv = ["train", "--config", "configs/dsl_small.py", "--no-progress",
            *[f"--config.{k}={v}" for k, v in over.items()]]
    lines: list[tuple[int, str]] = []
    sent: list[int] = []

    def terminate_both_after_step_3():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with open(out / "metrics.jsonl") as f:
                    done = max((json.loads(r).get("step", 0) for r in f), default=0)
            except (OSError, ValueError):
                done = 0
            pids = _children_running("dsl_jax.cli")
            if done >= 3 and len(pids) == 2:
                for pid in pids:
                    os.kill(pid, signal.SIGTERM)
                sent.extend(pids)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=terminate_both_after_step_3, daemon=True)
    watcher.start()
    status = pod_sim.run(argv, 2, 4, timeout=120, on_line=lambda i, s: lines.append((i, s)))
    watcher.join(timeout=5)
    text = "\n".join(f"[{i}] {s}" for i, s in lines)
    assert len(sent) == 2, text[-3000:]
    stops = {i: re.search(r"stopped by SIGTERM at step (\d+)", s) for i, s in lines}
    stops = {i: int(m.group(1)) for i, m in stops.items() if m}
    assert sorted(stops) == [0, 1] and stops[0] == stops[1], text[-3000:]
    assert status == 2, text[-3000:]  # the one-line stop of a UserError, on both
    step = stops[0]
    assert 3 <= step < 200
    assert not any("Traceback" in s for _, s in lines), text[-3000:]
    # One save, at that step: the checkpoint and both hosts' data states.
    assert sorted(int(n) for n in os.listdir(out / "checkpoints") if n.isdigit()) == [step]
    assert sorted(os.listdir(out / "data_state" / str(step))) == ["stream_0.json", "stream_1.json"]
    # Started again (to step + 2), the run resumes from the save and finishes.
    over["steps"] = step + 2
    argv = ["train", "--config", "configs/dsl_small.py", "--no-progress",
            *[f"--config.{k}={v}" for k, v in over.items()]]
    lines.clear()
    status = pod_sim.run(argv, 2, 4, timeout=120, on_line=lambda i, s: lines.append((i, s)))
    text = "\n".join(f"[{i}] {s}" for i, s in lines)
    assert status == 0, text[-3000:]
    with open(out / "metrics.jsonl") as f:
        logged = [r["step"] for r in map(json.loads, f) if "loss" in r]
    assert logged[-2:] == [step + 1, step + 2] and logged.count(step + 1) == 1
    assert os.path.isfile(out / "final" / "dsl_jax.json")
