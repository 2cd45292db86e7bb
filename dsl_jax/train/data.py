"""Training text: tokenised, packed into fixed-length blocks, read as input streams.

The data is read as ``S`` input streams (``data.streams``; 0: one per host): stream
``s`` of ``S`` reads its own share of the documents, and every global batch is the
streams' rows side by side, stream 0's first (each stream gives ``rows / S`` rows of
every micro-batch). Host ``h`` of ``H`` reads streams ``h*S/H .. (h+1)*S/H - 1``. The
batches thus depend on ``S`` alone, not on the number of hosts: with a fixed
``data.streams``, a run on 1 host and on 2 sees the same batches, and a run can resume
on a pod of another size whose host count divides ``S``.

Sources (``config.data``):

- ``source="tfds"``: a tensorflow-datasets dataset already prepared in ``data_dir``
  (local or ``gs://``), read in file order through TFDS's own reader; nothing is
  downloaded. Stream ``s`` of ``S`` reads only its own even share of the split, the
  ``s``-th of ``S`` contiguous runs of records (``tfds.split_for_jax_process``).
- ``source="files"``: ``.txt`` (one document per non-empty line) and ``.jsonl`` (one JSON
  object per line, the document in ``text_field``) files. With at least as many files as
  streams, stream ``s`` reads only files ``s, s + S, ...`` (of the sorted list); with
  fewer, it reads them all and takes documents ``s, s + S, ...``. With ``shuffle`` each
  epoch visits the stream's documents in a seeded order.

Documents are encoded with the LLaDA tokenizer (no added special tokens). With
``pack=True`` they are concatenated (``separator="none"``, as the authors' run; ``"eos"``
puts EOS after each document) and cut into ``seq_len`` blocks, which then pass through a
shuffle buffer of ``shuffle_buffer`` blocks per stream: filled first, then each block out
is a uniformly drawn slot of the buffer, refilled with the next packed block (the scheme
of Hugging Face ``datasets``' streaming ``shuffle(buffer_size=...)``, which the authors
apply to their packed blocks with 10,000). With ``pack=False`` each document is one row,
cut to ``seq_len`` and padded with EOS (SFT-style rows whose tail the model learns to
fill with EOS).

:class:`BlockStream` is resumable exactly: :meth:`BlockStream.state` (epoch, next
document, the tokens left over from the last one and where they start; with a shuffle
buffer, the number of draws and where each buffered block starts, as (epoch, document,
token offset)) is saved with each checkpoint, one file per stream, and passed back on
resume, which rebuilds the buffered blocks by re-reading their documents; draw ``n`` of
stream ``s`` is seeded by ``(data.seed, s, n)``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from dsl_jax import storage
from dsl_jax.errors import require
from dsl_jax.tfds_data import default_data_dir, open_prepared
from dsl_jax.tokenizer import Tokenizer

SOURCES = ("tfds", "files")
SEPARATORS = ("none", "eos")


def _split_name(name: str) -> tuple[str, str | None]:
    if ":" in name:
        base, version = name.split(":", 1)
        return base, version
    return name, None


# ---- sources -----------------------------------------------------------------------

def list_files(spec: str) -> list[str]:
    """The files named by a comma-separated list of paths / globs (sorted per glob),
    local or on a bucket (``gs://bucket/docs/*.jsonl``)."""
    out: list[str] = []
    from dsl_jax.configlib import parse_list

    for part in parse_list(spec, name="data.files"):
        matches = storage.glob(part)  # sorted; local or gs://
        require(matches, f"data.files: {part}: no such file")
        for m in matches:
            require(m.endswith((".txt", ".jsonl")) and storage.isfile(m),
                    f"data.files: {m}: expected a .txt or .jsonl file")
        out.extend(matches)
    require(out, "data.files: no files given (set --config.data.files=PATH[,PATH...])")
    return out


def read_file_documents(paths: list[str], text_field: str = "text") -> list[str]:
    from dsl_jax.textfiles import read_texts

    docs = [text for path in paths for text in read_texts(path, text_field)]
    require(docs, f"data.files: no documents in {', '.join(paths)}")
    return docs


def open_tfds(name: str, split: str, data_dir: str, text_field: str):
    """The TFDS builder of ``name`` (``NAME`` or ``NAME:VERSION``) prepared in ``data_dir``;
    one clear error when the dataset, the version or the split is not prepared there, or
    lacks ``text_field``."""
    require(bool(name), "data.name: set the TFDS dataset name (source=tfds), "
            "or use --config.data.source=files --config.data.files=...")
    base, version = _split_name(name)
    return open_prepared(base, version, split, data_dir or default_data_dir(), (text_field,),
                         who="data", field_hint="; set --config.data.text_field")


class DocumentSource:
    """Input stream ``stream``'s documents (of ``num_streams``), in a deterministic order,
    from any (epoch, position)."""

    def __init__(self, data_cfg, stream: int = 0, num_streams: int = 1):
        self.cfg = data_cfg
        self.stream, self.num_streams = stream, num_streams
        source = data_cfg.source
        require(source in SOURCES, f"data.source must be one of {SOURCES}, got {source!r}")
        require(data_cfg.separator in SEPARATORS, f"data.separator must be one of "
                f"{SEPARATORS}, got {data_cfg.separator!r}")
        require(int(data_cfg.shuffle_buffer) >= 0,
                f"data.shuffle_buffer must be >= 0, got {data_cfg.shuffle_buffer}")
        self.source = source
        if source == "files":
            files = list_files(data_cfg.files)
            if len(files) >= num_streams:  # each stream opens its own files only
                self.docs = read_file_documents(files[stream::num_streams], data_cfg.text_field)
            else:
                docs = read_file_documents(files, data_cfg.text_field)
                self.docs = docs[stream::num_streams]
                require(self.docs, f"data.files: {len(docs)} documents do not give input stream "
                        f"{stream} of {num_streams} any")
        else:
            self.builder = open_tfds(data_cfg.name, data_cfg.split, data_cfg.data_dir,
                                     data_cfg.text_field)

    def iterate(self, epoch: int, start: int) -> Iterator[str]:
        """Documents of ``epoch`` from position ``start`` of this stream's order."""
        if self.source == "files":
            order = np.arange(len(self.docs))
            if self.cfg.shuffle:
                order = np.random.default_rng([int(self.cfg.seed), epoch, self.stream]).permutation(
                    len(self.docs))
            for i in order[start:]:
                yield self.docs[int(i)]
            return
        import tensorflow as tf
        import tensorflow_datasets as tfds
        try:  # keep TensorFlow off accelerators: JAX owns them
            tf.config.set_visible_devices([], "GPU")
        except Exception:
            pass
        field = self.cfg.text_field
        split = tfds.split_for_jax_process(self.cfg.split, process_index=self.stream,
                                           process_count=self.num_streams)
        ds = self.builder.as_dataset(split=split, shuffle_files=False,
                                     read_config=tfds.ReadConfig(try_autocache=False))
        ds = ds.map(lambda ex: ex[field]).skip(start)
        for value in tfds.as_numpy(ds):
            yield value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# ---- blocks ------------------------------------------------------------------------

class BlockStream:
    """Fixed-length token blocks [seq_len] (int32) from a :class:`DocumentSource`; the
    separator and the shuffle buffer are ``source.cfg``'s (``data.separator``,
    ``data.shuffle_buffer``, ``data.seed``)."""

    def __init__(self, source: DocumentSource, tokenizer: Tokenizer, seq_len: int,
                 pack: bool = True, state: dict | None = None):
        self.source, self.tok, self.seq_len, self.pack = source, tokenizer, seq_len, pack
        self.eos = tokenizer.eos_id
        cfg = source.cfg
        self.sep = [self.eos] if cfg.separator == "eos" else []
        self.pool_size = int(cfg.shuffle_buffer) if pack else 0
        self.seed = int(cfg.seed)
        state = state or {"epoch": 0, "doc": 0, "buffer": []}
        self.epoch, self.doc = int(state["epoch"]), int(state["doc"])
        self.buffer: list[int] = [int(t) for t in state["buffer"]]
        # (epoch, document, token offset) of buffer[0]; None when the buffer is empty
        self.start = list(state["start"]) if self.buffer and state.get("start") else None
        self.last = None  # (epoch, document) of the last document read
        self._it = None
        if "start" in state:  # a state of this format says whether it had a shuffle buffer
            require(("shuffle" in state) == (self.pool_size > 0),
                    "data: the saved data state was written "
                    + ("with" if "shuffle" in state else "without")
                    + f" a shuffle buffer, data.shuffle_buffer is {self.pool_size}"
                    + ("" if pack else " (data.pack=false)")
                    + "; resume with the run's own data settings")
        shuffle = state.get("shuffle") or {"drawn": 0, "blocks": []}
        starts = [[int(v) for v in b] for b in shuffle["blocks"]]
        require(not starts or len(starts) == self.pool_size,
                f"data: the saved data state holds a shuffle buffer of {len(starts)} blocks, "
                f"data.shuffle_buffer is {self.pool_size}; resume with the run's own value")
        require(not (self.pool_size and self.buffer and self.start is None),
                "data: the saved data state predates data.shuffle_buffer; resume with "
                "--config.data.shuffle_buffer=0")
        self.drawn = int(shuffle["drawn"])
        self.pool_starts = starts
        self.pool = self._rebuild(starts) if starts else []

    def state(self) -> dict:
        out = {"epoch": self.epoch, "doc": self.doc, "buffer": list(self.buffer),
               "start": self.start}
        if self.pool_size:
            out["shuffle"] = {"drawn": self.drawn, "blocks": [list(b) for b in self.pool_starts]}
        return out

    def _next_document(self) -> list[int]:
        empty_epochs = 0
        while True:
            if self._it is None:
                self._it = self.source.iterate(self.epoch, self.doc)
            for text in self._it:
                self.doc += 1
                ids = self.tok.encode(text)
                if ids:
                    self.last = (self.epoch, self.doc - 1)
                    return ids
            self._it = None
            # Reaching an epoch's end twice in one call means a whole epoch gave nothing
            # (no documents, or only ones that encode to no tokens).
            empty_epochs += 1
            require(empty_epochs < 2, f"data: input stream {self.source.stream} yields no "
                    "non-empty documents")
            self.epoch, self.doc = self.epoch + 1, 0

    def _packed(self) -> tuple[np.ndarray, list[int]]:
        """The next block of the concatenated stream and its (epoch, document, offset)."""
        L = self.seq_len
        read = 0
        while len(self.buffer) < L:
            ids = self._next_document() + self.sep
            if not self.buffer:
                self.start = [*self.last, 0]
            self.buffer.extend(ids)
            read = len(ids)
        start = self.start
        block, self.buffer = self.buffer[:L], self.buffer[L:]
        # What is left lies within one document: the last one read, or (none read) the
        # document the block started in.
        if not self.buffer:
            self.start = None
        elif read:
            self.start = [*self.last, read - len(self.buffer)]
        elif start is not None:  # (None: resumed from a state that did not record it)
            self.start = [start[0], start[1], start[2] + L]
        return np.asarray(block, np.int32), start

    def _rebuild(self, starts: list[list[int]]) -> list[np.ndarray]:
        """The blocks starting at ``starts`` (epoch, document, offset), re-read in one pass
        over the documents from the earliest; only documents inside a block are encoded."""
        L = self.seq_len
        order = sorted(range(len(starts)), key=lambda i: tuple(starts[i]))
        out: list = [None] * len(starts)
        growing: list[tuple[int, list[int]]] = []
        k = 0
        epoch, doc = starts[order[0]][0], starts[order[0]][1]
        while True:
            for text in self.source.iterate(epoch, doc):
                here, doc = (epoch, doc), doc + 1
                begins = []
                while k < len(order) and tuple(starts[order[k]][:2]) == here:
                    begins.append(order[k])
                    k += 1
                if not begins and not growing:
                    continue
                ids = self.tok.encode(text)
                require(bool(ids) or not begins, "data: the saved data state does not match the "
                        "data (a block starts in an empty document)")
                if not ids:
                    continue
                ids = ids + self.sep
                for _, toks in growing:
                    toks.extend(ids)
                growing.extend((i, ids[starts[i][2]:]) for i in begins)
                for i, toks in growing:
                    if len(toks) >= L:
                        out[i] = np.asarray(toks[:L], np.int32)
                growing = [(i, toks) for i, toks in growing if out[i] is None]
                if k == len(order) and not growing:
                    return out
            epoch, doc = epoch + 1, 0
            require(k == len(order) or tuple(starts[order[k]][:2]) >= (epoch, 0),
                    "data: the saved data state does not match the data (a block starts past "
                    "the end of an epoch)")

    def next_block(self) -> np.ndarray:
        L = self.seq_len
        if not self.pack:
            ids = self._next_document()[:L]
            return np.asarray(ids + [self.eos] * (L - len(ids)), np.int32)
        if not self.pool_size:
            return self._packed()[0]
        while len(self.pool) < self.pool_size:
            block, start = self._packed()
            self.pool.append(block)
            self.pool_starts.append(start)
        block, start = self._packed()
        i = int(np.random.default_rng([self.seed, self.source.stream, self.drawn])
                .integers(self.pool_size))
        self.drawn += 1
        out, self.pool[i], self.pool_starts[i] = self.pool[i], block, start
        return out

    def next_rows(self, n: int) -> np.ndarray:
        return np.stack([self.next_block() for _ in range(n)])


def num_streams(data_cfg, hosts: int) -> int:
    """The run's number of input streams: ``data.streams``, or one per host when 0."""
    n = int(data_cfg.streams)
    require(n >= 0, f"data.streams must be >= 0 (0: one per host), got {n}")
    n = n or hosts
    require(n % hosts == 0, f"data.streams={n} input streams do not divide over {hosts} hosts")
    return n


class HostStreams:
    """The input streams host ``host`` of ``hosts`` reads (see the module docstring), as
    one source of this host's rows of every batch."""

    def __init__(self, data_cfg, tokenizer: Tokenizer, seq_len: int, host: int = 0,
                 hosts: int = 1):
        self.num_streams = num_streams(data_cfg, hosts)
        per = self.num_streams // hosts
        self.ids = list(range(host * per, (host + 1) * per))
        self.tok, self.seq_len, self.pack = tokenizer, seq_len, bool(data_cfg.pack)
        self.sources = [DocumentSource(data_cfg, s, self.num_streams) for s in self.ids]
        self.streams = [BlockStream(src, tokenizer, seq_len, self.pack) for src in self.sources]

    def check_rows(self, rows: int) -> int:
        """Rows each stream gives to a micro-batch of ``rows`` rows (or one clear error)."""
        require(rows % self.num_streams == 0, f"{rows} rows per micro-batch do not divide over "
                f"data.streams={self.num_streams} input streams")
        return rows // self.num_streams

    def next_rows(self, micro_batches: int, per_stream: int) -> np.ndarray:
        """This host's rows of the next batch, [micro_batches, streams x per_stream, seq_len]:
        every micro-batch holds ``per_stream`` rows of each of its streams, in stream order."""
        L = self.seq_len
        return np.concatenate([st.next_rows(micro_batches * per_stream)
                               .reshape(micro_batches, per_stream, L) for st in self.streams],
                              axis=1)

    def states(self) -> dict[int, dict]:
        """{stream id: :meth:`BlockStream.state`} of this host's streams."""
        return {i: st.state() for i, st in zip(self.ids, self.streams)}

    def restore(self, states: dict[int, dict]) -> None:
        """Continue every stream from its saved state."""
        self.streams = [BlockStream(src, self.tok, self.seq_len, self.pack, state=states[i])
                        for i, src in zip(self.ids, self.sources)]


def load_tokenizer(data_cfg, init_ckpt: str = "") -> tuple[Tokenizer, str]:
    """(tokenizer, path): ``data.tokenizer``, else ``INIT_CKPT/tokenizer.json``."""
    path = data_cfg.tokenizer
    if not path and init_ckpt and storage.isfile(storage.join(init_ckpt, "tokenizer.json")):
        path = storage.join(init_ckpt, "tokenizer.json")
    require(bool(path), "data.tokenizer: set the LLaDA tokenizer.json "
            "(--config.data.tokenizer=PATH); init_ckpt has none")
    return Tokenizer.from_file(path), path
