"""Training on CPU with a tiny model: the loss falls, frozen parameters stay bit-identical,
the sharded step equals the single-device step, a killed run resumes exactly, the MDM
control trains, and bad input fails with one clear line before any compute."""

import json
import os
import random

import jax
import numpy as np
import pytest
from flax import nnx

from dsl_jax import checkpoint, config
from dsl_jax.dsl import noise_embedding
from dsl_jax.errors import UserError
from dsl_jax.model import LLaDA
from dsl_jax.sharding import create_sharded, make_mesh
from dsl_jax.tokenizer import train_small
from dsl_jax.train import data as data_lib
from dsl_jax.train.loop import load_train_config, train
from dsl_jax.train.state import init_train_state
from dsl_jax.train.step import build_train_step, model_builder

WORDS = ("the cat sat on a mat and the dog ran far away in the warm sun while "
         "small birds sang over green hills near the old river").split()


def make_corpus(d) -> dict:
    """In folder ``d``: data.jsonl, tok/tokenizer.json and a tiny LLaDA checkpoint init/."""
    r = random.Random(0)
    # Strongly patterned text so a tiny model learns it in a few dozen steps.
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(r.randint(8, 30)))
             for i in range(400)]
    with open(d / "data.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    tok = train_small(texts, 512, str(d / "tok" / "tokenizer.json"))
    cfg = config.preset("tiny", dtype="float32")
    init = str(d / "init")
    m = LLaDA(cfg, rngs=nnx.Rngs(params=7))
    m.lm_head[...] = m.lm_head[...] * 10.0  # a head with a pretrained-like logit range (it is frozen)
    checkpoint.save_model(init, m)
    return {"dir": d, "texts": texts, "tok": tok, "init": init}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("train"))


def cfg_for(corpus, out, **over):
    d = corpus["dir"]
    base = {"model": "tiny", "init_ckpt": corpus["init"], "data.files": f"{d}/data.jsonl",
            "data.tokenizer": f"{d}/tok/tokenizer.json", "steps": 30, "global_batch": 8,
            "seq_len": 32, "dsl.noise_dim": 16, "dsl.chunk_positions": 16,
            "optimizer.lr": 3e-3, "optimizer.warmup_steps": 5, "out_dir": str(out),
            "save_every": 10, "log_every": 1, "eval.every": 30, "eval.blocks": 8,
            "micro_batches": 2, "mesh": "fsdp=4,tensor=2", "data.shuffle_buffer": 24}
    base.update(over)
    return load_train_config("configs/dsl_small.py", [f"{k}={v}" for k, v in base.items()])


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_dsl_training_learns_freezes_and_resumes_exactly(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    final = train(cfg_for(corpus, a), progress=False)
    la = losses(a)
    assert sorted(la) == list(range(1, 31))
    first, last = np.mean([la[s] for s in (1, 2, 3)]), np.mean([la[s] for s in (28, 29, 30)])
    assert last < first - 1.0, (first, last)  # the DSL loss falls clearly
    with open(a / "metrics.jsonl") as f:
        evals = [json.loads(x) for x in f if "eval/clean_ce" in x]
    assert evals[-1]["eval/acc_snr50"] > 0.9 and evals[-1]["eval/ce_snr50"] < first - 2.0

    # The final checkpoint is a DSLModel with the tokenizer; frozen parameters unchanged.
    assert os.path.isfile(os.path.join(final, "tokenizer.json"))
    mesh = make_mesh(devices=jax.devices()[:1])
    m = checkpoint.load(final, mesh, kind="dsl")
    init = checkpoint.load(corpus["init"], mesh)
    for name in ("lm_head", "embed"):
        np.testing.assert_array_equal(np.asarray(getattr(m.llada, name)[...]),
                                      np.asarray(getattr(init, name)[...]))
    np.testing.assert_array_equal(np.asarray(m.noise_embed[...]), noise_embedding(512, 16, 0))
    assert not np.array_equal(np.asarray(m.llada.blocks.wq[...]), np.asarray(init.blocks.wq[...]))
    assert float(m.converter.beta[...]) != 1.0
    assert {"eval/ce_snr1", "eval/acc_snr50", "eval/infill_acc", "eval/beta"} <= set(evals[-1])
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(a))

    # Starting points: a plain LLaDA gets a converter initialised from its wte (last
    # column = wte[mask]); a DSL checkpoint (this run's final) is taken as it is.
    from dsl_jax.train.loop import initial_model
    from dsl_jax.train.step import model_config
    cfg0 = cfg_for(corpus, a)
    m0 = initial_model(cfg0, model_config(cfg0), mesh)
    wte = np.asarray(init.embed[...])
    np.testing.assert_array_equal(np.asarray(m0.converter.w[...]), np.r_[wte, wte[2:3]])
    assert float(m0.converter.beta[...]) == 1.0
    c0 = np.asarray(m0.converter.c[...])  # a torch Linear bias: U(+-1/sqrt(V+1)), seeded
    assert np.abs(c0).max() <= 1 / np.sqrt(513) and np.abs(c0).max() > 0
    np.testing.assert_array_equal(c0, initial_model(cfg0, model_config(cfg0), mesh).converter.c[...])
    cfg1 = cfg_for(corpus, a, init_ckpt=final)
    m1 = initial_model(cfg1, model_config(cfg1), mesh)
    assert float(m1.converter.beta[...]) == float(m.converter.beta[...])
    from dsl_jax.train.step import dsl_config  # the DSL checkpoint's s_max, not the run's
    assert dsl_config(cfg_for(corpus, a, init_ckpt=final, **{"dsl.snr_max": 7})).snr_max == 100
    assert dsl_config(cfg_for(corpus, a, **{"dsl.snr_max": 7})).snr_max == 7  # plain LLaDA

    # Killed after step 17 (last checkpoint at 10), started again: the same losses.
    assert train(cfg_for(corpus, b), progress=False, _stop_after=17) == ""
    assert max(losses(b)) == 17
    train(cfg_for(corpus, b), progress=False)
    lb = losses(b)
    assert sorted(lb) == list(range(1, 31))
    np.testing.assert_allclose([lb[s] for s in range(1, 31)], [la[s] for s in range(1, 31)],
                               rtol=1e-6, atol=0)


@pytest.mark.slow
def test_sharded_step_equals_single_device(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path)  # 2 micro-batches; the 8-device step is the training test's
    batch = np.random.default_rng(0).integers(0, 512, (2, 4, 32)).astype(np.int32)
    results = []
    for mesh in (make_mesh(devices=jax.devices()[:1]), make_mesh({"fsdp": 4, "tensor": 2})):
        setup = build_train_step(cfg, mesh)
        model = create_sharded(model_builder(cfg, setup.model_cfg), mesh)
        _, state = init_train_state(model, "dsl", setup.optimizer, mesh)
        ids = jax.device_put(batch, setup.batch_sharding)
        rng = jax.random.PRNGKey(0)
        metrics = []
        for _ in range(2):
            state, m = setup.step(state, ids, rng)
            metrics.append(jax.device_get(m))
        results.append((metrics, jax.device_get(state.params)))
    (m1, p1), (m8, p8) = results
    for a, b in zip(m1, m8):
        for k in ("loss", "accuracy", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5), k
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), p1, p8)


def test_mdm_control_trains_backbone_and_wte_only(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path, objective="mdm", steps=3, save_every=3, **{"eval.every": 0})
    final = train(cfg, progress=False)
    mesh = make_mesh(devices=jax.devices()[:1])
    m = checkpoint.load(final, mesh)
    init = checkpoint.load(corpus["init"], mesh)
    assert checkpoint.read_meta(final)["dsl"] is None
    np.testing.assert_array_equal(np.asarray(m.lm_head[...]), np.asarray(init.lm_head[...]))
    assert not np.array_equal(np.asarray(m.embed[...]), np.asarray(init.embed[...]))
    assert all(np.isfinite(v) for v in losses(tmp_path).values())


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_checkpoint(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path, steps=6, save_every=1, **{
        "eval.every": 0, "optimizer.lr": 1e30, "optimizer.warmup_steps": 0})
    with pytest.raises(UserError, match=r"^step \d+: non-finite loss") as e:
        train(cfg, progress=False)
    bad = int(str(e.value).split()[1].rstrip(":"))
    assert bad >= 2 and len(str(e.value).splitlines()) == 1
    assert f"the checkpoint of step {bad - 1} is kept" in str(e.value)
    assert sorted(losses(tmp_path)) == list(range(1, bad))  # the bad step is not logged
    assert max(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == bad - 1


def test_profile_steps_write_a_trace(corpus, tmp_path):
    train(cfg_for(corpus, tmp_path, steps=2, save_every=2, profile_steps="2,2",
                  **{"eval.every": 0}), progress=False)
    traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces), traces


def test_bad_input_fails_before_compute(corpus, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown config key 'nope'"):
        cfg_for(corpus, tmp_path, nope=1)
    with pytest.raises(UserError, match="different model size"):
        train(cfg_for(corpus, tmp_path, model="small"), progress=False)
    with pytest.raises(UserError, match="no prepared TFDS dataset 'fineweb_edu'"):
        train(cfg_for(corpus, tmp_path, **{"data.source": "tfds", "data.name": "fineweb_edu",
                                           "data.data_dir": str(tmp_path)}), progress=False)
    with pytest.raises(UserError, match="do not divide over the mesh's batch axes"):
        train(cfg_for(corpus, tmp_path, global_batch=6), progress=False)
    with pytest.raises(UserError, match="does not divide into micro_batches 3"):
        train(cfg_for(corpus, tmp_path, micro_batches=3), progress=False)
    with pytest.raises(UserError, match="profile_steps: expected FIRST,LAST"):  # before data
        train(cfg_for(corpus, tmp_path, profile_steps="5",
                      **{"data.files": f"{tmp_path}/missing.jsonl"}), progress=False)
    with pytest.raises(UserError, match="loss_chunk must be positive"):  # 0 no longer "auto"
        train(cfg_for(corpus, tmp_path, loss_chunk=0), progress=False)
    from dsl_jax.sharding import make_mesh, parse_mesh
    from dsl_jax.train.step import check_batch, model_config
    bad = cfg_for(corpus, tmp_path, loss_chunk=0)
    with pytest.raises(UserError, match="loss_chunk must be positive"):  # compile-check's path
        check_batch(bad, make_mesh(parse_mesh(bad.mesh)), model_config(bad))
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing was started
    from dsl_jax.cli import main
    assert main(["train", "--config", "configs/dsl_small.py", "--config.global_batch=6",
                 f"--config.data.files={corpus['dir']}/data.jsonl",
                 f"--config.data.tokenizer={corpus['dir']}/tok/tokenizer.json",
                 f"--config.out_dir={tmp_path}/cli"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsl-jax train: error: global_batch 6")


def test_data_packing_hosts_and_resume(corpus):
    d, tok = corpus["dir"], corpus["tok"]
    cfg = load_train_config("configs/dsl_small.py", [
        f"data.files={d}/data.jsonl", "data.shuffle=false", "data.separator=eos",
        "data.shuffle_buffer=0"]).data
    src = data_lib.DocumentSource(cfg)
    stream = data_lib.BlockStream(src, tok, 16, pack=True)
    blocks = stream.next_rows(6)
    want = []
    for t in corpus["texts"]:
        want += tok.encode(t) + [tok.eos_id]
        if len(want) >= 96:
            break
    np.testing.assert_array_equal(blocks.ravel(), want[:96])  # EOS between documents
    # Resume from a saved state gives exactly the blocks that follow.
    saved = json.loads(json.dumps(stream.state()))
    nxt = stream.next_rows(5)
    np.testing.assert_array_equal(data_lib.BlockStream(src, tok, 16, state=saved).next_rows(5), nxt)
    # One document per row, EOS-padded.
    rows = data_lib.BlockStream(src, tok, 64, pack=False).next_rows(2)
    ids0 = tok.encode(corpus["texts"][0])
    np.testing.assert_array_equal(rows[0], ids0 + [tok.eos_id] * (64 - len(ids0)))
    # Hosts read disjoint shares that cover the data.
    shares = [data_lib.DocumentSource(cfg, h, 3).docs for h in range(3)]
    assert sorted(sum(shares, [])) == sorted(corpus["texts"])


def test_input_streams_make_batches_independent_of_the_hosts(corpus):
    """data.streams=4: one host's rows of a batch are its streams' rows side by side, so
    1 host and 2 hosts (each with 2 of the streams) build the same global batches, and
    resuming from the saved per-stream states continues exactly; data.streams=0 is one
    stream per host; a stream count the hosts or the rows do not divide is refused."""
    d, tok = corpus["dir"], corpus["tok"]
    cfg = load_train_config("configs/dsl_small.py", [
        f"data.files={d}/data.jsonl", "data.streams=4", "data.shuffle_buffer=3"]).data
    one = data_lib.HostStreams(cfg, tok, 16)
    two = [data_lib.HostStreams(cfg, tok, 16, h, 2) for h in range(2)]
    assert one.ids == [0, 1, 2, 3] and [h.ids for h in two] == [[0, 1], [2, 3]]
    assert one.check_rows(8) == 2
    for _ in range(3):  # 2 micro-batches of 8 rows: rows 2s, 2s+1 of each from stream s
        whole = one.next_rows(2, 2)
        assert whole.shape == (2, 8, 16)
        np.testing.assert_array_equal(whole, np.concatenate([h.next_rows(2, 2) for h in two],
                                                            axis=1))
    saved = json.loads(json.dumps(two[1].states()))  # as the checkpoint stores it
    resumed = data_lib.HostStreams(cfg, tok, 16, 1, 2)
    resumed.restore({int(k): v for k, v in saved.items()})
    np.testing.assert_array_equal(resumed.next_rows(1, 2), two[1].next_rows(1, 2))
    # Stream s draws its own documents: the 4 streams' blocks differ.
    assert len({one.streams[s].next_block().tobytes() for s in range(4)}) == 4
    default = load_train_config("configs/dsl_small.py", [f"data.files={d}/data.jsonl"]).data
    assert data_lib.HostStreams(default, tok, 16, 1, 2).ids == [1]
    with pytest.raises(UserError, match="data.streams=4 input streams do not divide over 3 hosts"):
        data_lib.HostStreams(cfg, tok, 16, 0, 3)
    with pytest.raises(UserError, match="6 rows per micro-batch do not divide over data.streams=4"):
        one.check_rows(6)


def test_hosts_read_their_own_files_when_there_are_enough(tmp_path):
    """3 files on 2 hosts: host 0 reads files 0 and 2 only (file 1 is not even valid for
    it to open), host 1 file 1; 3 hosts on 2 files split by document instead."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"part{i}.jsonl")
        paths[-1].write_text("".join(json.dumps({"text": f"file {i} doc {j}"}) + "\n"
                                     for j in range(2 + i)))
    over = [f"data.files={tmp_path}/part*.jsonl", "data.shuffle=false"]
    cfg = load_train_config("configs/dsl_small.py", over).data
    assert data_lib.DocumentSource(cfg, 1, 2).docs == ["file 1 doc 0", "file 1 doc 1",
                                                       "file 1 doc 2"]
    paths[1].write_text("not json\n")  # host 0 never opens it
    assert data_lib.DocumentSource(cfg, 0, 2).docs == [
        "file 0 doc 0", "file 0 doc 1", *[f"file 2 doc {j}" for j in range(4)]]
    cfg = load_train_config("configs/dsl_small.py", [
        f"data.files={tmp_path}/part0.jsonl,{tmp_path}/part2.jsonl", "data.shuffle=false"]).data
    assert data_lib.DocumentSource(cfg, 2, 3).docs == ["file 2 doc 0", "file 2 doc 3"]


def test_tfds_source_reads_prepared_split_per_host(tmp_path, corpus):
    """A TFDS dataset prepared offline (TFDS's own download_and_prepare, nothing fetched)."""
    import tensorflow_datasets as tfds

    texts = [f"document {i} " + " ".join(WORDS[: 3 + i % 9]) for i in range(40)]

    class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "tiny_text"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "test data"}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, t in enumerate(texts):
                yield i, {"text": t}

    TinyText(data_dir=str(tmp_path)).download_and_prepare()
    over = ["data.source=tfds", "data.name=tiny_text", f"data.data_dir={tmp_path}"]
    cfg = load_train_config("configs/dsl_small.py", over).data
    shares = [list(data_lib.DocumentSource(cfg, h, 2).iterate(0, 0)) for h in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(texts) and len(shares[0]) == 20
    # Each host reads one contiguous half of the split (its own records), not every 2nd.
    whole = list(data_lib.DocumentSource(cfg, 0, 1).iterate(0, 0))
    assert shares == [whole[:20], whole[20:]]
    src = data_lib.DocumentSource(cfg, 1, 2)
    stream = data_lib.BlockStream(src, corpus["tok"], 16)
    stream.next_rows(3)
    saved = stream.state()
    np.testing.assert_array_equal(data_lib.BlockStream(src, corpus["tok"], 16, state=saved)
                                  .next_rows(4), stream.next_rows(4))
    with pytest.raises(UserError, match="no prepared 'validation' split"):
        data_lib.DocumentSource(load_train_config("configs/dsl_small.py",
                                                  over + ["data.split=validation"]).data)


def test_packing_without_separator_and_shuffle_buffer_resume_exactly(corpus):
    """The authors' packing: documents joined with no separator; blocks through a shuffle
    buffer (fill, then emit a uniformly drawn slot and refill it). Checked against the
    scheme written out here, and resumed from saved states (JSON round trip) anywhere,
    across epoch ends and blocks that start inside long documents."""
    d, tok = corpus["dir"], corpus["tok"]

    def data_cfg(**over):
        over = {"data.files": f"{d}/data.jsonl", **over}
        return load_train_config("configs/dsl_small.py", [f"{k}={v}" for k, v in over.items()]).data

    plain = data_lib.DocumentSource(data_cfg(**{"data.shuffle": "false",
                                                "data.shuffle_buffer": 0}))
    want = [t for text in corpus["texts"][:10] for t in tok.encode(text)]
    np.testing.assert_array_equal(data_lib.BlockStream(plain, tok, 8).next_rows(8).ravel(),
                                  want[:64])  # no EOS between documents

    L, S, n = 8, 16, 1100  # ~1,000 blocks per epoch: the run crosses an epoch end
    for sep in ("none", "eos"):
        cfg0 = data_cfg(**{"data.separator": sep, "data.shuffle_buffer": 0, "data.seed": 3})
        ordered = data_lib.BlockStream(data_lib.DocumentSource(cfg0), tok, L).next_rows(n + S)
        src = data_lib.DocumentSource(data_cfg(**{"data.separator": sep,
                                                  "data.shuffle_buffer": S, "data.seed": 3}))
        ref, pool = [], list(ordered[:S])
        for k, block in enumerate(ordered[S:]):
            i = int(np.random.default_rng([3, 0, k]).integers(S))
            ref.append(pool[i])
            pool[i] = block
        stream = data_lib.BlockStream(src, tok, L)
        got, saved = [], {}
        for k in range(n):
            if k in (0, 1, 37, 990, 1000):
                saved[k] = json.loads(json.dumps(stream.state()))
            got.append(stream.next_block())
        np.testing.assert_array_equal(np.stack(got), np.stack(ref))
        assert not np.array_equal(np.stack(got), ordered[:n])
        for k, st in saved.items():
            again = data_lib.BlockStream(src, tok, L, state=st).next_rows(min(60, n - k))
            np.testing.assert_array_equal(again, np.stack(got[k:k + len(again)]))
    with pytest.raises(UserError, match="shuffle buffer of 16 blocks, data.shuffle_buffer is 4"):
        data_lib.BlockStream(data_lib.DocumentSource(data_cfg(**{"data.shuffle_buffer": 4})),
                             tok, L, state=saved[990])
    with pytest.raises(UserError, match="written with a shuffle buffer, data.shuffle_buffer is 0"):
        data_lib.BlockStream(data_lib.DocumentSource(data_cfg(**{"data.shuffle_buffer": 0})),
                             tok, L, state=saved[990])
    unshuffled = data_lib.BlockStream(data_lib.DocumentSource(cfg0), tok, L)
    unshuffled.next_rows(3)
    with pytest.raises(UserError, match="written without a shuffle buffer, data.shuffle_buffer "
                                        "is 4"):  # a run started with 0, resumed with a buffer
        data_lib.BlockStream(data_lib.DocumentSource(data_cfg(**{"data.shuffle_buffer": 4})),
                             tok, L, state=json.loads(json.dumps(unshuffled.state())))
    with pytest.raises(UserError, match="data.separator must be one of"):
        data_lib.DocumentSource(data_cfg(**{"data.separator": "bos"}))


def test_weight_decay_skips_biases_and_block_norms():
    """One AdamW step with zero gradient: only weight decay acts. The exempt parameters
    (the authors' Trainer: biases and *_norm weights) stay bit-identical; every other one
    becomes w - lr * wd * w."""
    import jax.numpy as jnp
    import optax
    from ml_collections import ConfigDict

    from dsl_jax.dsl import DSLConfig, DSLModel
    from dsl_jax.train import default_config
    from dsl_jax.train.state import PARAM_NAMES, make_optimizer, split

    model = DSLModel(config.preset("tiny", dtype="float32"), DSLConfig(noise_dim=8),
                     rngs=nnx.Rngs(params=0))
    names = {str(p[-1]) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert names == set(PARAM_NAMES)
    _, params, _ = split(model, "pretrain")
    params = jax.tree.map(lambda x: x + 0.5, params)  # no zeros: c and the bias start at 0
    lr, wd = 0.25, 0.1
    opt_cfg = ConfigDict(default_config().optimizer.to_dict())
    opt_cfg.update(lr=lr, weight_decay=wd, warmup_steps=0)
    opt = make_optimizer(opt_cfg)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    exempt = {"logit_bias", "c", "attn_norm", "ff_norm"}
    flat_old = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_new = jax.tree.leaves(new)
    seen = set()
    for (path, w), w1 in zip(flat_old, flat_new):
        name = str(path[-1].key)
        seen.add(name)
        w, w1 = np.asarray(w), np.asarray(w1)
        if name in exempt:
            np.testing.assert_array_equal(w1, w, err_msg=name)
        else:  # ln_f, beta, wte, the LM head and the matrices decay
            w64 = w.astype(np.float64)
            np.testing.assert_allclose(w1, w64 - lr * wd * w64, rtol=2e-7, atol=0, err_msg=name)
            assert not np.array_equal(w1, w), name
    assert exempt | {"ln_f", "beta", "w", "wq"} <= seen
    opt_cfg.no_decay = ""  # every parameter decays
    updates, _ = make_optimizer(opt_cfg).update(zeros, opt.init(params), params)
    c = np.asarray(optax.apply_updates(params, updates)["converter"]["c"], np.float64)
    np.testing.assert_allclose(c, np.asarray(params["converter"]["c"]) * (1 - lr * wd), rtol=2e-7)
    opt_cfg.no_decay = "bias"
    with pytest.raises(UserError, match="optimizer.no_decay: unknown parameter name 'bias'"):
        make_optimizer(opt_cfg)
