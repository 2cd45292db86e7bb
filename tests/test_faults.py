"""The fault table: bad inputs a user can give, each refused by the CLI with one line
and nothing changed on disk (issue 17).

Every case runs ``dsl_jax.cli.main(argv)`` in this process and asserts the exit code,
that stderr is exactly one line holding the expected fragment, and that every file of
the module's world (the inputs and any previous outputs) is byte-for-byte unchanged,
with nothing added. To extend the table, add a :class:`Case` to :data:`CASES` (paths
in ``argv`` are written ``{NAME}``, filled from the ``world`` fixture).
"""

import hashlib
import json
import os
import random
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from flax import nnx

from dsl_jax import checkpoint, config, storage
from dsl_jax.cli import main
from dsl_jax.errors import UserError
from dsl_jax.model import LLaDA
from dsl_jax.tokenizer import train_small
from dsl_jax.train.loop import check_resume_settings, load_train_config
from test_conversion import CFG, random_tensors, write_hf

WORDS = "the cat sat on a mat and the dog ran far away in the warm sun".split()


def _patch_header(path, key, **fields):
    """Rewrite safetensors file ``path`` with entry ``key``'s header fields replaced
    (the tensor bytes kept as they are)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[key].update(fields)
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + raw[8 + n:])


def _train_overrides(w, **over):
    base = {"model": "tiny", "init_ckpt": w["INIT"], "data.files": w["DATA"],
            "data.tokenizer": w["TOK"], "steps": 4, "global_batch": 8, "seq_len": 32,
            "dsl.noise_dim": 16, "dsl.chunk_positions": 16, "save_every": 2,
            "log_every": 1, "eval.every": 0, "micro_batches": 1, "mesh": "fsdp=-1",
            "data.shuffle_buffer": 0, "optimizer.lr": 0.001, "out_dir": w["RUN"]}
    base.update(over)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def world(tmp_path_factory, mesh1_module):
    from dsl_jax.conversion.convert import convert

    d = tmp_path_factory.mktemp("faults")
    w = {"W": str(d)}
    tensors = random_tensors(CFG)
    w["HF"] = write_hf(str(d / "runs" / "hf"), CFG, tensors, split=False)
    w["RUNS"] = str(d / "runs")
    w["CK"] = str(d / "ck")
    convert(w["HF"], w["CK"], mesh=mesh1_module, progress=False)
    w["LINK"] = str(d / "link")
    os.symlink(w["CK"], w["LINK"])
    w["EXPORTED"] = str(d / "exported")  # a previous export, to be kept by refusals
    os.makedirs(w["EXPORTED"])
    open(os.path.join(w["EXPORTED"], "config.json"), "w").write("{}")
    # Hugging Face folders with one bad header each (the single file's first key).
    first = next(iter(tensors))
    for name, fields in {"I32": {"dtype": "I32"}, "FLOATOFF": None, "NEGOFF": None,
                         "STROFF": None, "PASTEND": None, "OVERLAP": None}.items():
        path = write_hf(str(d / f"bad_{name}"), CFG, tensors, split=False)
        st = os.path.join(path, "model.safetensors")
        raw = open(st, "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        s, e = json.loads(raw[8:8 + n])[first]["data_offsets"]
        fields = fields or {"FLOATOFF": {"data_offsets": [float(s), float(e)]},
                            "NEGOFF": {"data_offsets": [s - 4, e - 4]},
                            "STROFF": {"data_offsets": [str(s), str(e)]},
                            "PASTEND": {"data_offsets": [s + 10**9, e + 10**9]},
                            "OVERLAP": {"data_offsets": [s + 4, e + 4]}}[name]
        _patch_header(st, first, **fields)
        w[f"BAD_{name}"] = path
    w["FIRST"] = first
    # Texts, prompts and an eval benchmark file.
    os.makedirs(d / "texts")
    w["PROMPTS"] = str(d / "texts" / "prompts.jsonl")
    open(w["PROMPTS"], "w").write('{"prompt": "hello"}\n')
    w["TEXTS"] = str(d / "texts" / "clean.txt")
    open(w["TEXTS"], "w").write("a clean text\n")
    w["BENCH"] = str(d / "texts" / "test.jsonl")
    open(w["BENCH"], "w").write(json.dumps({"document": "a b c", "summary": "a"}) + "\n")
    # A training corpus, tokenizer, init checkpoint and a run saved at step 2.
    r = random.Random(0)
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(r.randint(8, 20)))
             for i in range(100)]
    os.makedirs(d / "data")
    w["DATA"] = str(d / "data" / "data.jsonl")
    with open(w["DATA"], "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    w["TOK"] = str(d / "tok" / "tokenizer.json")
    train_small(texts, 512, w["TOK"])
    w["INIT"] = str(d / "init")
    checkpoint.save_model(w["INIT"], LLaDA(config.preset("tiny", dtype="float32"),
                                           rngs=nnx.Rngs(params=0)))
    # A model whose mask token id is not the tokenizer's (vocabulary large enough).
    tiny = config.preset("tiny", dtype="float32")
    w["MASKCK"] = str(d / "maskck")
    checkpoint.save_model(w["MASKCK"], LLaDA(config.preset(
        "tiny", dtype="float32", mask_token_id=tiny.vocab_size - 1), rngs=nnx.Rngs(params=0)))
    w["RUN"] = str(d / "run")
    cfg = load_train_config("configs/dsl_small.py", _train_overrides(w))
    os.makedirs(os.path.join(w["RUN"], "checkpoints", "2"))
    open(os.path.join(w["RUN"], "config.json"), "w").write(cfg.to_json(indent=2))
    return w


@pytest.fixture(scope="module")
def mesh1_module():
    import jax

    from dsl_jax.sharding import make_mesh
    return make_mesh(devices=jax.devices()[:1])


def tree_hashes(root):
    """relative path -> sha256 of every file under ``root`` (links followed for files,
    a link itself recorded by its target)."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in dirnames + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@dataclass
class Case:
    name: str
    argv: list  # "{NAME}" filled from the world
    fragment: str  # expected in the one stderr line
    code: int = 2


TRAIN = ["train", "--no-progress", "--config", "configs/dsl_small.py"]


def _train(**over):
    return TRAIN + ["TRAIN_OVERRIDES", json.dumps(over)]


CASES = [
    # 1. An output never equals, contains or lies inside an input (links resolved).
    Case("convert out contains hf", ["convert", "--no-progress", "--hf", "{HF}", "--out",
                                     "{RUNS}", "--overwrite"], "contains the input --hf"),
    Case("convert out is hf", ["convert", "--no-progress", "--hf", "{HF}", "--out", "{HF}",
                               "--overwrite"], "is the same place as the input --hf"),
    Case("convert out inside hf", ["convert", "--no-progress", "--hf", "{HF}", "--out",
                                   "{HF}/ck"], "lies inside the input --hf"),
    Case("convert out is tokenizer dir", ["convert", "--no-progress", "--hf", "{HF}",
                                          "--tokenizer", "{EXPORTED}", "--out", "{EXPORTED}",
                                          "--overwrite"],
         "is the same place as the input --tokenizer"),
    Case("export ckpt is a link to hf", ["export", "--no-progress", "--ckpt", "{LINK}", "--hf",
                                         "{CK}", "--overwrite"],
         "is the same place as the input --ckpt"),
    Case("export hf is ckpt's parent", ["export", "--no-progress", "--ckpt", "{CK}", "--hf",
                                        "{W}", "--overwrite"], "contains the input --ckpt"),
    Case("export hf is copy-from", ["export", "--no-progress", "--ckpt", "{CK}", "--hf",
                                    "{HF}", "--copy-from", "{HF}", "--overwrite"],
         "is the same place as the input --copy-from"),
    Case("sample out is prompts file", ["sample", "--no-progress", "--ckpt", "{CK}",
                                        "--prompts-file", "{PROMPTS}", "--out", "{PROMPTS}"],
         "is the same place as the input --prompts-file"),
    Case("sample out inside ckpt", ["sample", "--no-progress", "--ckpt", "{LINK}",
                                    "--prompt", "hi", "--out", "{CK}/results.jsonl"],
         "lies inside the input --ckpt"),
    Case("robustness out is a ckpt", ["robustness", "--no-plot", "--ckpt", "{HF}", "--ckpt",
                                      "{CK}", "--out", "{CK}"],
         "is the same place as the input --ckpt"),
    Case("robustness out contains texts", ["robustness", "--no-plot", "--ckpt", "{CK}",
                                           "--texts", "{TEXTS}", "--out", "{W}/texts"],
         "contains the input --texts"),
    Case("eval out is ckpt", ["eval", "--config.ckpt={CK}", "--config.out_dir={LINK}",
                              "--config.benchmarks=jsonl:{BENCH}", "--config.samplers=lead1",
                              "--config.nfe=8"], "is the same place as the input ckpt"),
    Case("eval out contains benchmark file", ["eval", "--config.ckpt={CK}",
                                              "--config.out_dir={W}/texts",
                                              "--config.benchmarks=jsonl:{BENCH}",
                                              "--config.samplers=lead1", "--config.nfe=8"],
         "contains the input benchmark file"),
    Case("train out inside init_ckpt", _train(out_dir="{INIT}/run"),
         "lies inside the input init_ckpt"),
    Case("train out contains data", _train(out_dir="{W}/data"),
         "contains the input data.files"),
    # 2. safetensors headers: dtypes and offsets.
    Case("float tensor declared I32", ["convert", "--no-progress", "--hf", "{BAD_I32}",
                                       "--out", "{W}/new"], "{FIRST} has dtype I32"),
    Case("float offsets", ["convert", "--no-progress", "--hf", "{BAD_FLOATOFF}", "--out",
                           "{W}/new"], "expected non-negative integers"),
    Case("negative offsets", ["convert", "--no-progress", "--hf", "{BAD_NEGOFF}", "--out",
                              "{W}/new"], "expected non-negative integers"),
    Case("string offsets", ["convert", "--no-progress", "--hf", "{BAD_STROFF}", "--out",
                            "{W}/new"], "expected non-negative integers"),
    Case("offsets past the end", ["convert", "--no-progress", "--hf", "{BAD_PASTEND}",
                                  "--out", "{W}/new"], "truncated safetensors file"),
    Case("overlapping offsets", ["convert", "--no-progress", "--hf", "{BAD_OVERLAP}",
                                 "--out", "{W}/new"], "overlap in data_offsets"),
    # A tokenizer that does not fit the model would sample junk.
    Case("sample tokenizer too large", ["sample", "--no-progress", "--ckpt", "{CK}",
                                        "--tokenizer", "{TOK}", "--prompt", "hi",
                                        "--sampler", "remask"],
         "tokens do not fit the model's vocabulary 96"),
    Case("sample tokenizer mask id differs", ["sample", "--no-progress", "--ckpt", "{MASKCK}",
                                              "--tokenizer", "{TOK}", "--prompt", "hi",
                                              "--sampler", "remask"],
         "differs from the model's"),
    Case("robustness tokenizer mask id differs", ["robustness", "--no-plot", "--ckpt",
                                                  "{MASKCK}", "--tokenizer", "{TOK}",
                                                  "--texts", "{TEXTS}", "--out", "{W}/rob"],
         "differs from the model's"),
    # 3. A run resumes only with the settings it was started with.
    Case("resume with another lr", _train(**{"optimizer.lr": 0.1}),
         "optimizer.lr: 0.001 -> 0.1"),
    Case("resume with another seed and objective", _train(seed=5, objective="mdm"),
         "(objective: 'dsl' -> 'mdm', seed: 0 -> 5)"),
]


def _fill(text, w):
    for k, v in w.items():
        text = text.replace("{" + k + "}", v)
    return text


def _argv(case, w):
    argv = list(case.argv)
    if "TRAIN_OVERRIDES" in argv:  # a train command: the world's run config plus overrides
        over = {k: _fill(v, w) if isinstance(v, str) else v
                for k, v in json.loads(argv.pop()).items()}
        argv.pop()
        argv += [f"--config.{x}" for x in _train_overrides(w, **over)]
    return [_fill(a, w) for a in argv]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_refused_and_nothing_changed(case, world, capsys):
    before = tree_hashes(world["W"])
    code = main(_argv(case, world))
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == case.code, err
    assert len(lines) == 1, err
    assert _fill(case.fragment, world) in lines[0], lines[0]
    assert "Traceback" not in err
    assert tree_hashes(world["W"]) == before


def test_symlink_export_self_check_resolves_links(world):
    """The issue's worst case, on the library: a link to the checkpoint as --ckpt and
    the checkpoint itself as --hf is the same place (before: compared as abspath)."""
    from dsl_jax.conversion.export import export

    with pytest.raises(UserError, match="is the same place as the input --ckpt"):
        export(world["LINK"], world["CK"], overwrite=True, progress=False)
    assert checkpoint.is_checkpoint(world["CK"])


def test_check_output_apart_unit(tmp_path):
    """Siblings and name prefixes are apart; equal, containing and inside are not, for
    local paths (links resolved) and bucket paths (normalised)."""
    a = tmp_path / "a"
    a.mkdir()
    os.symlink(a, tmp_path / "l")
    storage.check_output_apart(str(tmp_path / "ab"), {"x": str(a)})  # a prefix, not a parent
    storage.check_output_apart(str(tmp_path / "b"), {"x": str(a), "y": ""})
    storage.check_output_apart("gs://b/ab", ["gs://b/a"])
    storage.check_output_apart(str(a), ["gs://b/a"])  # different worlds
    for out, inputs, frag in [
        (str(tmp_path / "l" / "x"), {"x": str(a)}, "lies inside the input x"),
        (str(tmp_path), {"x": str(tmp_path / "l")}, "contains the input x"),
        ("gs://b/a/", ["gs://b//a"], "is the same place as the input gs://b//a"),
        ("gs://b/a/../c", ["gs://b/c/d"], "contains the input"),
    ]:
        with pytest.raises(UserError, match=frag.replace("/", ".")):
            storage.check_output_apart(out, inputs, "--out")


def test_resume_check_allows_what_may_change_and_lists_the_rest(world):
    w = world
    same = load_train_config("configs/dsl_small.py", _train_overrides(
        w, steps=10, log_every=5, save_every=5, keep=1, mesh="fsdp=2"))
    assert check_resume_settings(same, w["RUN"]) is True
    fresh = load_train_config("configs/dsl_small.py", _train_overrides(
        w, out_dir=os.path.join(w["W"], "nothing_here")))
    assert check_resume_settings(fresh, fresh.out_dir) is False
    other = load_train_config("configs/dsl_small.py", _train_overrides(
        w, **{"optimizer.lr": 0.5, "dsl.noise_dim": 8}))
    with pytest.raises(UserError) as e:
        check_resume_settings(other, w["RUN"])
    assert "dsl.noise_dim: 16 -> 8" in str(e.value) and "optimizer.lr" in str(e.value)
    assert "\n" not in str(e.value)
    # The saved config is the one the run was started with, untouched by the check.
    saved = json.load(open(os.path.join(w["RUN"], "config.json")))
    assert saved["optimizer"]["lr"] == json.loads(same.to_json())["optimizer"]["lr"]
    assert np.isfinite(saved["optimizer"]["lr"])


def test_resumed_run_keeps_its_config_json(world, tmp_path, capsys):
    """End to end: a run saved at step 2 resumes to step 4 (steps may change) with its
    config.json untouched; resumed again with another lr it is refused, nothing changed."""
    w = {**world, "RUN": str(tmp_path / "run")}
    argv = ["train", "--no-progress", "--config", "configs/dsl_small.py"]
    assert main(argv + [f"--config.{x}" for x in _train_overrides(w, steps=2)]) == 0
    cfg_json = open(os.path.join(w["RUN"], "config.json"), "rb").read()
    assert json.loads(cfg_json)["steps"] == 2
    assert main(argv + [f"--config.{x}" for x in _train_overrides(w, steps=4)]) == 0
    assert open(os.path.join(w["RUN"], "config.json"), "rb").read() == cfg_json
    steps = [json.loads(x)["step"] for x in open(os.path.join(w["RUN"], "metrics.jsonl"))]
    assert steps == [1, 2, 3, 4]
    capsys.readouterr()
    before = tree_hashes(w["RUN"])
    assert main(argv + [f"--config.{x}" for x in _train_overrides(
        w, steps=4, **{"optimizer.lr": 0.1})]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "optimizer.lr: 0.001 -> 0.1" in err
    assert tree_hashes(w["RUN"]) == before
