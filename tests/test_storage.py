"""dsl_jax.storage: every function on a local directory and on a bucket of the local fake
GCS server, with the same expected results; remote errors as one UserError line."""

import os
import uuid

import pytest

from dsl_jax import storage
from dsl_jax.errors import UserError


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    bucket = request.getfixturevalue("gcs")
    return f"{bucket}/{uuid.uuid4().hex[:8]}"  # a fresh prefix per test


def test_write_read_exists(root):
    p = storage.join(root, "sub", "a.txt")
    assert not storage.exists(p) and not storage.isfile(p)
    storage.makedirs(storage.join(root, "sub"))
    storage.write_text(p, "héllo\n")
    assert storage.read_text(p) == "héllo\n"
    assert storage.read_bytes(p) == "héllo\n".encode()
    assert storage.exists(p) and storage.isfile(p) and not storage.isdir(p)
    assert storage.isdir(storage.join(root, "sub"))
    storage.write_bytes(p, b"\x00\x01")  # replaced whole
    assert storage.read_bytes(p) == b"\x00\x01"
    with storage.open(p, "rb") as f:
        assert f.read() == b"\x00\x01"
    storage.write_text(p, "line1\nline2\n")
    with storage.open(p) as f:
        assert [line for line in f] == ["line1\n", "line2\n"]
    if not storage.is_remote(root):  # no temporary file left beside it
        assert os.listdir(os.path.join(root, "sub")) == ["a.txt"]


def test_append(root):
    storage.makedirs(root)
    p = storage.join(root, "log.jsonl")
    storage.append_bytes(p, b"1\n")
    storage.append_bytes(p, b"2\n3\n")
    assert storage.read_bytes(p) == b"1\n2\n3\n"


def test_listdir_glob_see_fresh_writes(root):
    storage.makedirs(storage.join(root, "d"))
    assert storage.glob(storage.join(root, "*.txt")) == []
    for name in ("b.txt", "a.txt", "c.json", "d/e.txt"):
        storage.write_text(storage.join(root, *name.split("/")), name)
    assert sorted(storage.listdir(root)) == ["a.txt", "b.txt", "c.json", "d"]
    assert storage.glob(storage.join(root, "*.txt")) == [storage.join(root, "a.txt"),
                                                         storage.join(root, "b.txt")]
    storage.write_text(storage.join(root, "0.txt"), "new")  # the listing is not stale
    assert storage.glob(storage.join(root, "*.txt"))[0] == storage.join(root, "0.txt")
    assert "0.txt" in storage.listdir(root)


def test_remove_rmtree_missing_is_fine(root):
    storage.makedirs(storage.join(root, "t", "u"))
    f = storage.join(root, "t", "u", "f")
    storage.write_text(f, "x")
    storage.remove(f)
    storage.remove(f)
    assert not storage.exists(f)
    storage.write_text(f, "x")
    storage.rmtree(storage.join(root, "t"))
    storage.rmtree(storage.join(root, "t"))
    assert not storage.exists(storage.join(root, "t")) and not storage.exists(f)


def _tree(root):
    files = {"m.json": b"{}", "x/y.bin": b"\x00" * 10, "x/z/w": b"w"}
    for rel, data in files.items():
        parts = rel.split("/")
        storage.makedirs(storage.join(root, *parts[:-1]))
        storage.write_bytes(storage.join(root, *parts), data)
    return files


def test_copytree_and_replace_dir(root, tmp_path):
    files = _tree(storage.join(root, "src"))
    # to the same kind of place, and across kinds (local <-> bucket, when root is remote)
    for dst in (storage.join(root, "copy"), str(tmp_path / "local_copy")):
        storage.copytree(storage.join(root, "src"), dst)
        for rel, data in files.items():
            assert storage.read_bytes(storage.join(dst, *rel.split("/"))) == data
    storage.replace_dir(storage.join(root, "copy"), storage.join(root, "moved"))
    assert not storage.exists(storage.join(root, "copy"))
    for rel, data in files.items():
        assert storage.read_bytes(storage.join(root, "moved", *rel.split("/"))) == data


def test_paths():
    assert storage.is_remote("gs://b/x") and storage.is_remote("s3://b/x")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("gsx://b")
    assert storage.join("gs://b/x", "y", "z") == "gs://b/x/y/z"
    assert storage.join("/a", "b") == os.path.join("/a", "b")
    assert str(storage.path("~/x")) == os.path.expanduser("~/x")
    assert str(storage.path("gs://b/x")) == "gs://b/x"


def test_user_errors_local():
    with pytest.raises(UserError, match=r"^thing: not found"):
        with storage.user_errors("thing"):
            open("/nonexistent/dir/file")
    with pytest.raises(ValueError):  # not a storage error: untouched
        with storage.user_errors("thing"):
            raise ValueError("x")
    with pytest.raises(FileNotFoundError):  # local paths keep the OS error
        storage.read_bytes("/nonexistent/dir/file")


@pytest.mark.gcs
def test_missing_bucket_is_one_line(gcs):
    p = "gs://no-such-bucket-g1a/x.txt"
    assert not storage.exists(p)
    for call in (lambda: storage.read_text(p), lambda: storage.write_text(p, "x"),
                 lambda: storage.listdir("gs://no-such-bucket-g1a/d"),
                 lambda: storage.append_bytes(p, b"x")):
        with pytest.raises(UserError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(p.rsplit("/", 1)[0])
        assert "not found" in msg


def test_dirname_basename():
    assert storage.dirname("gs://b/x/y.txt") == "gs://b/x"
    assert storage.basename("gs://b/x/y.txt") == "y.txt"
    assert storage.dirname("rel/y.txt") == os.path.abspath("rel")
    assert storage.basename("/a/y.txt") == "y.txt"


def test_array_io_retries_are_bounded():
    """orbax's TensorStore contexts carry the project's retry bound to gs:// requests: with
    2 retries, a refused server fails after exactly 2 attempts (TensorStore's own default is
    32, about 15 minutes)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import tensorstore as ts
        from orbax.checkpoint._src.serialization import tensorstore_utils
        from dsl_jax import storage
        storage.TENSORSTORE_GCS_RETRIES["max_retries"] = 2
        storage.bound_array_io_retries()
        spec = {"driver": "zarr", "kvstore": "gs://bucket-r2/x",
                "metadata": {"shape": [4], "dtype": "<f4"}}
        try:
            ts.open(spec, create=True, context=tensorstore_utils.get_ts_context(
                use_ocdbt=False)).result()
        except ValueError as e:
            print(str(e).splitlines()[0])
    """)
    env = {**os.environ, "TENSORSTORE_GCS_HTTP_URL": "http://127.0.0.1:9",
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert "All 2 retry attempts failed" in r.stdout, r.stdout + r.stderr[-2000:]
    assert storage.TENSORSTORE_GCS_RETRIES["max_retries"] == 6
