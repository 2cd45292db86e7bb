"""Model config from config.json, presets, and the CLI's front door and one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from dsl_jax import config
from dsl_jax.errors import UserError

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures",
                       "llada-8b-instruct", "config.json")


def real_config_dict():
    if os.path.isfile(FIXTURE):
        with open(FIXTURE) as f:
            return json.load(f)
    return config.preset("llada-8b").to_hf_dict()


def test_real_8b_config_reads_exactly():
    cfg = config.ModelConfig.from_hf_dict(real_config_dict())
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (4096, 32, 32, 32, 128)
    assert (cfg.mlp_hidden_size, cfg.vocab_size, cfg.max_sequence_length) == (12288, 126464, 4096)
    assert cfg.rope_theta == 500000.0 and cfg.rms_norm_eps == 1e-5
    assert cfg.mask_token_id == 126336 and cfg.eos_token_id == 126081
    assert cfg.num_params() == 8_015_581_184
    assert cfg == config.preset("llada-8b")
    # Our own config.json round-trips.
    assert config.ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


@pytest.mark.parametrize("change,message", [
    ({"n_layers": None}, "missing field"),
    ({"d_model": 4095}, "not divisible by n_heads"),
    ({"n_kv_heads": 5}, "not a multiple of n_kv_heads"),
    ({"block_type": "sequential"}, "block_type='sequential' is not supported"),
    ({"weight_tying": True}, "weight_tying=True is not supported"),
    ({"mask_token_id": 200000}, "mask_token_id 200000 is outside the vocabulary"),
    ({"n_layers": -2}, "n_layers must be a positive integer"),
    ({"vocab_size": 200000}, "vocab_size 200000 exceeds embedding_size"),
])
def test_bad_config_json_is_one_clear_error(change, message):
    hf = real_config_dict()
    for k, v in change.items():
        if v is None:
            del hf[k]
        else:
            hf[k] = v
    with pytest.raises(UserError, match=message):
        config.ModelConfig.from_hf_dict(hf)


def cli(*args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.run([sys.executable, "-m", "dsl_jax.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_help_lists_subcommands():
    r = cli("--help")
    assert r.returncode == 0
    assert "forward" in r.stdout and "SUBCOMMAND" in r.stdout


def test_forward_command_on_sharded_mesh():
    r = cli("forward", "--model", "tiny", "--mesh", "fsdp=4,tensor=2", "--batch", "8")
    assert r.returncode == 0, r.stderr
    assert "logits: shape [8, 16, 512] float32" in r.stdout
    assert "'fsdp': 4, 'tensor': 2" in r.stdout and "finite True" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["forward", "--ids", "1,2,512"], "token id 512 is out of range for vocabulary size 512"),
    (["forward", "--length", "300"], "sequence length 300 exceeds the model's maximum 256"),
    (["forward", "--mesh", "fsdp=3"], "needs 3 devices, have 8"),
    (["forward", "--model", "nonexistent.json"], "no such config file"),
])
def test_bad_input_is_one_line(args, message):
    r = cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_bad_config_file_is_one_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"d_model": 64, "n_layers": 2}))
    r = cli("forward", "--model", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"dsl-jax forward: error: {bad}: missing field(s) n_heads, " \
                               "max_sequence_length, vocab_size"
    bad.write_text("{not json")
    r = cli("forward", "--model", str(bad))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_config_override_without_value_is_one_line():
    r = cli("train", "--config", "dsl_small", "--config.steps")
    assert r.returncode == 2
    assert r.stderr.strip() == ("dsl-jax train: error: --config.steps: missing value "
                                "(use --config.steps=VALUE)")


def test_any_failure_is_one_line_and_debug_keeps_the_traceback(monkeypatch, capsys):
    """An exception that is no UserError (a server gone, a disk full, a bug) ends the
    command with exit status 1 and one line: its type, the first line of its message and
    the DSL_JAX_DEBUG hint; with DSL_JAX_DEBUG=1 it propagates with its traceback."""
    from dsl_jax import cli
    from dsl_jax.commands import forward

    def broken(args):
        raise RuntimeError("the server went away\nmore detail")

    def full(args):
        raise OSError(28, "No space left on device", "/runs/x/part")

    monkeypatch.setattr(forward, "run", broken)
    monkeypatch.delenv("DSL_JAX_DEBUG", raising=False)
    assert cli.main(["forward", "--model", "tiny"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dsl-jax forward: error: RuntimeError: the server went away "
                   "(run with DSL_JAX_DEBUG=1 for the traceback)"]
    monkeypatch.setattr(forward, "run", full)  # an OSError: the path and the reason
    assert cli.main(["forward", "--model", "tiny"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "dsl-jax forward: error: /runs/x/part: no space left on device"]
    monkeypatch.setenv("DSL_JAX_DEBUG", "1")
    with pytest.raises(OSError, match="No space left"):
        cli.main(["forward", "--model", "tiny"])
