"""Benchmark data through tensorflow-datasets' real reading path: a tiny XSum prepared
in a temporary data dir with the real builder's name and features, read back by
``dsl_jax.evaluation.data`` and checked against an independent reading of the TFRecord
files plus a plain computation of the protocol (shuffle with seed 42, strip, skip empty,
keep n, cut sources beyond 1,500 words, keep shorter ones verbatim, the prompt, the chat
template)."""

import glob
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import eval_fixtures as F  # noqa: E402

from dsl_jax.errors import UserError  # noqa: E402
from dsl_jax.evaluation import benchmarks as B  # noqa: E402
from dsl_jax.evaluation import data as D  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    data_dir = str(root / "data")
    F.prepare_tfds("xsum", data_dir, {"test": F.xsum_rows(30)})
    train_only = str(root / "train_only")
    F.prepare_tfds("xsum", train_only, {"train": F.xsum_rows(5)})
    tok_path = str(root / "tokenizer.json")
    F.make_tokenizer(tok_path)
    return data_dir, train_only, tok_path


def raw_split(version_dir: str, split: str = "test") -> list[tuple[str, str]]:
    """(document, summary) in file order, read with plain TensorFlow from the shards."""
    import tensorflow as tf
    out = []
    for path in sorted(glob.glob(os.path.join(version_dir, f"xsum-{split}.tfrecord-*"))):
        for rec in tf.data.TFRecordDataset(path):
            ex = tf.train.Example.FromString(rec.numpy())
            f = ex.features.feature
            out.append((f["document"].bytes_list.value[0].decode(),
                        f["summary"].bytes_list.value[0].decode()))
    return out


def authors_shuffle(n: int, seed: int) -> list[int]:
    """The indices in the order the authors' data builder visits them."""
    idxs = list(range(n))
    random.Random(seed).shuffle(idxs)
    return idxs


def test_protocol_end_to_end_matches_a_plain_reading(prepared):
    data_dir, _, tok_path = prepared
    raw = raw_split(os.path.join(data_dir, "xsum", "1.0.0"))
    assert len(raw) == 30
    # The fixture really has what the protocol must handle.
    assert any(not d.strip() for d, _ in raw) and any(not s.strip() for _, s in raw)
    assert any(len(d.split()) > 1500 for d, _ in raw)

    examples = D.load_examples(B.get("xsum"), data_dir, n=20, max_words=1500, seed=42)

    perm = authors_shuffle(30, 42)
    chosen = [int(i) for i in perm if raw[i][0].strip() and raw[i][1].strip()][:20]
    assert len(chosen) == 20 and [e.tfds_index for e in examples] == chosen
    assert [e.index for e in examples] == list(range(20))
    for e, i in zip(examples, chosen):
        doc, summary = raw[i]
        # the authors' cut: verbatim (stripped) up to 1,500 words, else the first 1,500 re-joined
        want = doc.strip() if len(doc.split()) <= 1500 else " ".join(doc.split()[:1500])
        assert e.source == want and e.reference == summary.strip()
        assert e.user_message == "Summarize the following text in one sentence:\n\n" + want
    long = [e for e in examples if len(raw[e.tfds_index][0].split()) > 1500]
    assert long and all(len(e.source.split()) == 1500 for e in long)
    assert all("\n" not in e.source and "  " not in e.source for e in long)
    short = [e for e in examples if e not in long]
    assert short and all("\n\n  " in e.source and "   " in e.source for e in short)

    # A different seed draws differently (the seed is used).
    other = D.load_examples(B.get("xsum"), data_dir, n=20, seed=7)
    assert [e.tfds_index for e in other] != chosen

    # The sweep builds the chat-templated prompts of these examples.
    from dsl_jax.evaluation.sweep import Settings, prepare
    from dsl_jax.tokenizer import Tokenizer
    settings = Settings(ckpt="", tokenizer=tok_path, data_dir=data_dir, benchmarks=["xsum"],
                        samplers=["remask"], nfe=[8], out_dir="unused", num_examples=20,
                        generator="eval_fixtures:fake_factory")
    tok, loaded = prepare(settings)
    bench, ex2, prompts, gen_length = loaded["xsum"]
    assert gen_length == 128 and [e.tfds_index for e in ex2] == chosen
    plain = Tokenizer.from_file(tok_path)
    for e, p in zip(ex2, prompts):
        text = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n" + e.user_message
                + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        assert p == plain.encode(text)
        assert p[0] == plain.bos_id and plain.eot_id in p


def test_fewer_examples_than_asked_takes_all_non_empty(prepared):
    data_dir, _, _ = prepared
    raw = raw_split(os.path.join(data_dir, "xsum", "1.0.0"))
    examples = D.load_examples(B.get("xsum"), data_dir, n=1000, seed=42)
    perm = authors_shuffle(30, 42)
    assert [e.tfds_index for e in examples] == [
        int(i) for i in perm if raw[i][0].strip() and raw[i][1].strip()]


def test_missing_data_is_one_clear_error(prepared, tmp_path):
    data_dir, train_only, _ = prepared
    with pytest.raises(UserError, match=r"has no prepared 'test' split \(found train\)") as e:
        D.load_examples(B.get("xsum"), train_only, n=5)
    assert "\n" not in str(e.value) and "tfds build xsum" in str(e.value)
    with pytest.raises(UserError, match="no prepared TFDS dataset 'xsum' in") as e:
        D.load_examples(B.get("xsum"), str(tmp_path), n=5)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="version 9.9.9 of xsum is not prepared"):
        D.load_examples(B.get("xsum:9.9.9"), data_dir, n=5)
    with pytest.raises(UserError, match="unknown benchmark 'gigaword'; choose from xsum"):
        B.get("gigaword")


def test_benchmark_table_matches_design():
    assert B.get("xsum").prompt == "Summarize the following text in one sentence:\n\n{text}"
    assert B.get("cnn_dailymail").build_prompt("T") == (
        "Summarize the following news article in 2-3 sentences:\n\nT")
    assert B.get("scientific_papers/pubmed").tfds_name == "scientific_papers/pubmed"
    assert B.get("arxiv").prompt.startswith("Summarize the following research paper in a "
                                            "concise abstract:")
    assert B.get("billsum").prompt == "Summarize the following legislation:\n\n{text}"
    assert {k: b.gen_length for k, b in B.BENCHMARKS.items()} == {
        "xsum": 128, "cnn_dailymail": 256, "pubmed": 256, "arxiv": 256, "billsum": 256,
        "aeslc": 64}
    assert D.truncate_words("a  b\n\nc d", 3) == "a b c"
    assert D.truncate_words("a  b\n\nc d", 4) == "a  b\n\nc d"  # not over the limit: as is
    assert D.truncate_words("a  b\n\nc d", 4, join=True) == "a b c d"


def test_local_jsonl_benchmark_follows_the_same_protocol(prepared, tmp_path):
    """``jsonl:FILE`` draws, skips, truncates and prompts exactly like a TFDS split."""
    import json
    data_dir, _, _ = prepared
    path = tmp_path / "mine.jsonl"  # the prepared split's records, in its file order
    rows = [{"document": d, "summary": s}
            for d, s in raw_split(os.path.join(data_dir, "xsum", "1.0.0"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = B.get(f"jsonl:{path}")
    assert bench.key == "mine" and bench.gen_length == 128
    local = D.load_examples(bench, None, n=20, seed=42)
    from_tfds = D.load_examples(B.get("xsum"), data_dir, n=20, seed=42)
    assert [(e.tfds_index, e.source, e.reference, e.user_message) for e in local] == \
        [(e.tfds_index, e.source, e.reference, e.user_message) for e in from_tfds]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document": "x"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: lacks the text field\(s\) \['summary'\]"):
        D.load_examples(B.get(f"jsonl:{bad}"), None, n=5)
    with pytest.raises(UserError, match="no such file"):
        D.load_examples(B.get(f"jsonl:{tmp_path}/none.jsonl"), None, n=5)


def test_strip_and_the_authors_aeslc_draw():
    """Sources and references are stripped before the empty check; AESLC is drawn as the
    authors' file: their prompt, 100 examples, 300 words, every source re-joined."""
    aeslc = B.get("aeslc")
    assert aeslc.prompt == "Write a short subject line for this email:\n\n{text}"
    assert (aeslc.num_examples, aeslc.max_words, aeslc.join_words) == (100, 300, True)
    assert {k: (b.num_examples, b.max_words, b.join_words) for k, b in B.BENCHMARKS.items()
            if k != "aeslc"} == {k: (1000, 1500, False) for k in B.DEFAULT_BENCHMARKS}

    body = "Hi all,\n\nthe  meeting moved.\n" + " ".join(f"w{j}" for j in range(400))
    pairs = [("  \n Short  mail\nbody. \n", " Subject one\n"), (body, "Moved\n"),
             (" \n ", "Empty body"), ("Body three", "  \n")]
    # seed 7 visits 3 (blank reference: skipped), 1, 0, 2 (blank source: skipped)
    assert authors_shuffle(4, 7) == [3, 1, 0, 2]
    got = D.select(aeslc, iter(pairs), 4, n=aeslc.num_examples, max_words=aeslc.max_words, seed=7)
    assert [(e.tfds_index, e.source, e.reference) for e in got] == [  # 5 words + w0..w294
        (1, "Hi all, the meeting moved. " + " ".join(f"w{j}" for j in range(295)), "Moved"),
        (0, "Short mail body.", "Subject one")]
    assert got[1].user_message == "Write a short subject line for this email:\n\nShort mail body."
    xsum = D.select(B.get("xsum"), iter(pairs), 4, n=10, max_words=1500, seed=7)
    assert [e.source for e in xsum] == [body, "Short  mail\nbody."]  # verbatim, stripped


# ---- local Hugging Face copies (hf:), the authors' drawn records (json:), keys ----------

def _arrow_stream(path, table, chunk=7):
    import pyarrow as pa
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=chunk)


def _hf_table(rows, **extra):
    import pyarrow as pa
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return pa.table({**cols, "id": [f"bbc{i}" for i in range(len(rows))], **extra})


def save_to_disk_like(folder, rows, split="test", shards=2):
    """What ``datasets.Dataset.save_to_disk`` writes: arrow streams, state.json listing
    them in order, dataset_info.json."""
    import json
    folder.mkdir(parents=True)
    table = _hf_table(rows)
    per = -(-len(rows) // shards)
    names = []
    for j in range(shards):
        name = f"data-{j:05d}-of-{shards:05d}.arrow"
        _arrow_stream(folder / name, table.slice(j * per, per))
        names.append(name)
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "x",
        "_format_type": None, "_split": split}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def independent_draw(rows, n, seed=42):
    """The authors' builder, written out: shuffle range(N) with random.Random(seed), skip
    rows whose stripped document or summary is empty, keep the first n."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [i for i in order if rows[i]["document"].strip() and rows[i]["summary"].strip()][:n]


def test_hf_copies_draw_the_authors_ids(tmp_path):
    """Every layout of a local Hugging Face copy (save_to_disk of a split or of a dataset
    dict, the Hub's parquet shards, HF-cache arrow files, json lines) gives exactly the
    indices Python's random.Random(42) gives, and the same examples as the protocol on the
    rows in their order."""
    import json

    import pyarrow.parquet as pq

    rows = F.xsum_rows(30)
    want = independent_draw(rows, 20)
    assert len(want) == 20 and want != sorted(want)

    one = tmp_path / "saved_split"
    save_to_disk_like(one, rows)
    dd = tmp_path / "saved_dict"
    save_to_disk_like(dd / "test", rows)
    save_to_disk_like(dd / "train", F.xsum_rows(5), split="train", shards=1)
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    table = _hf_table(rows)
    pq.write_table(table.slice(0, 13), hub / "data" / "test-00000-of-00002.parquet")
    pq.write_table(table.slice(13), hub / "data" / "test-00001-of-00002.parquet")
    pq.write_table(_hf_table(F.xsum_rows(4)), hub / "data" / "train-00000-of-00001.parquet")
    cache = tmp_path / "cache" / "xsum" / "default" / "1.2.0" / "abc"
    cache.mkdir(parents=True)
    _arrow_stream(cache / "xsum-test.arrow", table)
    _arrow_stream(cache / "cache-123.arrow", _hf_table(F.xsum_rows(3)))  # a map cache: ignored
    converted = tmp_path / "converted" / "default" / "test"
    converted.mkdir(parents=True)
    pq.write_table(table, converted / "0000.parquet")
    jl = tmp_path / "jl"
    jl.mkdir()
    (jl / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    plain = D.select(B.get("xsum"), ((r["document"], r["summary"]) for r in rows), 30,
                     n=20, max_words=1500, seed=42)
    for folder in (one, dd, hub, tmp_path / "cache", tmp_path / "converted", converted, jl):
        bench = B.get(f"hf:xsum:{folder}")
        assert bench.key == "xsum" and bench.gen_length == 128 and bench.local_format == "hf"
        got = D.load_examples(bench, None, n=20, seed=42, split="test")
        assert [e.tfds_index for e in got] == want, folder
        assert [e.id for e in got] == [str(i) for i in want]
        assert [(e.source, e.reference, e.user_message) for e in got] == \
            [(e.source, e.reference, e.user_message) for e in plain]
    # the benchmark's own fields: cnn_dailymail's article / highlights
    cnn = tmp_path / "cnn"
    save_to_disk_like(cnn, F.cnn_rows(9), shards=1)
    got = D.load_examples(B.get(f"hf:cnn_dm:{cnn}"), None, n=4, seed=42)
    order = list(range(9))
    random.Random(42).shuffle(order)
    assert [e.tfds_index for e in got] == order[:4]
    assert got[0].user_message.startswith("Summarize the following news article in 2-3")
    # another split of the same copies
    train = D.load_examples(B.get(f"hf:xsum:{dd}"), None, n=3, split="train")
    assert [e.tfds_index for e in train] == independent_draw(F.xsum_rows(5), 3)


def test_hf_copy_errors_are_one_line(tmp_path):
    import pyarrow.parquet as pq

    def err(name, split="test"):
        with pytest.raises(UserError) as e:
            D.load_examples(B.get(name), None, n=3, split=split)
        assert "\n" not in str(e.value)
        return str(e.value)

    table = _hf_table(F.xsum_rows(6))
    multi = tmp_path / "cnn_dailymail"  # the Hub copy holds three configs
    for config in ("1.0.0", "3.0.0"):
        (multi / config).mkdir(parents=True)
        pq.write_table(table, multi / config / "test-00000-of-00001.parquet")
    assert "has files in several folders" in err(f"hf:xsum:{multi}")
    assert len(D.load_examples(B.get(f"hf:xsum:{multi / '3.0.0'}"), None, n=3)) == 3
    assert "no 'validation' split" in err(f"hf:xsum:{multi / '3.0.0'}", "validation")
    assert "lacks the field(s) ['article', 'highlights']" in err(f"hf:cnn_dailymail:{multi / '3.0.0'}")
    assert "no such folder" in err(f"hf:xsum:{tmp_path / 'none'}")
    saved = tmp_path / "saved"
    save_to_disk_like(saved, F.xsum_rows(4), split="train", shards=1)
    assert "holds the 'train' split (state.json), not 'test'" in err(f"hf:xsum:{saved}")
    with pytest.raises(UserError, match=r"expected hf:KEY:DIR"):
        B.get("hf:/data/xsum")
    with pytest.raises(UserError, match=r"unknown benchmark 'gigaword'"):
        B.get("hf:gigaword:/data")
    # billsum's ca_test split is not its test split
    bill = tmp_path / "billsum"
    bill.mkdir()
    rows = [{"text": f"Bill {i} text.", "summary": f"Sum {i}.", "title": "t"} for i in range(5)]
    import pyarrow as pa
    t = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    pq.write_table(t, bill / "test-00000-of-00001.parquet")
    pq.write_table(t.slice(0, 2), bill / "ca_test-00000-of-00001.parquet")
    assert len(D.load_examples(B.get(f"hf:billsum:{bill}"), None, n=100)) == 5
    assert len(D.load_examples(B.get(f"hf:billsum:{bill}"), None, n=100, split="ca_test")) == 2


def test_authors_records_are_taken_as_they_are(tmp_path):
    """The authors' drawn records: no new draw, the first n in file order, their prompt as
    the user message, their id as the id, source and reference untouched; the file name
    picks the benchmark's generation length and draw size."""
    import json
    recs = [{"id": 100 + 7 * i, "source": f"  Source {i}.\n\nMore {i}. ",
             "reference": f"Reference {i}.", "prompt": f"Custom prompt {i}:\n\nSource {i}."}
            for i in range(6)]
    recs[2]["id"] = "abc"
    path = tmp_path / "cnn_dailymail_1000.json"
    path.write_text(json.dumps(recs))
    bench = B.get(f"json:{path}")
    assert (bench.key, bench.gen_length, bench.num_examples) == ("cnn_dailymail_1000", 256, 1000)
    got = D.load_examples(bench, None, n=4, seed=7)  # the seed plays no part
    assert [(e.index, e.tfds_index, e.id, e.source, e.reference, e.user_message)
            for e in got] == [(i, i, str(r["id"]), r["source"], r["reference"], r["prompt"])
                              for i, r in enumerate(recs[:4])]
    assert len(D.load_examples(bench, None)) == 6  # fewer than asked: all
    # the same records as JSON lines
    lines = tmp_path / "xsum_1000.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in recs))
    b2 = B.get(f"jsonl:{lines}")
    assert b2.gen_length == 128 and b2.key == "xsum_1000"
    assert [e.user_message for e in D.load_examples(b2, None, n=6)] == [r["prompt"] for r in recs]
    assert B.get(f"json:{tmp_path}/aeslc_100.json").num_examples == 100
    assert B.get(f"json:{tmp_path}/mine.json").gen_length == 128  # any other name: XSum's
    # document/summary rows in a JSON array are drawn with the protocol
    rows = F.xsum_rows(30)
    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps(rows))
    assert [e.tfds_index for e in D.load_examples(B.get(f"json:{arr}"), None, n=20)] == \
        independent_draw(rows, 20)
    # one-line errors
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([recs[0], {"id": 1, "source": "s", "prompt": "p"}]))
    with pytest.raises(UserError, match=r"bad.json: record 2: lacks the text field\(s\) \['reference'\]"):
        D.load_examples(B.get(f"json:{bad}"), None)
    notarray = tmp_path / "obj.json"
    notarray.write_text('{"a": 1}')
    with pytest.raises(UserError, match="expected a JSON array of records"):
        D.load_examples(B.get(f"json:{notarray}"), None)


def test_benchmark_keys_are_unique(tmp_path):
    """Two files of one name get their folders' names; a local copy beside its TFDS
    benchmark gets ``hf_``; the same source twice is one benchmark; keys that still
    collide are one error line."""
    keys = lambda *names: [b.key for b in B.resolve(list(names))]  # noqa: E731
    assert keys("jsonl:a/test.jsonl", "jsonl:b/test.jsonl") == ["a_test", "b_test"]
    assert keys("jsonl:a/test.jsonl", "json:c/other.json") == ["test", "other"]
    assert keys("xsum", "hf:xsum:/data/xsum", "cnn_dm") == ["xsum", "hf_xsum", "cnn_dailymail"]
    assert [b.display for b in B.resolve(["xsum", "hf:xsum:/d"])] == ["XSum", "XSum (HF)"]
    assert keys("hf:xsum:/d", "hf:cnn_dailymail:/e") == ["xsum", "cnn_dailymail"]
    assert keys("xsum", "jsonl:d/xsum.jsonl") == ["xsum", "d_xsum"]
    assert keys("jsonl:a/test.jsonl", f"jsonl:{os.path.abspath('a/test.jsonl')}", "xsum",
                "XSum") == ["test", "xsum"]
    for names in (["jsonl:x/a/test.jsonl", "jsonl:y/a/test.jsonl"],
                  ["hf:xsum:/d1", "hf:xsum:/d2", "xsum"]):
        with pytest.raises(UserError, match="both have the key") as e:
            B.resolve(names)
        assert "\n" not in str(e.value)
