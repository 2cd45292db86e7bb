"""launch/: the gcloud wrapper, the multi-host start, and the TPU compile check.

The compile checks run the real TPU compiler (libtpu) on compile-only topology
devices; they use the tiny preset (a few seconds) and an 8B forward that the
compiler refuses at once for one 16 GiB chip. The 8B forward/train compiles that
take minutes live in ``dsl-jax bench compile`` (benchmarks/compile.py).
"""

import json
import shlex

import jax
import jax.numpy as jnp
import pytest

from dsl_jax import cli
from dsl_jax.commands import compile_check as compile_check_command
from dsl_jax.errors import UserError
from dsl_jax.launch import compile_check, distributed


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---- dsl-jax launch --------------------------------------------------------------------

def test_launch_dry_run_prints_quoted_gcloud_command(capsys):
    rc, out, err = run_cli(
        ["launch", "--tpu", "pod-1", "--zone", "us-east5-a", "--project", "my-proj", "--dry-run",
         "--env", "WANDB_MODE=off line", "--remote-dir", "~/my dir", "--",
         "train", "--config", "configs/dsl_llada_8b.py", "--config.out_dir=gs://b/it's here"], capsys)
    assert rc == 0, err
    argv = shlex.split(out.strip())  # what a shell would pass to gcloud
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1"]
    assert argv[6:12] == ["--zone", "us-east5-a", "--project", "my-proj", "--worker=all", "--command"]
    remote = argv[12]
    assert len(argv) == 13
    assert remote.startswith("cd ~/'my dir' && . .venv/bin/activate && export DSL_JAX_DISTRIBUTED=1 ")
    # The worker's shell must see exactly the words given after --.
    inner = remote.split(" && ")[-1]
    assert shlex.split(inner) == ["dsl-jax", "train", "--config", "configs/dsl_llada_8b.py",
                                  "--config.out_dir=gs://b/it's here"]
    env_part = remote.split(" && ")[2]
    assert shlex.split(env_part) == ["export", "DSL_JAX_DISTRIBUTED=1", "WANDB_MODE=off line"]


def test_launch_options(capsys, monkeypatch):
    monkeypatch.setenv("MY_TOKEN_X", "a b")
    rc, out, _ = run_cli(["launch", "--tpu", "t", "--zone", "z", "--dry-run", "--venv", "",
                          "--no-distributed", "--pass-env", "MY_TOKEN_X", "--worker", "0,1",
                          "--gcloud-arg=--internal-ip", "--", "compile-check", "--topology",
                          "v5p-16"], capsys)
    assert rc == 0
    argv = shlex.split(out.strip())
    assert "--project" not in argv and "--worker=0,1" in argv and "--internal-ip" in argv
    assert argv[-1] == ("cd ~/dsl-jax && export MY_TOKEN_X='a b' && "
                        "dsl-jax compile-check --topology v5p-16")


@pytest.mark.parametrize("argv, message", [
    (["--"], "no command given"),
    ([], "no command given"),
    (["--", "trian"], "'trian' is not a dsl-jax subcommand"),
    (["--env", "NOEQUALS", "--", "train"], "expected KEY=VALUE"),
    (["--pass-env", "SURELY_UNSET_VAR_123", "--", "train"], "not set on this machine"),
])
def test_launch_bad_input_one_line(capsys, argv, message):
    rc, out, err = run_cli(["launch", "--tpu", "t", "--zone", "z", "--dry-run", *argv], capsys)
    assert rc == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_launch_missing_gcloud(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    rc, out, err = run_cli(["launch", "--tpu", "t", "--zone", "z", "--", "train"], capsys)
    assert rc == 2
    assert err.strip().splitlines() == [
        "dsl-jax launch: error: gcloud: not found; install the Google Cloud CLI "
        "(https://cloud.google.com/sdk/docs/install) or pass --gcloud PATH"]


def test_launch_runs_gcloud_with_the_printed_argv(tmp_path, capsys):
    fake = tmp_path / "gcloud"
    record = tmp_path / "argv.json"
    fake.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                    f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\nsys.exit(3)\n")
    fake.chmod(0o755)
    base = ["launch", "--tpu", "t", "--zone", "z", "--gcloud", str(fake), "--", "eval", "--x", "a b"]
    rc, dry, _ = run_cli(base[:5] + ["--dry-run"] + base[5:], capsys)
    assert rc == 0
    rc, _, _ = run_cli(base, capsys)
    assert rc == 3  # gcloud's exit status is passed on
    assert json.loads(record.read_text()) == shlex.split(dry)[1:]


# ---- multi-host start ---------------------------------------------------------------

def test_distributed_detection():
    assert not distributed.should_initialize({})
    assert not distributed.should_initialize({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert distributed.should_initialize({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert distributed.should_initialize({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"})
    assert distributed.should_initialize({"DSL_JAX_DISTRIBUTED": "1"})
    assert not distributed.should_initialize({"DSL_JAX_DISTRIBUTED": "0",
                                              "TPU_WORKER_HOSTNAMES": "a,b"})
    with pytest.raises(UserError, match="expected 1 or 0"):
        distributed.should_initialize({"DSL_JAX_DISTRIBUTED": "maybe"})


def test_distributed_noop_off_pod(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for k in ("DSL_JAX_DISTRIBUTED", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
              "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.maybe_initialize() is False
    assert calls == []
    assert distributed.is_lead() and distributed.process_count() == 1
    # On a pod (as launch sets it) it starts jax.distributed, once.
    monkeypatch.setattr(distributed, "_started", False)
    assert distributed.maybe_initialize({"DSL_JAX_DISTRIBUTED": "1"}) is True
    assert distributed.maybe_initialize({"DSL_JAX_DISTRIBUTED": "1"}) is True
    assert calls == [{}]


# ---- topology names -------------------------------------------------------------------

@pytest.mark.parametrize("name, libtpu, chips", [
    ("v5p-8", "v5p:2x2x1", 4), ("v5p-16", "v5p:2x2x2", 8), ("v5p-32", "v5p:2x2x4", 16),
    ("v5p-128", "v5p:4x4x4", 64), ("v4-8", "v4:2x2x1", 4), ("v4-32", "v4:2x2x4", 16),
    ("v5e-1", "v5e:1x1", 1), ("v5e-16", "v5e:4x4", 16), ("v5litepod-8", "v5e:2x4", 8),
    ("v6e-8", "v6e:2x4", 8), ("v6e-256", "v6e:16x16", 256), ("V5P:2x2x4", "v5p:2x2x4", 16),
    ("v5p:4x4x4_twisted", "v5p:4x4x4_twisted", 64),
])
def test_topology_names(name, libtpu, chips):
    t = compile_check.parse_topology(name)
    assert (t.libtpu_name, t.chips) == (libtpu, chips)


@pytest.mark.parametrize("name, message", [
    ("v3-8", "unknown TPU topology 'v3-8'; use GEN-N"),
    ("tpu", "unknown TPU topology"),
    ("v5p-12", "counts TensorCores"),
    ("v5e-3", "counts chips"),
    ("v5p:2x2", "has 3 dimensions"),
])
def test_topology_bad_names(name, message):
    with pytest.raises(UserError, match=message) as e:
        compile_check.parse_topology(name)
    assert "\n" not in str(e.value)


def test_libtpu_accepts_each_generation():
    """The translated names give one compile-only device per chip of the right kind."""
    kinds = {"v4-8": "TPU v4", "v5p-8": "TPU v5", "v5e-1": "TPU v5 lite", "v5e-8": "TPU v5 lite",
             "v6e-4": "TPU v6 lite"}
    for name, kind in kinds.items():
        t = compile_check.parse_topology(name)
        devices = compile_check.topology_devices(t)
        assert len(devices) == t.chips, name
        assert {d.device_kind for d in devices} == {kind}, name
        assert {d.platform for d in devices} == {"tpu"}


# ---- FLOP counting --------------------------------------------------------------------

def test_jaxpr_matmul_flops_counts_loops():
    def f(w, x):
        def body(c, _):
            return jnp.tanh(c @ w), None
        y, _ = jax.lax.scan(body, x, None, length=5)
        return jnp.einsum("bd,de->be", y, jnp.ones((16, 3)))

    jaxpr = jax.make_jaxpr(jax.jit(f))(jnp.ones((16, 16)), jnp.ones((4, 16)))
    full, once, trips = compile_check.jaxpr_matmul_flops(jaxpr)
    body, head = 2 * 4 * 16 * 16, 2 * 4 * 16 * 3
    assert (full, once, trips) == (5 * body + head, body + head, [5])


def test_model_flops_formula():
    from dsl_jax import config
    mc = config.preset("llada-8b")
    # 2 x (matmul params without the embedding lookup) x tokens + attention 4 L T d.
    matmul_params = mc.num_params() - mc.vocab_size * mc.d_model - (2 * mc.n_layers + 1) * mc.d_model
    want = (2 * matmul_params + 4 * mc.n_layers * 4096 * mc.d_model) * 4096
    assert compile_check.forward_model_flops(mc, 4096, 4096) == want


# ---- compile-check ----------------------------------------------------------------------

def test_compile_check_tiny_forward_fits(tmp_path, capsys):
    out_json = tmp_path / "cc.json"
    rc, out, err = run_cli(["compile-check", "--what", "forward", "--model", "tiny", "--topology",
                            "v5p:2x2x1", "--batch", "8", "--length", "64", "--json", str(out_json)],
                           capsys)
    assert rc == 0, err
    for label in ("arguments", "outputs", "temporaries", "generated code", "total"):
        assert f"  {label} " in out
    assert "memory per chip (HBM 95 GiB)" in out and ": fits" in out and "estimated MFU" in out
    f = json.loads(out_json.read_text())
    m = f["memory"]
    assert f["fits"] and f["chips"] == 4 and f["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + \
        m["generated_code"]
    # Parameters are sharded over 4 chips: a chip holds well under a full float32 copy
    # (not a quarter: TPU tiles pad the tiny model's 64-wide arrays to 128 lanes).
    from dsl_jax import config
    params_bytes = 4 * config.preset("tiny").num_params()
    assert params_bytes / 4 <= m["arguments"] < 0.75 * params_bytes
    assert f["jaxpr_matmul_flops"]["loop_trip_counts"] == [2]  # the two scanned layers
    # Attention runs in the Pallas splash kernel (auto on TPU): outside XLA's matmuls, its
    # FLOPs counted over its grid, on lengths padded to its 128-blocks (64 -> 128).
    mc = config.preset("tiny")
    tokens, L, d = 8 * 64, mc.n_layers, mc.d_model
    assert f["jaxpr_matmul_flops"]["with_trip_counts"] == pytest.approx(
        f["model_flops"] - 4 * L * 64 * d * tokens)
    a = f["attention"]
    assert a["kernel"] == "splash" and a["kernel_calls"] == L
    assert a["kernel_matmul_flops_per_chip"] * 4 == pytest.approx(
        4 * 8 * mc.n_heads * 128 * 128 * mc.head_dim * L)
    assert a["kernel_seconds"] == pytest.approx(a["kernel_matmul_flops_per_chip"] / 459e12)
    assert "attention: Pallas splash kernel, 2 calls" in out
    assert f["compiler"]["flops"] > 0 and f["compiler"]["optimal_seconds"] > 0
    assert 0 < f["mfu"] < 1
    # v4's cost model can return a negative optimal time: then no step or MFU estimate.
    f["estimate"]["step_seconds"], f["mfu"] = None, None
    compile_check_command.report(f)
    out = capsys.readouterr().out
    assert "no step estimate" in out and "estimated MFU n/a" in out


def test_compile_check_tiny_train_for_two_slices(tmp_path, capsys):
    """A training step compiles for 2 slices of v5p-8 (8 chips), the slices on dcn_data."""
    out_json = tmp_path / "cc.json"
    rc, out, err = run_cli(["compile-check", "--config", "configs/dsl_small.py",
                            "--config.model=tiny", "--config.init_ckpt=", "--config.global_batch=16",
                            "--config.seq_len=64", "--topology", "v5p-8", "--num-slices", "2",
                            "--json", str(out_json)], capsys)
    assert rc == 0, err
    assert "topology: 2 slices of v5p-8 = 2 x v5p:2x2x1 (8 chips), mesh dcn_data=2 dcn_fsdp=1 " \
           "data=1 fsdp=4 tensor=1" in out
    assert "memory per chip (HBM 95 GiB)" in out and ": fits" in out
    f = json.loads(out_json.read_text())
    assert f["chips"] == 8 and f["num_slices"] == 2 and f["fits"]
    # The global batch (16 x 64 int32 ids) is split over all 8 chips of the two slices.
    assert f["tokens_per_step"] == 16 * 64
    # FLOPs per chip are over the chips of both slices.
    # The splash kernels (forward and backward) are counted apart, per chip.
    assert f["attention"]["kernel"] == "splash" and f["attention"]["kernel_calls"] > 0
    assert f["estimate"]["matmul_flops_per_chip"] == pytest.approx(
        f["jaxpr_matmul_flops"]["with_trip_counts"] / 8
        + f["attention"]["kernel_matmul_flops_per_chip"])


def test_compile_check_8b_on_one_v5e_chip_does_not_fit(tmp_path, capsys):
    out_json = tmp_path / "cc.json"
    rc, out, err = run_cli(["compile-check", "--model", "llada-8b", "--topology", "v5e-1",
                            "--batch", "1", "--length", "16", "--json", str(out_json)], capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsl-jax compile-check: does not fit on v5e-1")
    assert json.loads(out_json.read_text())["fits"] is False


@pytest.mark.parametrize("argv, message", [
    (["--topology", "v7x-8"], "unknown TPU topology 'v7x-8'; use GEN-N"),
    (["--topology", "v5p-8", "--num-slices", "0"], "--num-slices must be at least 1"),
    (["--model", "tiny", "--topology", "v5p-8", "--num-slices", "2", "--mesh", "dcn_data=4"],
     "dcn_data x dcn_fsdp = 4, but the devices span 2 slices"),
    (["--model", "tiny", "--topology", "v5p-8", "--batch", "3"], "does not divide over the mesh"),
    (["--model", "tiny", "--length", "100000"], "exceeds the model's maximum"),
    (["--what", "train"], "needs --config"),
    (["--config", "configs/dsl_llada_8b.py", "--attention", "xla"], "--attention is for"),
    (["--config.global_batch=8"], "need --config"),
    (["--config", "configs/dsl_llada_8b.py", "--config.nope=1"], "unknown config key 'nope'"),
    (["--config", "configs/dsl_llada_8b.py", "--config.global_batch=12"],
     "do not divide over the mesh's batch axes"),
])
def test_compile_check_bad_input(capsys, argv, message):
    rc, out, err = run_cli(["compile-check", *argv], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_compile_check_tiny_sample_prints_memory_and_seconds_per_nfe(tmp_path, capsys):
    """--what sample: one DSL-SDE batch (the whole Heun loop) compiled for 4 v5p chips; the
    figures per chip and the estimated time per forward pass."""
    out_json = tmp_path / "cc.json"
    rc, out, err = run_cli(["compile-check", "--what", "sample", "--model", "tiny", "--topology",
                            "v5p:2x2x1", "--length", "64", "--gen-length", "32", "--nfe", "4",
                            "--noise-dim", "16", "--json", str(out_json)], capsys)
    assert rc == 0, err
    f = json.loads(out_json.read_text())
    # Default batch: 4 per chip of the batch axes (fsdp=4): 16 prompts of 64 + 32 positions.
    assert f["what"] == "sample" and f["chips"] == 4 and f["tokens_per_step"] == 16 * 96
    assert "DSL-SDE batch 16 x (prompt 64 + response 32), NFE 4 (5 full forward passes, no prompt cache)" in out
    for label in ("arguments", "outputs", "temporaries", "generated code", "total"):
        assert f"  {label} " in out
    assert "memory per chip (HBM 95 GiB)" in out and ": fits" in out
    # NFE 4: 2 Heun steps of two passes + the final pass = 5; s/NFE = step estimate / 5.
    assert f["forward_passes"] == 5
    per = f["seconds_per_forward_pass"]
    assert per == pytest.approx(f["estimate"]["step_seconds"] / 5) and per > 0
    assert f"estimated {per:.4f} s/NFE (per forward pass)" in out
    from dsl_jax import config
    from dsl_jax.launch.compile_check import forward_model_flops
    assert f["model_flops"] == pytest.approx(5 * forward_model_flops(config.preset("tiny"),
                                                                     16 * 96, 96))
    # The jaxpr's matmuls and the splash kernels': at least the 5 passes' backbone matmuls
    # (plus top-k x_hat).
    assert f["jaxpr_matmul_flops"]["with_trip_counts"] + \
        4 * f["attention"]["kernel_matmul_flops_per_chip"] >= 0.9 * f["model_flops"]
    assert "attention: Pallas splash kernel" in out


def test_compile_check_attention_xla_compares_without_the_kernel(tmp_path, capsys):
    """--attention xla: the same forward with XLA's attention, in the compiler's matmuls."""
    out_json = tmp_path / "cc.json"
    rc, out, err = run_cli(["compile-check", "--what", "forward", "--model", "tiny", "--topology",
                            "v5p:2x2x1", "--batch", "8", "--length", "64", "--attention", "xla",
                            "--json", str(out_json)], capsys)
    assert rc == 0, err
    f = json.loads(out_json.read_text())
    assert f["attention"] == {"kernel": "xla", "kernel_calls": 0,
                              "kernel_matmul_flops_per_chip": 0.0, "kernel_seconds": 0.0}
    assert f["jaxpr_matmul_flops"]["with_trip_counts"] == pytest.approx(f["model_flops"])
    assert "attention: XLA (jax.nn.dot_product_attention)" in out
