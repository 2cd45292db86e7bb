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


def train_inputs(d, n_texts: int) -> dict:
    """In folder ``d``: DATA (data/data.jsonl of ``n_texts`` patterned texts), TOK (a
    tokenizer trained on them) and INIT (a tiny LLaDA checkpoint), as paths."""
    r = random.Random(0)
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(r.randint(8, 20)))
             for i in range(n_texts)]
    os.makedirs(d / "data")
    out = {"DATA": str(d / "data" / "data.jsonl"), "TOK": str(d / "tok" / "tokenizer.json"),
           "INIT": str(d / "init")}
    with open(out["DATA"], "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    train_small(texts, 512, out["TOK"])
    checkpoint.save_model(out["INIT"], LLaDA(config.preset("tiny", dtype="float32"),
                                             rngs=nnx.Rngs(params=0)))
    return out


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
    w.update(train_inputs(d, 100))
    # A model whose mask token id is not the tokenizer's (vocabulary large enough).
    tiny = config.preset("tiny", dtype="float32")
    w["MASKCK"] = str(d / "maskck")
    checkpoint.save_model(w["MASKCK"], LLaDA(config.preset(
        "tiny", dtype="float32", mask_token_id=tiny.vocab_size - 1), rngs=nnx.Rngs(params=0)))
    # Damaged copies of INIT (with its tokenizer): a data file truncated, one emptied, the
    # tree's metadata deleted, dsl_jax.json cut short, a model config value of the wrong type.
    import glob
    import shutil
    shutil.copy(w["TOK"], os.path.join(w["INIT"], "tokenizer.json"))
    for name in ("TRUNC", "EMPTIED", "NOTREE", "CUTMETA", "BADCFG"):
        w[name] = str(d / f"ck_{name.lower()}")
        shutil.copytree(w["INIT"], w[name])
    biggest = lambda root: max(glob.glob(root + "/params/ocdbt.process_*/d/*"),  # noqa: E731
                               key=os.path.getsize)
    big = biggest(w["TRUNC"])
    open(big, "r+b").truncate(os.path.getsize(big) // 2)
    open(biggest(w["EMPTIED"]), "wb").close()
    os.remove(os.path.join(w["NOTREE"], "params", "_METADATA"))
    meta = open(os.path.join(w["CUTMETA"], "dsl_jax.json")).read()
    open(os.path.join(w["CUTMETA"], "dsl_jax.json"), "w").write(meta[:len(meta) // 2])
    meta = json.loads(meta)
    meta["model"]["rope_theta"] = "big"
    open(os.path.join(w["BADCFG"], "dsl_jax.json"), "w").write(json.dumps(meta))
    # Hugging Face folders whose config.json has a value of the wrong type.
    for name, key, value in (("HF_STRDIM", "d_model", "64"), ("HF_STREPS", "rms_norm_eps", "tiny"),
                             ("HF_STRVOCAB", "vocab_size", "96")):
        w[name] = str(d / name.lower())
        shutil.copytree(w["HF"], w[name])
        hf_cfg = json.load(open(os.path.join(w["HF"], "config.json")))
        hf_cfg[key] = value
        open(os.path.join(w[name], "config.json"), "w").write(json.dumps(hf_cfg))
    w["LONG"] = str(d / "texts" / "long.txt")
    open(w["LONG"], "w").write(" ".join(["the cat sat on a mat"] * 100) + "\n")
    w["EMPTY"] = str(d / "texts" / "empty.jsonl")
    open(w["EMPTY"], "w").write("")
    # Two benchmark files whose keys collide even with their folders' names.
    for sub in ("x", "y"):
        os.makedirs(d / "texts" / sub / "b1")
        shutil.copy(w["BENCH"], d / "texts" / sub / "b1" / "test.jsonl")
    # A finished sweep (lead-1 cell: no model needed), to be refused with other settings.
    w["SWEEP"] = str(d / "sweep")
    assert main(["eval", f"--config.ckpt={w['CK']}", f"--config.out_dir={w['SWEEP']}",
                 f"--config.benchmarks=jsonl:{w['BENCH']}", "--config.samplers=lead1",
                 "--config.nfe=8", "--config.plots=false"]) == 0
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
    Case("resume choice unknown", _train(resume="yes"),
         "resume must be one of auto, overwrite, got 'yes'"),
    Case("train steps negative", _train(steps=-1), "steps must be positive, got -1"),
    Case("train steps not a number", _train(steps="abc"), "config steps: expected int"),
    Case("train unknown key", TRAIN + ["--config.nosuch=1"], "unknown config key 'nosuch'"),
    Case("train config file missing", ["train", "--config", "configs/nosuch.py"],
         "no such config file"),
    Case("train init_ckpt damaged", _train(init_ckpt="{EMPTIED}", out_dir="{W}/run2"),
         "the checkpoint is damaged or incomplete ("),
    # 4. Damaged checkpoints: one line naming the checkpoint, for every reader.
    Case("forward ckpt truncated", ["forward", "--model", "{TRUNC}"],
         "{TRUNC}: the checkpoint is damaged or incomplete ("),
    Case("forward ckpt tree metadata deleted", ["forward", "--model", "{NOTREE}"],
         "{NOTREE}: the checkpoint is damaged or incomplete (no readable tree metadata"),
    Case("forward ckpt meta cut", ["forward", "--model", "{CUTMETA}"], "not valid JSON"),
    Case("forward ckpt config wrong type", ["forward", "--model", "{BADCFG}"],
         "rope_theta must be a number, got 'big'"),
    Case("sample ckpt truncated", ["sample", "--no-progress", "--ckpt", "{TRUNC}", "--prompt",
                                   "hi", "--sampler", "remask", "--nfe", "4",
                                   "--gen-length", "4"],
         "the checkpoint is damaged or incomplete"),
    Case("sample ckpt emptied file", ["sample", "--no-progress", "--ckpt", "{EMPTIED}",
                                      "--prompt", "hi", "--sampler", "remask", "--nfe", "4",
                                      "--gen-length", "4"],
         "the checkpoint is damaged or incomplete ("),
    Case("sample ckpt config wrong type", ["sample", "--no-progress", "--ckpt", "{BADCFG}",
                                           "--prompt", "hi", "--sampler", "remask"],
         "{BADCFG}/dsl_jax.json: rope_theta must be a number, got 'big'"),
    Case("export ckpt truncated", ["export", "--no-progress", "--ckpt", "{TRUNC}", "--hf",
                                   "{W}/exp"], "the checkpoint is damaged or incomplete"),
    Case("export ckpt meta cut", ["export", "--no-progress", "--ckpt", "{CUTMETA}", "--hf",
                                  "{W}/exp"], "dsl_jax.json: not valid JSON"),
    Case("export ckpt missing", ["export", "--no-progress", "--ckpt", "{W}/nosuch", "--hf",
                                 "{W}/exp"], "no such checkpoint directory"),
    Case("export hf exists", ["export", "--no-progress", "--ckpt", "{CK}", "--hf",
                              "{EXPORTED}"], "pass --overwrite to replace it"),
    Case("robustness ckpt truncated", ["robustness", "--no-plot", "--ckpt", "{TRUNC}",
                                       "--texts", "{TEXTS}", "--out", "{W}/rob"],
         "the checkpoint is damaged or incomplete"),
    Case("robustness ckpt tree metadata deleted", ["robustness", "--no-plot", "--ckpt",
                                                   "{NOTREE}", "--texts", "{TEXTS}", "--out",
                                                   "{W}/rob"],
         "no readable tree metadata"),
    Case("eval ckpt emptied file", ["eval", "--config.ckpt={EMPTIED}",
                                    "--config.out_dir={W}/ev", "--config.benchmarks=jsonl:{BENCH}",
                                    "--config.samplers=remask", "--config.nfe=4",
                                    "--config.gen_length=4", "--config.plots=false"],
         "the checkpoint is damaged or incomplete"),
    Case("verify ckpt missing", ["verify", "--hf", "{HF}", "--ckpt", "{W}/nosuch"],
         "no such checkpoint directory"),
    # 5. convert: Hugging Face folders and config.json values.
    Case("convert d_model a string", ["convert", "--no-progress", "--hf", "{HF_STRDIM}",
                                      "--out", "{W}/new"], "d_model must be an integer, got '64'"),
    Case("convert rms_norm_eps a string", ["convert", "--no-progress", "--hf", "{HF_STREPS}",
                                           "--out", "{W}/new"],
         "config.json: rms_norm_eps must be a number, got 'tiny'"),
    Case("convert vocab_size a string", ["convert", "--no-progress", "--hf", "{HF_STRVOCAB}",
                                         "--out", "{W}/new"], "vocab_size must be an integer"),
    Case("convert hf missing", ["convert", "--no-progress", "--hf", "{W}/nosuch", "--out",
                                "{W}/new"], "nosuch"),
    Case("convert out exists", ["convert", "--no-progress", "--hf", "{HF}", "--out",
                                "{EXPORTED}"], "pass --overwrite to replace it"),
    Case("convert bad dtype", ["convert", "--hf", "{HF}", "--out", "{W}/new", "--dtype",
                               "int8"], "argument --dtype: invalid choice"),
    Case("convert bad mesh", ["convert", "--no-progress", "--hf", "{HF}", "--out", "{W}/new",
                              "--mesh", "bogus=2"], "unknown axis name(s) ['bogus']"),
    # 6. sample: flags and prompts.
    Case("sample sde needs dsl", ["sample", "--no-progress", "--ckpt", "{INIT}", "--prompt",
                                  "hi"], "checkpoint has no DSL parameters"),
    Case("sample knob on remask", ["sample", "--no-progress", "--ckpt", "{INIT}", "--prompt",
                                   "hi", "--sampler", "remask", "--s-min", "0.1"], "--s-min"),
    Case("sample nfe 1", ["sample", "--no-progress", "--ckpt", "{INIT}", "--prompt", "hi",
                          "--sampler", "remask", "--nfe", "0"], "nfe"),
    Case("sample gen-length 0", ["sample", "--no-progress", "--ckpt", "{INIT}", "--prompt",
                                 "hi", "--sampler", "remask", "--gen-length", "0"],
         "--gen-length must be positive, got 0"),
    Case("sample batch-size 0", ["sample", "--no-progress", "--ckpt", "{INIT}", "--prompt",
                                 "hi", "--sampler", "remask", "--batch-size", "0"],
         "--batch-size must be positive, got 0"),
    Case("sample empty prompts file", ["sample", "--no-progress", "--ckpt", "{INIT}",
                                       "--prompts-file", "{EMPTY}", "--sampler", "remask"],
         "no prompts"),
    Case("sample nfe not a number", ["sample", "--ckpt", "{INIT}", "--prompt", "hi", "--nfe",
                                     "many"], "argument --nfe: invalid int value: 'many'"),
    # 7. eval: benchmarks, samplers, numbers, a sweep's settings.
    Case("eval benchmark keys collide", ["eval", "--config.ckpt={CK}", "--config.out_dir={W}/ev",
                                         "--config.benchmarks=jsonl:{W}/texts/x/b1/test.jsonl,"
                                         "jsonl:{W}/texts/y/b1/test.jsonl",
                                         "--config.samplers=lead1", "--config.nfe=8"],
         "rename a file or its folder"),
    Case("eval sweep rerun with other settings", ["eval", "--config.ckpt={CK}",
                                                  "--config.out_dir={SWEEP}",
                                                  "--config.benchmarks=jsonl:{BENCH}",
                                                  "--config.samplers=lead1", "--config.nfe=8",
                                                  "--config.max_words=7",
                                                  "--config.plots=false"],
         "holds results of different settings (max_words:"),
    Case("eval empty benchmark file", ["eval", "--config.ckpt={CK}", "--config.out_dir={W}/ev",
                                       "--config.benchmarks=jsonl:{EMPTY}",
                                       "--config.samplers=lead1", "--config.nfe=8"],
         "has no non-empty example"),
    Case("eval unknown sampler", ["eval", "--config.ckpt={CK}", "--config.out_dir={W}/ev",
                                  "--config.benchmarks=jsonl:{BENCH}",
                                  "--config.samplers=nosuch", "--config.nfe=8"],
         "unknown sampler 'nosuch'"),
    Case("eval nfe 0", ["eval", "--config.ckpt={CK}", "--config.out_dir={W}/ev",
                        "--config.benchmarks=jsonl:{BENCH}", "--config.samplers=remask",
                        "--config.nfe=0"], "each NFE must be at least 2, got 0"),
    Case("eval nfe not a number", ["eval", "--config.nfe=x"],
         "expected comma-separated integers, got 'x'"),
    Case("eval unknown benchmark", ["eval", "--config.ckpt={CK}", "--config.out_dir={W}/ev",
                                    "--config.benchmarks=nosuchbench",
                                    "--config.samplers=lead1"], "unknown benchmark 'nosuchbench'"),
    Case("eval gen_length negative", ["eval", "--config.gen_length=-1"],
         "gen_length: must be positive"),
    Case("eval unknown key", ["eval", "--config.nosuchkey=1"], "unknown config key 'nosuchkey'"),
    # 8. robustness: texts and flags.
    Case("robustness text longer than the model", ["robustness", "--no-plot", "--ckpt",
                                                   "{INIT}", "--texts", "{LONG}", "--protocol",
                                                   "grid", "--max-length", "1000", "--out",
                                                   "{W}/rob"],
         "more than the model's max_sequence_length 256"),
    Case("robustness empty texts", ["robustness", "--no-plot", "--ckpt", "{INIT}", "--texts",
                                    "{EMPTY}", "--out", "{W}/rob"], "no text in the file"),
    Case("robustness rate out of range", ["robustness", "--no-plot", "--ckpt", "{INIT}",
                                          "--protocol", "grid", "--rates", "1.5", "--out",
                                          "{W}/rob"], "each rate must be in (0, 1), got 1.5"),
    Case("robustness rates with paper protocol", ["robustness", "--no-plot", "--ckpt", "{INIT}",
                                                  "--rates", "0.1", "--out", "{W}/rob"],
         "--rates applies to --protocol grid"),
    Case("robustness names count", ["robustness", "--no-plot", "--ckpt", "{INIT}", "--names",
                                    "a,b", "--out", "{W}/rob"],
         "--names: 2 name(s) for 1 checkpoint(s)"),
    Case("robustness texts not txt or jsonl", ["robustness", "--no-plot", "--ckpt", "{INIT}",
                                               "--texts", "{W}/data", "--out", "{W}/rob"],
         "expected a .txt or .jsonl file"),
    # 9. forward.
    Case("forward ids not numbers", ["forward", "--ids", "1,x"],
         "--ids: expected comma-separated integers"),
    Case("forward id outside vocabulary", ["forward", "--ids", "1,999999"],
         "token id 999999 is out of range"),
    Case("forward batch 0", ["forward", "--batch", "0"], "--batch and --length must be positive"),
    Case("forward unknown mesh axis", ["forward", "--mesh", "bogus=2"], "unknown axis name"),
    Case("forward mesh too large", ["forward", "--mesh", "fsdp=3"], "needs 3 devices, have 8"),
    Case("forward model missing", ["forward", "--model", "nosuch"], "nosuch: no such config file"),
    Case("forward model a text file", ["forward", "--model", "{TEXTS}"], "not valid JSON"),
    # 10. launch: values reaching gcloud, the command.
    Case("launch tpu value is an option", ["launch", "--tpu=--command=ls", "--zone", "z",
                                           "--dry-run", "--", "forward"],
         "--tpu '--command=ls': expected a name"),
    Case("launch project value is an option", ["launch", "--tpu", "t", "--zone", "z",
                                               "--project=--impersonate", "--dry-run", "--",
                                               "forward"], "--project '--impersonate'"),
    Case("launch worker negative", ["launch", "--tpu", "t", "--zone", "z", "--worker=-1",
                                    "--dry-run", "--", "forward"],
         "--worker '-1': expected 'all' or worker numbers"),
    Case("launch zone missing value", ["launch", "--tpu", "t", "--zone", "-z", "--", "forward"],
         "argument --zone: expected one argument"),
    Case("launch no command", ["launch", "--tpu", "t", "--zone", "z", "--dry-run"],
         "no command given"),
    Case("launch env without value", ["launch", "--tpu", "t", "--zone", "z", "--env", "NOEQ",
                                      "--dry-run", "--", "forward"], "expected KEY=VALUE"),
    Case("launch unknown subcommand", ["launch", "--tpu", "t", "--zone", "z", "--dry-run", "--",
                                       "nosuch"], "'nosuch' is not a dsl-jax subcommand"),
    Case("launch itself", ["launch", "--tpu", "t", "--zone", "z", "--dry-run", "--", "launch"],
         "launch cannot run itself"),
    # 11. compile-check: topologies and sizes.
    Case("compile-check zero dimension", ["compile-check", "--topology", "v5p:0x2x2"],
         "every dimension must be a positive number of chips"),
    Case("compile-check negative dimension", ["compile-check", "--topology", "v5p:-1x2x2"],
         "every dimension must be a positive number of chips"),
    Case("compile-check wrong dimension count", ["compile-check", "--topology", "v5p:2x2"],
         "a v5p topology has 3 dimensions"),
    Case("compile-check odd core count", ["compile-check", "--topology", "v5p-7"],
         "N must be one of 8, 16"),
    Case("compile-check zero slices", ["compile-check", "--num-slices", "0"],
         "--num-slices must be at least 1, got 0"),
    Case("compile-check batch 0", ["compile-check", "--batch", "0"],
         "--batch must be positive, got 0"),
    # 12. pod-sim, bench, demo, lm-eval.
    Case("pod-sim zero processes", ["pod-sim", "-n", "0", "--", "forward"],
         "-n must be at least 1, got 0"),
    Case("pod-sim zero devices", ["pod-sim", "--devices-per-process", "0", "--", "forward"],
         "--devices-per-process must be at least 1"),
    Case("pod-sim local-only command", ["pod-sim", "--", "demo"],
         "demo runs on this machine alone"),
    Case("pod-sim unknown subcommand", ["pod-sim", "--", "nosuch"],
         "'nosuch' is not a dsl-jax subcommand"),
    Case("pod-sim no command", ["pod-sim"], "no command given"),
    Case("bench unknown benchmark", ["bench", "nosuch"], "argument NAME: invalid choice: 'nosuch'"),
    Case("demo unknown profile", ["demo", "--profile", "nosuch"],
         "argument --profile: invalid choice: 'nosuch'"),
    Case("lm-eval unknown task", ["lm-eval", "--model", "dsl-jax", "--model_args",
                                  "ckpt={CK}", "--tasks", "nosuchtask"], "nosuchtask"),
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


@pytest.mark.slow
def test_damaged_resume_refused_then_overwrite_starts_afresh(world, tmp_path, capsys):
    """A run whose saved step is damaged is refused in one line, nothing changed;
    --config.resume=overwrite (with other settings) deletes the old run and starts anew,
    keeping files of the out_dir that are not the run's."""
    import glob

    w = {**world, "RUN": str(tmp_path / "run")}
    argv = ["train", "--no-progress", "--config", "configs/dsl_small.py"]
    assert main(argv + [f"--config.{x}" for x in _train_overrides(w, steps=2)]) == 0
    open(os.path.join(w["RUN"], "notes.txt"), "w").write("mine")
    victim = max((p for p in glob.glob(os.path.join(w["RUN"], "checkpoints", "2", "**"),
                                       recursive=True) if os.path.isfile(p)),
                 key=os.path.getsize)
    open(victim, "r+b").truncate(os.path.getsize(victim) // 2)
    capsys.readouterr()
    before = tree_hashes(w["RUN"])
    assert main(argv + [f"--config.{x}" for x in _train_overrides(w, steps=4)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "checkpoints/2: the checkpoint is damaged or incomplete" in err
    assert tree_hashes(w["RUN"]) == before
    # Other settings: refused, and the message names the way to start afresh.
    assert main(argv + [f"--config.{x}" for x in _train_overrides(
        w, steps=2, **{"optimizer.lr": 0.01})]) == 2
    assert "--config.resume=overwrite" in capsys.readouterr().err
    assert main(argv + [f"--config.{x}" for x in _train_overrides(
        w, steps=2, resume="overwrite", **{"optimizer.lr": 0.01})]) == 0
    assert json.load(open(os.path.join(w["RUN"], "config.json")))["optimizer"]["lr"] == 0.01
    steps = [json.loads(x)["step"] for x in open(os.path.join(w["RUN"], "metrics.jsonl"))]
    assert steps == [1, 2]  # the old run's metrics went with it
    assert open(os.path.join(w["RUN"], "notes.txt")).read() == "mine"
    assert len(glob.glob(os.path.join(w["RUN"], "events.out.tfevents*"))) == 1


def test_markdown_and_csv_cells_keep_their_place():
    """A name holding '|', a line break, a comma or quotes stays one cell: Markdown
    escapes '|' (and a backslash), joins lines; CSV quotes (read back exactly)."""
    import csv
    import io

    from dsl_jax.reports import csv_text, markdown_table

    name = 'a|b\nc, "d"\\'
    table = markdown_table(["Sampler", "R-1"], [[name, "1.00"]])
    lines = table.split("\n")
    assert len(lines) == 3
    assert lines[2] == '| a\\|b c, "d"\\\\ | 1.00 |'
    # Unescaped '|' separators: 3 per row, as in the header.
    count = lambda s: len(s.replace("\\\\", "").replace("\\|", ""))  - len(  # noqa: E731
        s.replace("\\\\", "").replace("\\|", "").replace("|", ""))
    assert count(lines[2]) == count(lines[0]) == 3
    text = csv_text(["name", "x"], [{"name": name, "x": 0.5}])
    assert list(csv.reader(io.StringIO(text))) == [["name", "x"], [name, "0.500000"]]
