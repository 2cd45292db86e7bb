"""Every output written by one rule (issue 17, docs/storage.md "Outputs"): a write that
fails (a full disk, a read-only file system, a regular file where a folder should be)
ends the command with exit status 1 and ONE stderr line naming the path and the reason;
the previous output is byte-for-byte unchanged and no temporary is left behind. A
``convert --overwrite`` killed at any point and run again ends with the output of an
uninterrupted run and no hidden leftovers.

Faults are injected at the OS level (we may run as root, where chmod cannot make a
folder read-only): Python's ``open`` for writing and ``os.write`` under the test's
folder are given a byte budget, past which they write short and then raise ENOSPC, or
they raise EROFS at once.
"""

import builtins
import errno
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from dsl_jax import checkpoint, config, storage
from dsl_jax.cli import main
from dsl_jax.model import LLaDA
from test_conversion import CFG, random_tensors, write_hf
from test_faults import train_inputs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # the eval's fake generator: tests.eval_fixtures:fake_factory
    sys.path.insert(0, ROOT)


# ---- the world ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import jax

    from dsl_jax.conversion.convert import convert
    from dsl_jax.sharding import make_mesh

    d = tmp_path_factory.mktemp("outputs")
    w = {"W": str(d)}
    w["HF"] = write_hf(str(d / "hf"), CFG, random_tensors(CFG), split=False)
    w["CK"] = str(d / "ck")
    convert(w["HF"], w["CK"], mesh=make_mesh(devices=jax.devices()[:1]), progress=False)
    w.update(train_inputs(d, 60))
    w["TEXTS"] = str(d / "texts.txt")
    open(w["TEXTS"], "w").write("the cat sat on a mat\n")
    w["BENCH"] = str(d / "bench" / "test.jsonl")
    os.makedirs(d / "bench")
    open(w["BENCH"], "w").write("".join(json.dumps({"document": f"the cat sat {i}",
                                                    "summary": "a cat"}) + "\n"
                                        for i in range(4)))
    w["FILE"] = str(d / "a_file")  # a regular file where a folder is needed
    open(w["FILE"], "w").write("not a folder\n")
    # Previous outputs, to be kept whole by failed replacements.
    w["OUTS"] = str(d / "outs")
    os.makedirs(w["OUTS"])
    w["RESULTS"] = os.path.join(w["OUTS"], "results.jsonl")
    open(w["RESULTS"], "w").write('{"previous": "results"}\n')
    w["OLDCK"] = os.path.join(w["OUTS"], "oldck")
    checkpoint.save_model(w["OLDCK"], LLaDA(config.preset("tiny", dtype="float32"),
                                            rngs=nnx.Rngs(params=1)))
    w["OLDHF"] = os.path.join(w["OUTS"], "oldhf")
    os.makedirs(w["OLDHF"])
    open(os.path.join(w["OLDHF"], "config.json"), "w").write('{"old": true}\n')
    w["EVAL"] = os.path.join(w["OUTS"], "eval")
    w["RUN"] = os.path.join(w["OUTS"], "run")
    return w


def tree_hashes(root):
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


def leftovers(root):
    """Hidden temporaries and aside copies under ``root`` (our own ``.NAME.tmp``,
    ``.NAME.tmp-HOST-PID``, ``.NAME.old``; orbax's ``*.orbax-checkpoint-tmp*``)."""
    found = []
    for dirpath, dirnames, files in os.walk(root):
        for name in dirnames + files:
            if (name.startswith(".") and (".tmp" in name or name.endswith(".old"))) \
                    or "orbax-checkpoint-tmp" in name:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


# ---- fault injection ----------------------------------------------------------------------

class Faults:
    """Writes under ``root`` through Python's ``open`` or ``os.write``: ``budget`` bytes
    are written, then a short write and ENOSPC (``kind="enospc"``); or every open for
    writing raises EROFS (``kind="erofs"``)."""

    def __init__(self, monkeypatch, root, kind="enospc", budget=0, appends_only=False):
        self.root, self.kind, self.budget = os.path.realpath(root), kind, budget
        self.hit = 0
        real_open, real_write, real_os_open = builtins.open, os.write, os.open
        faults = self

        class Limited:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                n = len(memoryview(data).cast("B")) if not isinstance(data, str) else \
                    len(data.encode())
                allowed = faults.take(n)
                if allowed < n:
                    if allowed:
                        self._f.write(data[:allowed])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

            def __iter__(self):
                return iter(self._f)

        def fake_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") \
                    and self.under(os.fsdecode(file)):
                if self.kind == "erofs":
                    self.hit += 1
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(file))
                return Limited(real_open(file, mode, *args, **kwargs))
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(p, flags, *args, **kwargs):
            if self.kind == "erofs" and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) \
                    and self.under(os.fsdecode(p)):
                self.hit += 1
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(p))
            return real_os_open(p, flags, *args, **kwargs)

        def fake_write(fd, data):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if not self.under(target):
                return real_write(fd, data)
            n = len(memoryview(data).cast("B"))
            allowed = self.take(n)
            if allowed == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, memoryview(data).cast("B")[:allowed])

        if not appends_only:  # (else ``os.write`` alone: the appends' writes)
            monkeypatch.setattr(builtins, "open", fake_open)
            monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "write", fake_write)

    def under(self, p):
        p = os.path.realpath(p) if p else ""
        return p == self.root or p.startswith(self.root + os.sep)

    def take(self, n):
        if self.kind != "enospc":
            return n
        allowed = max(0, min(n, self.budget))
        self.budget -= allowed
        if allowed < n:
            self.hit += 1
        return allowed


def run_cli(argv, capsys):
    """(exit code, the stderr lines that are neither progress bars nor status lines)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [x for x in err.splitlines() if x.strip() and not re.search(r"\d%\|", x)
                  and not x.startswith(("loading ", "wrote "))]


def _fill(argv, w):
    out = []
    for a in argv:
        for k, v in w.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


def _train(out_dir):
    over = {"model": "tiny", "init_ckpt": "{INIT}", "data.files": "{DATA}",
            "data.tokenizer": "{TOK}", "steps": 2, "global_batch": 8, "seq_len": 16,
            "dsl.noise_dim": 8, "dsl.chunk_positions": 16, "save_every": 2, "log_every": 1,
            "eval.every": 0, "micro_batches": 1, "mesh": "fsdp=-1",
            "data.shuffle_buffer": 0, "out_dir": out_dir}
    return ["train", "--no-progress", "--config", "configs/dsl_small.py"] + [
        f"--config.{k}={v}" for k, v in over.items()]


def _eval(out_dir):
    over = {"tokenizer": "{TOK}", "benchmarks": "jsonl:{BENCH}", "samplers": "remask",
            "nfe": "4", "num_examples": 4, "batch_size": 2, "plots": "false",
            "generator": "tests.eval_fixtures:fake_factory", "out_dir": out_dir}
    return ["eval"] + [f"--config.{k}={v}" for k, v in over.items()]


SAMPLE = ["sample", "--no-progress", "--ckpt", "{INIT}", "--tokenizer", "{TOK}", "--prompt",
          "the cat", "--sampler", "remask", "--nfe", "2", "--gen-length", "4"]

# (name, argv, the path the line must name, fault kind, byte budget)
WRITE_FAULTS = [
    ("sample --out, disk full", SAMPLE + ["--out", "{RESULTS}"], "{RESULTS}", "enospc", 40),
    ("sample --out, read-only", SAMPLE + ["--out", "{RESULTS}"], "{RESULTS}", "erofs", 0),
    ("export --overwrite, disk full", ["export", "--no-progress", "--ckpt", "{CK}", "--hf",
                                       "{OLDHF}", "--overwrite"], "{OLDHF}/", "enospc", 5000),
    ("export --overwrite, read-only", ["export", "--no-progress", "--ckpt", "{CK}", "--hf",
                                       "{OLDHF}", "--overwrite"], "{OLDHF}/", "erofs", 0),
    ("convert --overwrite, disk full", ["convert", "--no-progress", "--hf", "{HF}", "--out",
                                        "{OLDCK}", "--overwrite"], "{OLDCK}", "enospc", 0),
    ("eval appends, disk full", _eval("{EVAL}"), "{EVAL}/cells/", "enospc", 30),
    ("train checkpoint save, disk full", _train("{RUN}"), "{RUN}/", "enospc", 0),
]


@pytest.mark.parametrize("name,argv,where,kind,budget", WRITE_FAULTS,
                         ids=[c[0] for c in WRITE_FAULTS])
def test_write_fault_is_one_line_and_keeps_the_previous_output(
        name, argv, where, kind, budget, world, capsys, monkeypatch):
    before = tree_hashes(world["W"])
    argv = _fill(argv, world)
    if name.startswith("train"):  # config.json may be written; the checkpoint's data fails
        budget = len(json.dumps({})) + 10 ** 4
    faults = Faults(monkeypatch, world["OUTS"], kind, budget,
                    appends_only=name.startswith("eval"))
    code, lines = run_cli(argv, capsys)
    monkeypatch.undo()
    assert faults.hit, "the fault was never reached"
    assert code == 1, lines
    assert len(lines) == 1, lines
    reason = {"enospc": "no space left on device", "erofs": "read-only file system"}[kind]
    line = lines[0]
    assert line.startswith(f"dsl-jax {argv[0]}: error: ") and line.endswith(reason), line
    assert _fill([where], world)[0] in line, line
    after = tree_hashes(world["W"])
    if name.startswith(("eval", "train")):  # a new output folder: what it kept is whole
        new = {k: v for k, v in after.items() if k not in before}
        for rel in new:
            p = os.path.join(world["W"], rel)
            if p.endswith(".jsonl"):  # appended records: whole lines only
                data = open(p, "rb").read()
                assert not data or data.endswith(b"\n"), (rel, data[-40:])
        after = {k: v for k, v in after.items() if k in before}
    assert after == before
    assert leftovers(world["W"]) == []


@pytest.fixture(autouse=True)
def _fresh_new_outputs(world):
    """The folders a case creates (eval's, train's) are removed after it."""
    yield
    storage.rmtree(world["EVAL"])
    storage.rmtree(world["RUN"])


@pytest.mark.parametrize("argv", [
    ["convert", "--no-progress", "--hf", "{HF}", "--out", "{FILE}/ck"],
    SAMPLE + ["--out", "{FILE}/sub/results.jsonl"],
    _train("{FILE}/run"),
    _eval("{FILE}/eval"),
    ["robustness", "--no-plot", "--ckpt", "{INIT}", "--tokenizer", "{TOK}", "--texts",
     "{TEXTS}", "--out", "{FILE}/rob"],
    ["demo", "--profile", "quick", "--out", "{FILE}/demo"],
    ["export", "--no-progress", "--ckpt", "{CK}", "--hf", "{FILE}/hf"],
], ids=["convert", "sample", "train", "eval", "robustness", "demo", "export"])
def test_output_under_a_regular_file_is_one_line(argv, world, capsys):
    before = tree_hashes(world["W"])
    argv = _fill(argv, world)
    code, lines = run_cli(argv, capsys)
    assert code == 1, lines
    assert lines == [f"dsl-jax {argv[0]}: error: {world['FILE']}: not a directory"], lines
    assert tree_hashes(world["W"]) == before
    assert leftovers(world["W"]) == []


# ---- the storage layer itself -------------------------------------------------------------

def test_append_retries_short_writes_and_cuts_back_a_failed_one(tmp_path, monkeypatch):
    p = tmp_path / "records.jsonl"
    p.write_bytes(b"old\n")
    real = os.write
    calls = []

    def short(fd, data):  # at most 3 bytes a call
        calls.append(len(data))
        return real(fd, bytes(memoryview(data)[:3]))

    monkeypatch.setattr(os, "write", short)
    storage.append_bytes(str(p), b"0123456789\n")
    assert p.read_bytes() == b"old\n0123456789\n" and len(calls) == 4
    monkeypatch.undo()
    Faults(monkeypatch, tmp_path, "enospc", budget=5)
    with pytest.raises(OSError) as e:
        storage.append_bytes(str(p), b"abcdefghij\n")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert storage.os_error_line(e.value) == f"{p}: no space left on device"
    monkeypatch.undo()
    assert p.read_bytes() == b"old\n0123456789\n"  # no torn tail


def test_write_bytes_removes_its_temporary_and_a_dead_writers(tmp_path, monkeypatch):
    p = tmp_path / "out.json"
    p.write_text("old")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = storage.temp_sibling(str(p)).rsplit("-", 1)[0] + f"-{dead}"
    open(stale, "w").write("a killed writer's")
    alive = storage.temp_sibling(str(p)).rsplit("-", 1)[0] + f"-{os.getppid()}"
    open(alive, "w").write("a live writer's")
    Faults(monkeypatch, tmp_path, "enospc", budget=2)
    with pytest.raises(OSError, match="No space"):
        storage.write_text(str(p), "new contents")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == sorted(["out.json", os.path.basename(alive)])
    storage.write_text(str(p), "new")
    assert p.read_text() == "new"


def test_makedirs_through_a_file_names_the_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    for target in (f, f / "a" / "b"):
        with pytest.raises(NotADirectoryError) as e:
            storage.makedirs(str(target))
        assert storage.os_error_line(e.value) == f"{f}: not a directory"


# ---- replacing a checkpoint: moved aside, deleted last ------------------------------------

KILL_POINTS = {
    # after the old checkpoint was moved aside, before the new one is in place
    "after-aside": "os.replace", "during-delete": "shutil.rmtree", "mid-write": "write",
}

KILLER = r"""
import os, shutil, signal, sys
import dsl_jax.checkpoint as ck
from dsl_jax import storage
point, argv = sys.argv[1], sys.argv[2:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "after-aside":
    real = os.replace
    def replace(a, b):
        real(a, b)
        if b.endswith(".old"):
            die()
    ck.os.replace = replace
elif point == "during-delete":
    real = shutil.rmtree
    def rmtree(p, *a, **k):
        if str(p).endswith(".old"):
            os.remove(os.path.join(p, "dsl_jax.json"))  # half deleted
            real(os.path.join(p, "params"))
            die()
        return real(p, *a, **k)
    ck.shutil.rmtree = rmtree
else:
    real = storage.write_text
    def write_text(p, text):
        if p.endswith("_CHECKPOINT_METADATA"):
            die()
        return real(p, text)
    storage.write_text = write_text
from dsl_jax.cli import main
sys.exit(main(argv))
"""


def _params(path):
    meta = checkpoint.read_meta(path)
    cfg = checkpoint.model_config(meta)
    tree = checkpoint.restore(path, checkpoint.abstract_params(cfg, checkpoint.dsl_config(meta)))
    return meta, {"/".join(str(k.key) for k in kp): np.asarray(v)
                  for kp, v in __import__("jax").tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_convert_overwrite_killed_then_rerun(point, world, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    out = str(tmp_path / "ck")
    checkpoint.save_model(out, LLaDA(config.preset("tiny", dtype="float32"),
                                     rngs=nnx.Rngs(params=3)))
    old_hashes = tree_hashes(out)
    argv = ["convert", "--no-progress", "--dtype", "float32", "--hf", world["HF"], "--out",
            out, "--overwrite"]
    killed = subprocess.run([sys.executable, "-c", KILLER, point, *argv], env=env,
                            capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # What the kill left is settled by the next check of the output: the old checkpoint
    # whole again (killed before the new one was in place) or the new one.
    checkpoint.check_target(out, overwrite=True)
    if point == "during-delete":
        assert checkpoint.is_checkpoint(out) and tree_hashes(out) != old_hashes
    else:
        assert tree_hashes(out) == old_hashes
    assert leftovers(str(tmp_path)) == []
    assert main(argv) == 0
    ref = str(tmp_path / "ref")
    assert main([a if a != out else ref for a in argv[:-1]]) == 0
    meta, params = _params(out)
    meta_ref, params_ref = _params(ref)
    assert meta == meta_ref and params.keys() == params_ref.keys()
    for k in params:
        np.testing.assert_array_equal(params[k], params_ref[k])
    def layout(root):  # (orbax names its data files at random: their count only)
        return sorted(os.listdir(root)), len(tree_hashes(os.path.join(root, "params")))
    assert layout(out) == layout(ref)
    assert leftovers(str(tmp_path)) == []
