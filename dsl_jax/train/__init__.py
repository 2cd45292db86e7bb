"""DSL adaptation training and the masked-diffusion control (docs/method.md section 2).

- :mod:`dsl_jax.train.state`: trainable/frozen split, AdamW, the TrainState;
- :mod:`dsl_jax.train.step`: the pure jitted train step, ``build_train_step``;
- :mod:`dsl_jax.train.data`: tokenised, packed text per host, resumable;
- :mod:`dsl_jax.train.loop`: the training loop (checkpoints, resume, metrics).

:func:`default_config` is the one list of run settings and their defaults; ``configs/*.py``
start from it and override what differs, and nothing built from it restates a default.
"""

from __future__ import annotations


def default_config():
    """Every field a training run config has (the 8B DSL recipe's values)."""
    import ml_collections

    from dsl_jax.dsl import DSLConfig

    c = ml_collections.ConfigDict()
    c.objective = "dsl"  # "dsl" (DSL adaptation), "mdm" (masked-diffusion control, LM head
    # frozen like DSL's) or "pretrain" (the masked-diffusion objective, every parameter trains)
    c.model = ""  # preset name or config.json; empty: init_ckpt's model
    c.init_ckpt = ""  # dsl-jax checkpoint (dsl-jax convert / a previous run); empty: random init
    c.dtype = "bfloat16"  # compute dtype; parameters and optimizer state are float32
    c.remat = "full"  # rematerialisation of one scanned layer: none, full, dots, dots_no_batch
    c.seed = 0  # parameter init (random init; from a plain LLaDA, the converter's bias c)
    # and the training noise
    c.steps = 1000
    c.global_batch = 64  # sequences per optimizer step (all hosts)
    c.micro_batches = 1  # gradient accumulation: the global batch is split into this many
    c.seq_len = 4096
    c.mesh = "fsdp=-1"  # mesh over all devices: data, fsdp, tensor sizes; -1: the rest
    c.prompt_end_id = -1  # >= 0: chat rows (data.pack=False) train on responses only, as in
    # LLaDA's SFT: positions up to the row's last token of this id (<|end_header_id|>, 126347
    # for LLaDA) are the prompt, never masked or noised, with no loss; -1: every position
    c.loss_chunk = 1024  # sequence positions (x every batch row) per chunk of the LM head's
    # float32 logits in the loss (the converter's chunk is dsl.chunk_positions)

    # The DSL fields (noise embedding, converter, SNR sampler): dsl_jax.dsl.DSLConfig's,
    # documented there, e.g. dsl.noise_dim, dsl.chunk_positions, dsl.roar_prob.
    c.dsl = ml_collections.ConfigDict(DSLConfig().to_dict())
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=2e-5, warmup_steps=100, weight_decay=0.1, clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8,
        # parameters (by name) that weight decay skips: the authors' (Hugging Face Trainer's
        # bias and *_norm exemptions; ln_f and beta are decayed there too), see
        # dsl_jax.train.state.make_optimizer; empty: decay every trained parameter
        no_decay="logit_bias,c,attn_norm,ff_norm"))

    c.data = ml_collections.ConfigDict(dict(
        source="tfds",  # "tfds" (a prepared tensorflow-datasets dir) or "files" (.txt / .jsonl)
        name="",  # TFDS name, e.g. "c4/en" or "fineweb_edu" (with an optional ":1.0.0")
        split="train",
        data_dir="",  # TFDS data dir, local or gs://; empty: $TFDS_DATA_DIR or ~/tensorflow_datasets
        files="",  # comma-separated .txt / .jsonl paths or globs (source=files)
        text_field="text",  # the text feature (TFDS) or JSON key (jsonl)
        tokenizer="",  # LLaDA tokenizer.json; empty: INIT_CKPT/tokenizer.json
        pack=True,  # pack documents into seq_len blocks, concatenated (see separator);
                    # False: one document per row, EOS-padded (SFT-style rows)
        separator="none",  # pack=True: "none" joins documents directly, as the authors' run
        # does; "eos": an EOS token after each document
        shuffle_buffer=10000,  # pack=True: packed blocks pass through a seeded shuffle buffer
        # of this many blocks (the authors' 10,000; 164 MB per input stream at seq_len 4096), saved
        # with each checkpoint; 0: blocks in stream order
        shuffle=True,  # files: shuffle the documents each epoch (seeded); TFDS: file order
        seed=0,  # the document order (files) and the shuffle buffer's draws
        streams=0,  # input streams, each reading its own share of the data; the batches
        # depend on this number alone, not on the hosts' (a fixed value makes runs on
        # pods of different sizes see the same batches); 0: one per host
    ))
    c.eval = ml_collections.ConfigDict(dict(
        every=100,  # steps between held-out evaluations; 0: never
        blocks=8,  # held-out blocks per input stream, never trained on: the first the stream yields
        # (with data.shuffle_buffer: the buffer's first draws, from about the first
        # shuffle_buffer + blocks blocks of the data)
        snrs="1,5,10,20,50",
    ))
    c.out_dir = "runs/train"  # a gs:// path, or a local path every host sees (on pods: NFS)
    c.resume = "auto"  # "auto": a run already in out_dir is resumed (its own settings only);
    # "overwrite": that run (checkpoints, final, metrics, config.json...) is deleted and a new
    # one starts
    c.save_every = 100
    c.keep = 3  # checkpoints kept
    c.log_every = 10
    c.profile_steps = ""  # "FIRST,LAST": a jax.profiler trace of steps FIRST..LAST (numbered
    # from 1 as in metrics.jsonl) in out_dir/profile (for TensorBoard's profile plugin or
    # Perfetto); empty: none
    return c
