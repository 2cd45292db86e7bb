"""Benchmark examples (docs/evaluation.md section 1): from a prepared tensorflow-datasets
data dir, a local copy of a Hugging Face dataset (``hf:``), or a JSON / JSON-lines file.

The protocol: the split's indices (TFDS file order, which ``tfds build`` fixes for a
given dataset version; a Hugging Face copy's row order, or a file's) are shuffled with
seed 42 as the authors' data builder shuffles them (Python's
``random.Random(42).shuffle`` of ``list(range(N))``; TFDS's order differs from the
Hugging Face copies' row order, so TFDS draws other examples than ``hf:`` and the
authors do), source and reference are stripped of surrounding whitespace, examples with
an empty one are skipped, the first ``n`` are kept, and a source longer than
``max_words`` whitespace words is cut to its first ``max_words`` words joined by single
spaces; a shorter one is kept verbatim (newlines included), as the authors' builder does
(``n`` and ``max_words`` are the benchmark's, 1,000 and 1,500 or AESLC's 100 and 300,
unless given). Records of the authors' drawn sets (``id``, ``source``, ``reference``,
``prompt``) are already drawn: the first ``n`` in file order, their prompt as the user
message and their id as the example's id. Every path may be local or a bucket
(``gs://...``); nothing is downloaded: a TFDS dataset must have been prepared there once
with ``tfds build``, a Hugging Face copy saved or downloaded beforehand.

A TFDS split is read once, in file order, through tensorflow-datasets' own reader
(``builder.as_dataset``); a Hugging Face copy with pyarrow (no ``datasets`` package);
only the ``n`` best-ranked non-empty examples are kept in memory, already truncated.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import random
import re

import numpy as np

from dsl_jax import storage
from dsl_jax.errors import UserError, require
from dsl_jax.evaluation.benchmarks import Benchmark
from dsl_jax.tfds_data import default_data_dir, open_prepared, prepared_versions

DEFAULT_SEED = 42


@dataclasses.dataclass(frozen=True)
class Example:
    index: int  # position in the drawn order, 0..n-1
    tfds_index: int  # position in the split (TFDS file order, the copy's rows, the file's records)
    source: str  # stripped and truncated source
    reference: str  # stripped reference
    user_message: str  # the benchmark's prompt around the truncated source (or a record's prompt)
    key: str = ""  # the record's own id (the authors' drawn sets); else the position is the id

    @property
    def id(self) -> str:
        return self.key or f"{self.tfds_index}"


def truncate_words(text: str, max_words: int, join: bool = False) -> str:
    """``text`` unchanged when it has at most ``max_words`` whitespace words, else its first
    ``max_words`` words joined by single spaces; ``join``: joined by single spaces either way."""
    words = text.split()
    if len(words) <= max_words and not join:
        return text
    return " ".join(words[:max_words])


def shuffled_ranks(num: int, seed: int) -> np.ndarray:
    """rank[i] = position of split index i after shuffling the indices with ``seed``
    (``random.Random(seed).shuffle(list(range(num)))``, the authors' shuffle)."""
    order = list(range(num))
    random.Random(seed).shuffle(order)
    rank = np.empty(num, np.int64)
    rank[np.asarray(order, np.int64)] = np.arange(num)
    return rank


def open_builder(bench: Benchmark, data_dir: str, split: str = "test"):
    """The TFDS builder of ``bench`` read from files in ``data_dir`` (its preferred version
    when prepared, else the newest); checks the split and fields. One-line errors."""
    version = bench.version
    if version is None and bench.preferred_version in prepared_versions(data_dir, bench.tfds_name):
        version = bench.preferred_version
    return open_prepared(bench.tfds_name, version, split, data_dir,
                         (bench.source_field, bench.summary_field), who=bench.key)


def read_jsonl(path: str, fields) -> list[dict]:
    """Records of a JSON-lines file, each holding ``fields`` as strings; one-line errors."""
    from dsl_jax.textfiles import iter_jsonl

    out = []
    for lineno, rec in iter_jsonl(path):
        missing = [k for k in fields if not (isinstance(rec, dict) and isinstance(rec.get(k), str))]
        require(not missing, f"{path}:{lineno}: lacks the text field(s) {missing}")
        out.append(rec)
    return out


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def load_examples(bench: Benchmark, data_dir: str | None = None, n: int | None = None,
                  max_words: int | None = None, seed: int = DEFAULT_SEED,
                  split: str = "test") -> list[Example]:
    """The first ``n`` non-empty examples of the shuffled split, truncated and prompted;
    ``n`` and ``max_words`` default to the benchmark's."""
    n = bench.num_examples if n is None else n
    max_words = bench.max_words if max_words is None else max_words
    require(n > 0, f"number of examples must be positive, got {n}")
    require(max_words > 0, f"max_words must be positive, got {max_words}")
    if bench.local_format == "hf":
        num, pairs = read_hf_split(bench.local_file, split, (bench.source_field,
                                                             bench.summary_field))
        return select(bench, pairs, num, n, max_words, seed,
                      what=f"the {split} split of {bench.local_file}")
    if bench.local_file:
        return load_file(bench, n, max_words, seed)
    import tensorflow as tf
    import tensorflow_datasets as tfds

    data_dir = data_dir or default_data_dir()
    builder = open_builder(bench, data_dir, split)
    try:  # keep TensorFlow off accelerators: JAX owns them
        tf.config.set_visible_devices([], "GPU")
    except Exception:
        pass
    num = builder.info.splits[split].num_examples
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(lambda ex: {bench.source_field: ex[bench.source_field],
                            bench.summary_field: ex[bench.summary_field]})
    pairs = ((_text(ex[bench.source_field]), _text(ex[bench.summary_field]))
             for ex in tfds.as_numpy(ds))
    return select(bench, pairs, num, n, max_words, seed, what=f"the {split} split")


def select(bench: Benchmark, pairs, num: int, n: int, max_words: int, seed: int,
           what: str = "the file") -> list[Example]:
    """The protocol on (source, reference) pairs in storage order, ``num`` of them: rank
    by the seeded shuffle, strip, skip empty ones, keep the ``n`` best, truncate, prompt."""
    rank = shuffled_ranks(num, seed)
    heap: list[tuple[int, int, str, str]] = []  # (-rank, index, source, reference): the n best
    for i, (source, reference) in enumerate(pairs):
        require(i < num, f"{bench.key}: {what} holds more examples than its "
                f"dataset_info.json says ({num}); prepare the data dir again")
        source, reference = source.strip(), reference.strip()
        if not source or not reference:
            continue
        item = (-int(rank[i]), i, truncate_words(source, max_words, bench.join_words), reference)
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    chosen = sorted(heap, key=lambda t: -t[0])
    return [Example(index=j, tfds_index=i, source=src, reference=ref,
                    user_message=bench.build_prompt(src))
            for j, (_, i, src, ref) in enumerate(chosen)]


# ---- JSON and JSON-lines files -----------------------------------------------------

AUTHORS_FIELDS = ("source", "reference", "prompt")
ROW_FIELDS = ("document", "summary")


def read_records(path: str, fmt: str) -> list:
    """The records of a ``json`` file (one JSON array) or a ``jsonl`` file (one value a line)."""
    from dsl_jax.textfiles import iter_jsonl, read_json

    if fmt == "json":
        value = read_json(path)
        require(isinstance(value, list), f"{path}: expected a JSON array of records (for one "
                "record a line, name it jsonl:FILE)")
        return list(enumerate(value, 1))
    return list(iter_jsonl(path))


def load_file(bench: Benchmark, n: int, max_words: int, seed: int) -> list[Example]:
    """Examples of a ``json:`` / ``jsonl:`` benchmark. A file whose first record has a
    ``prompt`` holds the authors' drawn records: the first ``n`` in file order, as they
    are; otherwise ``document``/``summary`` rows, drawn with the protocol."""
    path, fmt = bench.local_file, bench.local_format or "jsonl"
    records = read_records(path, fmt)
    where = (lambda k: f"{path}:{k}") if fmt == "jsonl" else (lambda k: f"{path}: record {k}")
    authors = bool(records) and isinstance(records[0][1], dict) and "prompt" in records[0][1]
    fields = AUTHORS_FIELDS if authors else ROW_FIELDS
    for k, rec in records:
        missing = [f for f in fields if not (isinstance(rec, dict) and isinstance(rec.get(f), str))]
        require(not missing, f"{where(k)}: lacks the text field(s) {missing}")
    if not authors:
        return select(bench, ((r["document"], r["summary"]) for _, r in records), len(records),
                      n, max_words, seed)
    out = []
    for i, (k, rec) in enumerate(records[:n]):
        rid = rec.get("id", i)
        require(isinstance(rid, (str, int)) and not isinstance(rid, bool),
                f"{where(k)}: id must be a string or an integer, got {rid!r}")
        out.append(Example(index=i, tfds_index=i, source=rec["source"],
                           reference=rec["reference"], user_message=rec["prompt"], key=str(rid)))
    return out


# ---- local copies of Hugging Face datasets -------------------------------------------

DATA_EXTENSIONS = (".arrow", ".parquet", ".jsonl", ".json")
_MAX_DEPTH = 4


def _split_file(name: str, split: str) -> bool:
    """A data file of ``split`` by its name: ``test.jsonl``, ``test-00000-of-00002.parquet``,
    ``xsum-test.arrow`` (not ``ca_test-...``, billsum's other split)."""
    return (name.endswith(DATA_EXTENSIONS)
            and re.search(rf"(?:^|-){re.escape(split)}(?:[-.]|$)", name) is not None)


def _saved_split(folder: str, split: str | None) -> list[str] | None:
    """The arrow files of a ``save_to_disk`` split folder (``state.json`` lists them in
    order), or None when ``folder`` is not one; one line when it is another split."""
    state_path = storage.join(folder, "state.json")
    if not storage.isfile(state_path):
        return None
    from dsl_jax.textfiles import read_json

    state = read_json(state_path, obj=True)
    saved = state.get("_split")
    require(split is None or not saved or saved == split,
            f"{folder}: holds the {saved!r} split (state.json), not {split!r}")
    files = [f.get("filename") for f in state.get("_data_files") or [] if isinstance(f, dict)]
    if not all(isinstance(f, str) and f for f in files) or not files:
        files = sorted(f for f in storage.listdir(folder) if f.endswith(".arrow")
                       and f.startswith("data-"))
    return [storage.join(folder, f) for f in files]


def hf_split_files(folder: str, split: str) -> list[str]:
    """The data files of ``split`` in a local Hugging Face dataset copy, in row order.

    ``folder`` is a ``save_to_disk`` output (one split: ``state.json`` and
    ``data-*.arrow``; or a dataset dict: ``dataset_dict.json`` and one folder a split),
    or holds the split's parquet / arrow / json(l) files anywhere up to 4 folders down,
    named after the split (``test-00000-of-00001.parquet``, ``xsum-test.arrow``,
    ``test.jsonl``) or inside a folder named after it (``default/test/0000.parquet``);
    they must lie in one folder (else: one line naming the folders, e.g. the configs of
    ``cnn_dailymail``). Files are read in name order."""
    require(storage.isdir(folder), f"{folder}: no such folder (hf: expects a local copy of a "
            "Hugging Face dataset)")
    saved = _saved_split(folder, split)
    if saved is not None:
        return saved
    if storage.isfile(storage.join(folder, "dataset_dict.json")):
        sub = storage.join(folder, split)
        splits = sorted(d for d in storage.listdir(folder)
                        if storage.isfile(storage.join(folder, d, "state.json")))
        require(split in splits, f"{folder}: has no {split!r} split (found "
                f"{', '.join(splits) or 'none'})")
        return _saved_split(sub, split)
    found: dict[str, list[str]] = {}
    _walk(folder, split, 0, storage.basename(folder) == split, found)
    require(found, f"{folder}: no {split!r} split: no {'/'.join(DATA_EXTENSIONS)} file named "
            f"{split}* or in a folder {split}/ (hf: expects a local copy of a Hugging Face "
            "dataset)")
    require(len(found) == 1, f"{folder}: the {split!r} split has files in several folders "
            f"({', '.join(sorted(found))}); point hf: at one of them")
    [(where, files)] = found.items()
    exts = {f.rsplit(".", 1)[1] for f in files}
    require(len(exts) == 1, f"{where}: the {split!r} split has files of several formats "
            f"({', '.join(sorted(exts))}); keep one")
    return files


def _walk(folder: str, split: str, depth: int, in_split: bool, found: dict) -> None:
    names = sorted(storage.listdir(folder))
    if depth and in_split:
        saved = _saved_split(folder, None)
        if saved is not None:
            found[folder] = saved
            return
    files = [n for n in names if (in_split and n.endswith(DATA_EXTENSIONS)
                                  and n not in ("dataset_info.json", "state.json"))
             or _split_file(n, split)]
    if files:
        found[folder] = [storage.join(folder, n) for n in files]
    if depth >= _MAX_DEPTH:
        return
    for n in names:
        sub = storage.join(folder, n)
        if not n.startswith(".") and n not in files and storage.isdir(sub):
            _walk(sub, split, depth + 1, in_split or n == split, found)


def _read_table(path: str, fields):
    """The ``fields`` columns of one arrow / parquet / json(l) file as lists of values."""
    import pyarrow as pa

    data = storage.read_bytes(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            schema = pq.read_schema(pa.BufferReader(data))
        except pa.ArrowException as e:
            raise UserError(f"{path}: not a parquet file ({str(e).splitlines()[0]})") from None
        _require_columns(path, fields, schema.names)
        table = pq.read_table(pa.BufferReader(data), columns=list(fields))
        return [table.column(f).to_pylist() for f in fields]
    if path.endswith(".arrow"):
        table = None
        for opener in (pa.ipc.open_stream, pa.ipc.open_file):  # datasets writes streams
            try:
                table = opener(pa.BufferReader(data)).read_all()
                break
            except pa.ArrowException:
                continue
        require(table is not None, f"{path}: not an Arrow file")
        _require_columns(path, fields, table.column_names)
        return [table.column(f).to_pylist() for f in fields]
    rows = _json_rows(path, data)
    for k, row in enumerate(rows, 1):
        require(isinstance(row, dict), f"{path}: row {k} is not a JSON object")
        _require_columns(f"{path}: row {k}", fields, list(row))
    return [[row[f] for row in rows] for f in fields]


def _json_rows(path: str, data: bytes) -> list:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if path.endswith(".json"):  # one array (or JSON lines under a .json name, as datasets allows)
        try:
            value = json.loads(text)
            if isinstance(value, list):
                return value
        except json.JSONDecodeError:
            pass
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def _require_columns(where: str, fields, names) -> None:
    missing = [f for f in fields if f not in names]
    require(not missing, f"{where}: lacks the field(s) {missing} (has "
            f"{', '.join(map(str, names)) or 'none'})")


def read_hf_split(folder: str, split: str, fields) -> tuple[int, list[tuple[str, str]]]:
    """(number of rows, (source, reference) of every row in row order) of ``split`` of the
    Hugging Face dataset copy in ``folder`` (:func:`hf_split_files`); a missing value
    (null) reads as empty, a value that is not text is one line."""
    pairs: list[tuple[str, str]] = []
    for path in hf_split_files(folder, split):
        src, ref = _read_table(path, fields)
        for k, (a, b) in enumerate(zip(src, ref)):
            for v in (a, b):
                require(v is None or isinstance(v, str),
                        f"{path}: row {k}: expected text in {list(fields)}, got {type(v).__name__}")
            pairs.append((a or "", b or ""))
    return len(pairs), pairs
