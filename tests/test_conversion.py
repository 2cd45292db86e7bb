"""Checkpoint conversion: Hugging Face LLaDA / DSL-LLaDA -> sharded orbax -> Hugging Face."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from dsl_jax.conversion import hf_io, keymap, torch_reference
from dsl_jax.conversion.convert import convert
from dsl_jax.conversion.export import export
from dsl_jax.conversion.verify import verify
from dsl_jax import checkpoint, config, sharding
from dsl_jax.errors import UserError

CFG = config.preset("tiny", vocab_size=96, mask_token_id=95, dtype="float32")
NOISE_DIM = 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_tensors(cfg, seed=0, dsl=False, residual=False):
    r = np.random.default_rng(seed)
    out = {}
    for key in keymap.torch_keys(cfg):
        shape = keymap.lookup(key)[0].torch_shape(cfg)
        if key.endswith("norm.weight"):
            out[key] = (1.0 + 0.2 * r.standard_normal(shape)).astype(np.float32)
        else:
            out[key] = (0.05 * r.standard_normal(shape)).astype(np.float32)
    if dsl:
        e = r.standard_normal((cfg.vocab_size, NOISE_DIM)).astype(np.float32)
        out["noise_embed.weight"] = e / np.linalg.norm(e, axis=1, keepdims=True)
        out["converter.beta"] = np.asarray(1.7, np.float32)
        out["converter.logit_bias"] = r.standard_normal(cfg.vocab_size + 1).astype(np.float32)
        out["converter.backbone_embedding.weight"] = (
            0.05 * r.standard_normal((cfg.d_model, cfg.vocab_size + 1))).astype(np.float32)
        out["converter.backbone_embedding.bias"] = (0.1 * r.standard_normal(cfg.d_model)).astype(np.float32)
        out["log_snr_max"] = np.asarray(np.log(100.0), np.float32)  # as the authors' saves hold
    if residual:  # the "Highpass" release: Linear(d -> d_model), the authors' key names
        out["converter.residual_proj.weight"] = (
            0.3 * r.standard_normal((cfg.d_model, NOISE_DIM))).astype(np.float32)
        out["converter.residual_proj.bias"] = (0.1 * r.standard_normal(cfg.d_model)).astype(np.float32)
    return out


def write_hf(path, cfg, tensors, dtype=np.float32, split=True):
    """A Hugging Face LLaDA dir. ``split``: two shards + index, layer 0 split across them."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_hf_dict(), f)
    keys = list(tensors)
    cast = {k: (v.astype(dtype) if k in keymap.torch_keys(cfg) or "backbone" in k
                or "residual_proj" in k else v)
            for k, v in tensors.items()}
    if split:
        # wte and the first half of layer 0 in shard 1; the rest in shard 2.
        first = [keys[0]] + [k for k in keys if k.startswith("model.transformer.blocks.0.")][:4]
        groups = [first, [k for k in keys if k not in first]]
        names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    else:
        groups, names = [keys], ["model.safetensors"]
    weight_map = {}
    for name, group in zip(names, groups):
        w = hf_io.SafetensorsWriter(os.path.join(path, name),
                                    [(k, cast[k].dtype, cast[k].shape) for k in group])
        for k in group:
            w.write(k, cast[k])
            weight_map[k] = name
        w.close()
    if split:
        with open(os.path.join(path, hf_io.INDEX_FILE), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return path


def read_hf(path):
    h = hf_io.HFCheckpoint(path)
    return {k: h.read(k) for k in h.tensors}


def flax_logits(ckpt, ids, mesh):
    m = checkpoint.load(ckpt, mesh=mesh, dtype="float32")
    return np.asarray(m(jnp.asarray(ids, jnp.int32)))


@pytest.fixture(scope="module")
def hf_split(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    tensors = random_tensors(CFG, seed=1)
    return write_hf(str(d / "split"), CFG, tensors), tensors


@pytest.fixture(scope="module")
def converted(hf_split, tmp_path_factory):
    """hf_split converted to float32 on 8 fake devices (fsdp 4 x tensor 2)."""
    out = str(tmp_path_factory.mktemp("ck") / "f32")
    s = convert(hf_split[0], out, dtype="float32", mesh=sharding.make_mesh({"fsdp": 4, "tensor": 2}),
                progress=False)
    return out, s


def test_convert_split_shards_matches_torch_reference(hf_split, converted, mesh1):
    path, tensors = hf_split
    # The test's source really splits a layer across two shards.
    index = json.load(open(os.path.join(path, hf_io.INDEX_FILE)))["weight_map"]
    assert len({v for k, v in index.items() if ".blocks.0." in k}) == 2
    out, s = converted
    assert s["tensors"] == len(tensors) and s["bytes"] == sum(v.nbytes for v in tensors.values())
    assert s["peak_rss_bytes"] > 0 and s["largest_tensor_bytes"] == max(v.nbytes for v in tensors.values())
    ids = np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 12))
    ref = torch_reference.llama_logits(torch_reference.build_llama(CFG, tensors), ids)
    got = flax_logits(out, ids, mesh1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # Values are exact (float32 -> float32), in dsl-jax layout.
    m = checkpoint.load(out, mesh=mesh1)
    np.testing.assert_array_equal(np.asarray(m.lm_head[...]), tensors[keymap.PREFIX + "ff_out.weight"].T)
    np.testing.assert_array_equal(np.asarray(m.blocks.wq[...])[1].reshape(CFG.d_model, -1),
                                  tensors[keymap.PREFIX + "blocks.1.q_proj.weight"].T)


def test_single_file_bf16_and_verify(tmp_path, mesh1):
    tensors = random_tensors(CFG, seed=3)
    path = write_hf(str(tmp_path / "single"), CFG, tensors, dtype=ml_dtypes.bfloat16, split=False)
    out = str(tmp_path / "ck")
    s = convert(path, out, dtype="bfloat16", mesh=mesh1, progress=False)
    meta = checkpoint.read_meta(out)
    assert meta["run"]["param_dtype"] == "bfloat16" and meta["dsl"] is None
    m = checkpoint.load(out, mesh=mesh1)
    assert m.embed[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(m.embed[...]),
                                  tensors[keymap.PREFIX + "wte.weight"].astype(ml_dtypes.bfloat16))
    assert s["tensors"] == len(tensors)
    r = verify(path, out, batch=2, length=10, mesh=mesh1, progress=False)
    assert r["ok"] and r["max_abs_diff"] < 1e-4 and r["kl"] < 1e-6


def test_restore_on_other_meshes(converted, mesh1):
    out, _ = converted
    ids = np.random.default_rng(4).integers(0, CFG.vocab_size, (2, 8))
    one = flax_logits(out, ids, mesh1)
    other = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    m = checkpoint.load(out, mesh=other, dtype="float32")
    wq = m.blocks.wq[...]
    assert len(wq.sharding.device_set) == 8 and wq.sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor", None)
    assert wq.addressable_shards[0].data.shape == (CFG.n_layers, CFG.d_model // 2,
                                                   CFG.n_heads // 4, CFG.head_dim)
    with jax.set_mesh(other):
        got = np.asarray(nnx.jit(lambda mm, x: mm(x))(m, jnp.asarray(ids, jnp.int32)))
    np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_identical(tmp_path, dtype):
    """A Highpass DSL-LLaDA folder (the residual path's keys included) converts and exports
    back bit for bit."""
    np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    tensors = random_tensors(CFG, seed=5, dsl=True, residual=True)
    src = write_hf(str(tmp_path / "src"), CFG, tensors, dtype=np_dtype)
    ck = str(tmp_path / "ck")
    # layerwise: the accelerator path (stacked parameters built on the devices layer by layer).
    convert(src, ck, dtype=dtype, mesh=sharding.make_mesh({"fsdp": 2, "tensor": 4}), progress=False,
            layerwise=True)
    back = str(tmp_path / "back")
    s = export(ck, back, max_shard_bytes=20_000, progress=False)
    assert s["files"] > 2
    a, b = read_hf(src), read_hf(back)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert json.load(open(os.path.join(back, "config.json"))) == CFG.to_hf_dict()
    # The exported shards are ordinary safetensors files (read here by the safetensors library).
    from safetensors.torch import load_file
    index = json.load(open(os.path.join(back, hf_io.INDEX_FILE)))["weight_map"]
    assert checkpoint.read_meta(ck)["dsl"]["residual"] is True
    for key in (keymap.PREFIX + "blocks.0.q_proj.weight", "converter.backbone_embedding.weight",
                "converter.residual_proj.weight"):
        t = load_file(os.path.join(back, index[key]))[key]
        np.testing.assert_array_equal(t.float().numpy(), a[key].astype(np.float32))


def test_dsl_checkpoint_lands_in_load_dsl(tmp_path, mesh8):
    tensors = random_tensors(CFG, seed=6, dsl=True)
    src = write_hf(str(tmp_path / "dsl"), CFG, tensors)
    ck = str(tmp_path / "ck")
    s = convert(src, ck, dtype="float32", mesh=mesh8, progress=False)
    assert s["dsl"]
    meta = checkpoint.read_meta(ck)
    assert meta["dsl"]["noise_dim"] == NOISE_DIM
    m = checkpoint.load(ck, mesh=mesh8, kind="dsl")
    np.testing.assert_array_equal(np.asarray(m.noise_embed[...]), tensors["noise_embed.weight"])
    assert float(m.converter.beta[...]) == pytest.approx(1.7)
    np.testing.assert_array_equal(np.asarray(m.converter.logit_bias[...]), tensors["converter.logit_bias"])
    np.testing.assert_array_equal(np.asarray(m.converter.w[...]),
                                  tensors["converter.backbone_embedding.weight"].T)
    np.testing.assert_array_equal(np.asarray(m.converter.c[...]), tensors["converter.backbone_embedding.bias"])
    np.testing.assert_array_equal(np.asarray(m.llada.blocks.w_down[...])[1],
                                  tensors[keymap.PREFIX + "blocks.1.ff_out.weight"].T)
    # The plain loader still reads the LLaDA part; verify compares the DSL tensors too.
    assert checkpoint.load(ck, mesh=mesh8, kind="llada").embed[...].shape == (CFG.vocab_size, CFG.d_model)
    r = verify(src, ck, length=8, mesh=mesh8)
    assert r["ok"] and r["dsl_max_abs_diff"] == 0.0 and r["max_abs_diff"] < 1e-4


def test_authors_save_with_log_snr_max_and_embed_alias(tmp_path, mesh1, capsys):
    """The authors' trained saves: ``log_snr_max`` (a float32 scalar, log s_max) sets the
    checkpoint's snr_max; ``converter.embed.weight`` (the noise embedding again) is skipped;
    export writes ``log_snr_max`` back, so a round trip keeps snr_max."""
    from dsl_jax import cli
    tensors = random_tensors(CFG, seed=8, dsl=True)
    tensors["log_snr_max"] = np.asarray(np.log(80.0), np.float32)  # torch.tensor(math.log(80))
    tensors["converter.embed.weight"] = tensors["noise_embed.weight"].copy()
    src = write_hf(str(tmp_path / "src"), CFG, tensors)
    ck = str(tmp_path / "ck")
    s = convert(src, ck, dtype="float32", mesh=mesh1, progress=False)
    assert s["snr_max"] == 80.0 and s["tensors"] == len(tensors) - 2
    assert s["notes"] == ["read log_snr_max: snr_max = 80",
                          "ignored converter.embed.weight (alias of noise_embed.weight)"]
    assert checkpoint.read_meta(ck)["dsl"]["snr_max"] == 80.0
    m = checkpoint.load(ck, mesh=mesh1, kind="dsl")
    assert m.dsl.snr_max == 80.0 and m.dsl.roar_clean_range == (64.0, 80.0)
    np.testing.assert_array_equal(np.asarray(m.noise_embed[...]), tensors["noise_embed.weight"])
    # The command says what it read, in one line before its summary.
    assert cli.main(["convert", "--hf", src, "--out", str(tmp_path / "ck2"), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == ("read log_snr_max: snr_max = 80; ignored converter.embed.weight "
                         "(alias of noise_embed.weight)")
    # Export writes log_snr_max (shape [], float32, the same bits) and never the alias.
    back = str(tmp_path / "back")
    export(ck, back, progress=False)
    b = read_hf(back)
    assert "converter.embed.weight" not in b and b["log_snr_max"].dtype == np.float32
    assert b["log_snr_max"].shape == () and b["log_snr_max"] == tensors["log_snr_max"]
    assert convert(back, str(tmp_path / "again"), mesh=mesh1, progress=False)["snr_max"] == 80.0
    # A bfloat16 log(100) (4.59375, whose exp is 98.87) reads as the 100 it was made from.
    t = dict(tensors, log_snr_max=np.asarray(np.log(100.0), np.float32).astype(ml_dtypes.bfloat16))
    assert float(t["log_snr_max"]) == 4.59375
    del t["converter.embed.weight"]
    src16 = write_hf(str(tmp_path / "src16"), CFG, t)
    s = convert(src16, str(tmp_path / "ck16"), mesh=mesh1, progress=False)
    assert s["snr_max"] == 100.0 and s["notes"] == ["read log_snr_max: snr_max = 100"]
    # A save whose only copy of the noise embedding is the alias: read as the embedding.
    t = dict(tensors)
    del t["noise_embed.weight"], t["log_snr_max"]
    s = convert(write_hf(str(tmp_path / "alias"), CFG, t), str(tmp_path / "ck3"), mesh=mesh1,
                progress=False)
    assert s["notes"] == ["read converter.embed.weight as noise_embed.weight"]
    assert s["snr_max"] == 100.0  # no log_snr_max: the default
    np.testing.assert_array_equal(
        np.asarray(checkpoint.load(str(tmp_path / "ck3"), mesh=mesh1, kind="dsl").noise_embed[...]),
        tensors["noise_embed.weight"])


# ---- bad input -----------------------------------------------------------------------------


def _no_output(tmp_path, out):
    assert not os.path.exists(out)
    parent = os.path.dirname(out)
    assert not os.path.exists(parent) or not [n for n in os.listdir(parent) if ".tmp" in n]


def _bad(tmp_path, mesh1, mutate, match, tensors=None):
    tensors = tensors or random_tensors(CFG, seed=7)
    src = write_hf(str(tmp_path / "bad"), CFG, tensors)
    mutate(src)
    out = str(tmp_path / "out" / "ck")
    with pytest.raises(UserError, match=match) as e:
        convert(src, out, mesh=mesh1, progress=False)
    assert "\n" not in str(e.value)
    _no_output(tmp_path, out)


def test_missing_shard(tmp_path, mesh1):
    _bad(tmp_path, mesh1, lambda d: os.remove(os.path.join(d, "model-00002-of-00002.safetensors")),
         r"model-00002-of-00002\.safetensors: missing shard")


def test_truncated_safetensors(tmp_path, mesh1):
    def cut(d):
        p = os.path.join(d, "model-00001-of-00002.safetensors")
        os.truncate(p, os.path.getsize(p) - 100)
    _bad(tmp_path, mesh1, cut, r"model-00001-of-00002\.safetensors: truncated safetensors file")


def test_shape_disagrees_with_config(tmp_path, mesh1):
    t = random_tensors(CFG, seed=7)
    t[keymap.PREFIX + "blocks.1.up_proj.weight"] = np.zeros((CFG.mlp_hidden_size + 1, CFG.d_model), np.float32)
    _bad(tmp_path, mesh1, lambda d: None,
         r"tensor model\.transformer\.blocks\.1\.up_proj\.weight has shape \[193, 64\] "
         r"but config\.json implies \[192, 64\]",
         tensors=t)


def test_unexpected_and_missing_keys(tmp_path, mesh1):
    t = random_tensors(CFG, seed=7)
    t["model.transformer.blocks.0.extra.weight"] = np.zeros(3, np.float32)
    _bad(tmp_path, mesh1, lambda d: None, r"unexpected key model\.transformer\.blocks\.0\.extra\.weight",
         tensors=t)
    t = random_tensors(CFG, seed=7)
    del t[keymap.PREFIX + "blocks.1.k_proj.weight"]
    _bad(tmp_path / "2", mesh1, lambda d: None, r"missing key model\.transformer\.blocks\.1\.k_proj\.weight",
         tensors=t)
    # The residual path's two keys come together, shaped [d_model, d] and [d_model].
    t = random_tensors(CFG, seed=7, dsl=True, residual=True)
    del t["converter.residual_proj.bias"]
    _bad(tmp_path / "3", mesh1, lambda d: None, r"missing key converter\.residual_proj\.bias",
         tensors=t)
    t = random_tensors(CFG, seed=7, dsl=True, residual=True)
    t["converter.residual_proj.weight"] = np.zeros((CFG.d_model, NOISE_DIM + 1), np.float32)
    _bad(tmp_path / "3b", mesh1, lambda d: None,
         r"tensor converter\.residual_proj\.weight has shape \[64, 9\] but config\.json implies "
         r"\[64, 8\]", tensors=t)
    t = random_tensors(CFG, seed=7, residual=True)  # the residual path without the converter
    _bad(tmp_path / "3c", mesh1, lambda d: None, r"missing key noise_embed\.weight", tensors=t)
    t = random_tensors(CFG, seed=7, dsl=True)
    del t["converter.beta"]
    _bad(tmp_path / "4", mesh1, lambda d: None, r"missing key converter\.beta", tensors=t)
    # The authors' alias must be the noise embedding itself; log_snr_max a finite scalar.
    t = random_tensors(CFG, seed=7, dsl=True)
    t["converter.embed.weight"] = t["noise_embed.weight"].copy()
    t["converter.embed.weight"][3, 1] += 0.25
    _bad(tmp_path / "5", mesh1, lambda d: None,
         r"converter\.embed\.weight differs from noise_embed\.weight \(max abs diff 0\.25\)",
         tensors=t)
    t = random_tensors(CFG, seed=7, dsl=True)
    t["log_snr_max"] = np.zeros(2, np.float32)
    _bad(tmp_path / "6", mesh1, lambda d: None, r"log_snr_max has shape \[2\], expected \[\]",
         tensors=t)
    t["log_snr_max"] = np.asarray(np.inf, np.float32)
    _bad(tmp_path / "7", mesh1, lambda d: None, r"log_snr_max is inf, not finite", tensors=t)
    t = random_tensors(CFG, seed=7)
    t["log_snr_max"] = np.asarray(np.log(100.0), np.float32)
    _bad(tmp_path / "8", mesh1, lambda d: None, r"key log_snr_max without the DSL parameters",
         tensors=t)


def test_failure_mid_write_leaves_nothing(tmp_path, mesh1, hf_split, monkeypatch):
    from dsl_jax.conversion import convert as convert_mod
    real, calls = convert_mod.assemble, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_mod, "assemble", failing)
    out = str(tmp_path / "ck")
    with pytest.raises(OSError, match="simulated"):
        convert(hf_split[0], out, mesh=mesh1, progress=False)
    assert len(calls) == 4
    _no_output(tmp_path, out)
    assert os.listdir(tmp_path) == []


def test_existing_checkpoint_needs_overwrite(converted, tmp_path, mesh1, hf_split):
    out, _ = converted
    with pytest.raises(UserError, match="already holds a dsl-jax checkpoint; pass --overwrite"):
        convert(hf_split[0], out, mesh=mesh1, progress=False)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export(out, hf_split[0], progress=False)


def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "dsl_jax.cli", "convert", "--hf", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "ck")], capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("dsl-jax convert: error: ")
    assert "no such directory" in r.stderr and "Traceback" not in r.stderr


def test_cli_convert_verify_export_in_process(hf_split, converted, tmp_path, capsys):
    from dsl_jax import cli
    out = str(tmp_path / "ck")
    assert cli.main(["convert", "--hf", hf_split[0], "--out", out, "--dtype", "float32",
                     "--mesh", "fsdp=2,tensor=4", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"converted {len(hf_split[1])} tensors, 0.00 GB in ") and "peak memory" in line
    assert cli.main(["verify", "--hf", hf_split[0], "--ckpt", out, "--length", "8"]) == 0
    assert capsys.readouterr().out.strip().endswith("verify: OK")
    # Weights that differ from the HF files: verify reports it and exits 1.
    other = write_hf(str(tmp_path / "other"), CFG, random_tensors(CFG, seed=99))
    assert cli.main(["verify", "--hf", other, "--ckpt", out, "--length", "8"]) == 1
    assert "verify: FAILED" in capsys.readouterr().out
    assert cli.main(["export", "--ckpt", out, "--hf", str(tmp_path / "back"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"exported {len(hf_split[1])} tensors")
    assert cli.main(["convert", "--hf", hf_split[0], "--out", out, "--no-progress"]) == 2
    assert "already holds a dsl-jax checkpoint" in capsys.readouterr().err


def test_bin_pickles_through_torch(tmp_path, hf_split, converted, mesh1, monkeypatch):
    import torch
    path, tensors = hf_split
    d = tmp_path / "bin"
    d.mkdir()
    with open(d / "config.json", "w") as f:
        json.dump(CFG.to_hf_dict(), f)
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, str(d / "pytorch_model.bin"))
    out = str(tmp_path / "ck")
    convert(str(d), out, dtype="float32", mesh=mesh1, progress=False)
    a = checkpoint.load(out, mesh=mesh1)
    b = checkpoint.load(converted[0], mesh=mesh1)
    for x, y in zip(jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(b, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # bfloat16 tensors in a .bin come through bit for bit.
    d2 = tmp_path / "bin16"
    d2.mkdir()
    key = keymap.PREFIX + "blocks.1.wq.weight".replace("wq", "q_proj")
    torch.save({key: torch.from_numpy(tensors[key]).to(torch.bfloat16)}, str(d2 / "pytorch_model.bin"))
    (d2 / "config.json").write_text("{}")
    got = hf_io.HFCheckpoint(str(d2)).read(key)
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got, tensors[key].astype(ml_dtypes.bfloat16))
    # Without torch: one clear line naming the extra.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError, match=r'pytorch_model\.bin: reading PyTorch \.bin files needs torch: '
                                        r'pip install -e "\.\[verify\]"'):
        convert(str(d), str(tmp_path / "ck2"), mesh=mesh1, progress=False)
    with pytest.raises(UserError, match=r'verify needs torch and transformers: pip install -e "\.\[verify\]"'):
        verify(path, converted[0])


def test_float32_source_to_bfloat16_checkpoint_verifies(hf_split, tmp_path, mesh1):
    path, tensors = hf_split
    out = str(tmp_path / "bf16")
    convert(path, out, dtype="bfloat16", mesh=mesh1, progress=False)
    m = checkpoint.load(out, mesh=mesh1)
    key = keymap.PREFIX + "blocks.0.ff_proj.weight"
    np.testing.assert_array_equal(np.asarray(m.blocks.w_gate[...])[0],
                                  tensors[key].astype(ml_dtypes.bfloat16).T)
    r = verify(path, out, length=8, mesh=mesh1)
    assert r["ok"] and r["max_abs_diff"] < 1e-4


def test_export_of_a_saved_dsl_model(tmp_path, mesh1):
    """Training writes checkpoints with save_model; they export and convert back unchanged."""
    from dsl_jax.dsl import DSLConfig, create_dsl
    m = create_dsl(CFG, DSLConfig(noise_dim=NOISE_DIM), mesh1, seed=3)
    ck = str(tmp_path / "trained")
    checkpoint.save_model(ck, m)
    export(ck, str(tmp_path / "hf"), progress=False)
    convert(str(tmp_path / "hf"), str(tmp_path / "back"), dtype="float32", mesh=mesh1, progress=False)
    a = nnx.to_pure_dict(nnx.state(m, (nnx.Param, nnx.Variable)))
    b = nnx.to_pure_dict(nnx.state(checkpoint.load(str(tmp_path / "back"), mesh=mesh1, kind="dsl"),
                                   (nnx.Param, nnx.Variable)))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- the "Highpass" release: the converter's residual path ---------------------------------


def numpy_converter(z, t, residual=True):
    """The authors' converter in float64 numpy from their tensors ``t``: W softmax(beta z K^T
    + b) + c, plus (``residual``) R z_hi + r with u = p[:V] E, n = u / (|u| + 1e-8),
    z_hi = z - (z . n) n."""
    E = t["noise_embed.weight"].astype(np.float64)
    V, d = E.shape
    K = np.concatenate([E, np.zeros((1, d))])
    s = float(t["converter.beta"]) * (z @ K.T) + t["converter.logit_bias"].astype(np.float64)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = p @ t["converter.backbone_embedding.weight"].astype(np.float64).T \
        + t["converter.backbone_embedding.bias"].astype(np.float64)
    if residual:
        u = p[..., :V] @ E
        n = u / (np.linalg.norm(u, axis=-1, keepdims=True) + 1e-8)
        z_hi = z - np.sum(z * n, axis=-1, keepdims=True) * n
        h = h + z_hi @ t["converter.residual_proj.weight"].astype(np.float64).T \
            + t["converter.residual_proj.bias"].astype(np.float64)
    return h


def test_highpass_logits_match_float64_reference(tmp_path, mesh8):
    """A Highpass folder (random tiny config, the authors' keys) converts into a checkpoint
    whose metadata says ``residual`` and whose loaded DSLModel's converter output and logits
    equal a float64 reference: numpy for the converter, PyTorch Llama (float64) for LLaDA."""
    tensors = random_tensors(CFG, seed=11, dsl=True, residual=True)
    src = write_hf(str(tmp_path / "highpass"), CFG, tensors)
    ck = str(tmp_path / "ck")
    s = convert(src, ck, dtype="float32", mesh=mesh8, progress=False)
    assert s["dsl"] and s["residual"] and s["tensors"] == len(tensors) - 1  # log_snr_max aside
    assert checkpoint.read_meta(ck)["dsl"]["residual"] is True
    m = checkpoint.load(ck, mesh=mesh8, kind="dsl", dtype="float32")
    assert m.dsl.residual
    np.testing.assert_array_equal(np.asarray(m.converter.residual.w[...]),
                                  tensors["converter.residual_proj.weight"].T)
    np.testing.assert_array_equal(np.asarray(m.converter.residual.c[...]),
                                  tensors["converter.residual_proj.bias"])
    r = np.random.default_rng(12)
    B, L = 2, 7
    ids = r.integers(0, CFG.vocab_size, (B, L))
    snr = r.uniform(0.3, 20.0, (B, L))[..., None]
    z = (snr * tensors["noise_embed.weight"][ids] + np.sqrt(snr) * r.standard_normal((B, L, NOISE_DIM))
         ).astype(np.float32)
    ref = numpy_converter(z.astype(np.float64), tensors)
    # The residual path carries real weight here (the test would see it missing).
    assert np.max(np.abs(ref - numpy_converter(z.astype(np.float64), tensors, residual=False))) > 0.5
    # 7 positions in chunks of 3: the padded last chunk too.
    got = np.asarray(m.converter(jnp.asarray(z), m.noise_embed[...], chunk=3))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(m.embed_noisy(jnp.asarray(z))), ref, rtol=1e-5, atol=1e-5)
    llada = {k: v for k, v in tensors.items() if k in keymap.torch_keys(CFG)}
    ref_logits = torch_reference.llama_logits(
        torch_reference.build_llama(CFG, llada, dtype="float64"), None, inputs_embeds=ref)
    got_logits = np.asarray(nnx.jit(lambda mm, x: mm(x))(m, jnp.asarray(z)))
    np.testing.assert_allclose(got_logits, ref_logits, rtol=1e-4, atol=1e-4)
    # verify compares the DSL tensors, the residual path's included.
    assert verify(src, ck, length=8, mesh=mesh8)["dsl_max_abs_diff"] == 0.0


def test_residual_path_trains_like_the_converter():
    """``DSLConfig(residual=True)``: the authors' init (weight N(0, 0.01^2), bias 0), trained
    with the converter (a gradient, no freezing), its bias exempt from weight decay as
    ``converter.c`` is; without the flag there is no residual parameter at all."""
    from dsl_jax.dsl import DSLConfig, DSLModel
    from dsl_jax.train import default_config
    from dsl_jax.train.state import decay_mask, no_decay_names, split

    plain = DSLModel(CFG, DSLConfig(noise_dim=NOISE_DIM), rngs=nnx.Rngs(params=0))
    assert plain.converter.residual is None
    assert "residual" not in nnx.to_pure_dict(nnx.state(plain.converter, nnx.Param))
    m = DSLModel(CFG, DSLConfig(noise_dim=NOISE_DIM, residual=True), rngs=nnx.Rngs(params=0))
    w = np.asarray(m.converter.residual.w[...])
    assert w.shape == (NOISE_DIM, CFG.d_model) and 0.007 < w.std() < 0.013
    assert not np.any(np.asarray(m.converter.residual.c[...]))
    # The other parameters are drawn as without the residual path.
    np.testing.assert_array_equal(np.asarray(m.converter.c[...]), np.asarray(plain.converter.c[...]))
    _, params, frozen = split(m, "dsl")
    assert set(params["converter"]["residual"]) == {"w", "c"}
    assert "converter" not in frozen
    z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, NOISE_DIM)), jnp.float32)
    grads = nnx.jit(nnx.grad(lambda mm, zz: jnp.sum(mm.embed_noisy(zz) ** 2)))(m, z)
    assert float(jnp.max(jnp.abs(grads.converter.residual.w[...]))) > 0
    assert float(jnp.max(jnp.abs(grads.converter.residual.c[...]))) > 0
    decays = decay_mask(no_decay_names(default_config().optimizer))(params)
    assert decays["converter"]["residual"] == {"w": True, "c": False}
    assert decays["converter"]["w"] is True and decays["converter"]["c"] is False


# ---- tokenizer files, the chat template, export --copy-from ---------------------------------

FIXTURES = os.path.join(REPO, "tests", "fixtures", "llada-8b-instruct")
# A model whose vocabulary holds a small byte-level tokenizer with LLaDA's special tokens.
CFG_TOK = config.preset("tiny", vocab_size=320, mask_token_id=2, eos_token_id=1, pad_token_id=1,
                        dtype="float32")
CONVERSATIONS = [
    [{"role": "user", "content": "Summarize: the cat sat on the mat."}],
    [{"role": "user", "content": "  Hi there \n"}, {"role": "assistant", "content": " Hello! "},
     {"role": "user", "content": "Ünïcode ✓ text\twith a tab\n\n"}],
    [{"role": "system", "content": "You answer tersely."}, {"role": "user", "content": "2+2?"}],
]


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """A tiny LLaDA folder laid out as on the Hub: weights, config.json (with fields beyond
    the architecture's), a tokenizer with LLaDA's special tokens, LLaDA-8B-Instruct's own
    tokenizer_config.json (tests/fixtures: its chat template and special tokens),
    special_tokens_map.json, remote code (stand-ins), generation_config.json, a model card
    and a hidden file."""
    import shutil

    from dsl_jax.tokenizer import train_small
    d = tmp_path_factory.mktemp("hub") / "llada"
    tensors = random_tensors(CFG_TOK, seed=21)
    write_hf(str(d), CFG_TOK, tensors, split=False)
    with open(d / "config.json", "w") as f:
        json.dump({**CFG_TOK.to_hf_dict(), "torch_dtype": "bfloat16",
                   "transformers_version": "4.38.2"}, f, indent=2)
    texts = [c["content"] for conv in CONVERSATIONS for c in conv] * 3
    train_small(texts, 300, str(d / "tokenizer.json"))
    shutil.copy(os.path.join(FIXTURES, "tokenizer_config.json"), d / "tokenizer_config.json")
    (d / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    (d / "configuration_llada.py").write_text("# stand-in for the remote configuration code\n")
    (d / "modeling_llada.py").write_text("# stand-in for the remote modeling code\n")
    (d / "generation_config.json").write_text('{"bos_token_id": 0, "eos_token_id": 1}\n')
    (d / "README.md").write_text("A model card.\n")
    (d / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return str(d), tensors


@pytest.fixture(scope="module")
def hub_converted(hub_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ck") / "llada")
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    return out, convert(hub_dir[0], out, dtype="float32", mesh=mesh, progress=False)


def test_convert_copies_the_tokenizer_where_train_and_sample_look(hub_dir, hub_converted, converted):
    from ml_collections import ConfigDict

    from dsl_jax.tokenizer import Tokenizer, llada_chat
    from dsl_jax.train import data as data_lib
    src, _ = hub_dir
    ck, s = hub_converted
    names = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert s["tokenizer_files"] == names
    assert s["tokenizer_note"] == ("copied tokenizer.json, tokenizer_config.json, "
                                   "special_tokens_map.json and its chat template")
    for name in names:
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(ck, name), "rb") as b:
            assert a.read() == b.read(), name
    # `train --config.init_ckpt=CKPT` (and sample/eval's CKPT/tokenizer.json) find it.
    tok, path = data_lib.load_tokenizer(ConfigDict({"tokenizer": ""}), ck)
    assert path == os.path.join(ck, "tokenizer.json") and tok.chat_template is not None
    assert tok.prompt("Hi") == tok.encode(llada_chat([{"role": "user", "content": "Hi"}]))
    assert Tokenizer.from_file(ck).render_chat(CONVERSATIONS[1]) == llada_chat(CONVERSATIONS[1])
    # A folder without a tokenizer: nothing copied, and the summary says how to add one.
    assert converted[1]["tokenizer_files"] == []
    assert converted[1]["tokenizer_note"].startswith("no tokenizer.json in ")


def test_convert_tokenizer_from_another_folder_and_bad_ones(hub_dir, hf_split, tmp_path, mesh1):
    import shutil
    src, _ = hub_dir
    # A DSL-LLaDA-like folder without tokenizer files takes them from another folder.
    tensors = random_tensors(CFG_TOK, seed=22, dsl=True)
    bare = write_hf(str(tmp_path / "bare"), CFG_TOK, tensors, split=False)
    out = str(tmp_path / "ck")
    s = convert(bare, out, dtype="float32", mesh=mesh1, progress=False, tokenizer_dir=src)
    assert s["tokenizer_files"] == ["special_tokens_map.json", "tokenizer.json",
                                    "tokenizer_config.json"]
    assert open(os.path.join(out, "tokenizer.json")).read() == open(
        os.path.join(src, "tokenizer.json")).read()
    # Refused before anything is written: a tokenizer too large for the model, a named
    # folder without tokenizer.json, a chat template that does not compile.
    with pytest.raises(UserError, match=r"tokenizer\.json: \d+ tokens, more than the model's "
                                        r"vocabulary of 96"):
        convert(hf_split[0], str(tmp_path / "x1"), mesh=mesh1, progress=False, tokenizer_dir=src)
    with pytest.raises(UserError, match=r"bare: no tokenizer\.json"):
        convert(bare, str(tmp_path / "x2"), mesh=mesh1, progress=False, tokenizer_dir=bare)
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    (broken / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for m in x %}"}))
    with pytest.raises(UserError, match=r"tokenizer_config\.json: chat template: ") as e:
        convert(str(broken), str(tmp_path / "x3"), mesh=mesh1, progress=False)
    assert "\n" not in str(e.value)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("x") or n.startswith(".x")]


def test_chat_template_renders_as_transformers_does_and_as_coded(hub_dir):
    """LLaDA-8B-Instruct's own chat template (tests/fixtures), rendered with jinja2 here,
    gives what ``transformers``' apply_chat_template gives and what :func:`llada_chat`
    codes, for conversations with stripping, several turns, non-ASCII text and a system
    message; that template ignores add_generation_prompt (always ends with the header)."""
    from transformers import PreTrainedTokenizerFast

    from dsl_jax.tokenizer import ChatTemplate, Tokenizer, llada_chat
    src, _ = hub_dir
    tok = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    assert tok.chat_template.origin.endswith("tokenizer_config.json")
    assert tok.chat_template.variables["bos_token"] == "<|startoftext|>"
    hf = PreTrainedTokenizerFast.from_pretrained(src)
    for conv in CONVERSATIONS:
        got = tok.render_chat(conv)
        assert got == llada_chat(conv)
        assert got == hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert tok.render_chat(conv, add_generation_prompt=False) == got == hf.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=False)
        assert tok.chat(conv) == hf.encode(got, add_special_tokens=False)
    assert llada_chat(CONVERSATIONS[0], add_generation_prompt=False) + \
        "<|start_header_id|>assistant<|end_header_id|>\n\n" == llada_chat(CONVERSATIONS[0])
    # Without a template beside it, the coded one.
    plain = Tokenizer(tok.tok, source="plain")
    assert plain.render_chat(CONVERSATIONS[1]) == llada_chat(CONVERSATIONS[1])
    # transformers' helpers and environment: raise_exception, tojson, trim_blocks.
    t = ChatTemplate("{% for m in messages %}{% if m['role'] == 'system' %}"
                     "{{ raise_exception('no system messages here') }}{% endif %}\n"
                     "{{ m | tojson }}{% endfor %}", origin="custom")
    assert t.render(CONVERSATIONS[1][2:]) == '{"role": "user", "content": "Ünïcode ✓ text\\twith a tab\\n\\n"}'
    with pytest.raises(UserError, match=r"^custom: chat template: no system messages here$"):
        t.render(CONVERSATIONS[2])
    # The sandbox: no access to Python internals.
    with pytest.raises(UserError, match=r"^custom: chat template: "):
        ChatTemplate("{{ messages.__class__.__mro__ }}", origin="custom").render([])


def test_export_copy_from_loads_like_the_original(hub_dir, hub_converted, hf_split, tmp_path):
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

    from dsl_jax import cli
    src, tensors = hub_dir
    ck, _ = hub_converted
    back = str(tmp_path / "back")
    s = export(ck, back, progress=False, copy_from=src)
    companions = ["README.md", "config.json", "configuration_llada.py", "generation_config.json",
                  "modeling_llada.py", "special_tokens_map.json", "tokenizer.json",
                  "tokenizer_config.json"]
    assert s["copied"] == companions
    written = ["model.safetensors", hf_io.INDEX_FILE]
    assert sorted(os.listdir(back)) == sorted(companions + written)
    for name in companions:  # byte for byte, config.json included (it was checked to match)
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(back, name), "rb") as b:
            assert a.read() == b.read(), name
    b = read_hf(back)
    assert set(b) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(b[k], tensors[k], err_msg=k)
    # transformers reads the same configuration and tokenizer from both folders.
    assert PretrainedConfig.from_pretrained(back).to_dict() == \
        PretrainedConfig.from_pretrained(src).to_dict()
    text = "Ünïcode ✓ text"
    assert PreTrainedTokenizerFast.from_pretrained(back).encode(text) == \
        PreTrainedTokenizerFast.from_pretrained(src).encode(text)
    # Another model's folder is refused before anything is written.
    with pytest.raises(UserError, match=r"config\.json: describes another model than the "
                                        r"checkpoint \(embedding_size: 96 there, 320 in the checkpoint\)"):
        export(ck, str(tmp_path / "other"), progress=False, copy_from=hf_split[0])
    assert not os.path.exists(tmp_path / "other")
    assert cli.main(["export", "--ckpt", ck, "--hf", str(tmp_path / "cli"), "--copy-from", src,
                     "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "cli")) == sorted(companions + written)
