"""The LLaDA tokenizer (a Hugging Face ``tokenizer.json``) and its chat template.

Loaded with the ``tokenizers`` library, from a local path or a bucket. The special tokens are found by their text,
so a small tokenizer trained locally with the same special tokens (tests, the demo)
works exactly like the real one.

The chat template is the one beside ``tokenizer.json`` when there is one
(``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``), rendered
with jinja2 as ``transformers``' ``apply_chat_template`` renders it (:class:`ChatTemplate`);
without one, LLaDA's template as coded here (:func:`llada_chat`). docs/method.md section 1.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from dsl_jax import storage
from dsl_jax.errors import UserError, require
from dsl_jax.textfiles import read_json

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MASK = "<|mdm_mask|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = (BOS, EOS, MASK, START_HEADER, END_HEADER, EOT)

# The files of a Hugging Face tokenizer that dsl-jax reads or carries along (convert copies
# those present into a checkpoint).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")
# The special-token variables ``transformers`` gives a chat template (its special_tokens_map).
TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token", "additional_special_tokens")


def tokenizer_files(directory: str) -> dict[str, str]:
    """name -> path of the :data:`TOKENIZER_FILES` present in ``directory``."""
    out = {}
    for name in TOKENIZER_FILES:
        path = storage.join(directory, name)
        if storage.isfile(path):
            out[name] = path
    return out


def llada_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """LLaDA's chat template as coded here: BOS, then each message as
    ``<|start_header_id|>ROLE<|end_header_id|>\\n\\n`` + content.strip() + ``<|eot_id|>``
    (roles system, user, assistant), then the assistant header when asked for: the text
    LLaDA-8B-Instruct's own template renders (which always ends with that header)."""
    out = [BOS]
    for m in messages:
        role = m.get("role")
        require(role in ("system", "user", "assistant"), f"chat: unknown role {role!r}")
        out.append(f"{START_HEADER}{role}{END_HEADER}\n\n{str(m.get('content', '')).strip()}{EOT}")
    if add_generation_prompt:
        out.append(f"{START_HEADER}assistant{END_HEADER}\n\n")
    return "".join(out)


def _token_text(value):
    """A special token from ``tokenizer_config.json``: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    if isinstance(value, list):
        return [_token_text(v) for v in value]
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ChatTemplate:
    """A Hugging Face chat template (jinja2 source) and the variables it is rendered with.

    Rendered as ``transformers`` renders one: jinja2's immutable sandboxed environment
    with ``trim_blocks``, ``lstrip_blocks`` and the loop-controls extension, the
    ``raise_exception`` and ``strftime_now`` helpers, a ``tojson`` filter that keeps
    non-ASCII text, and ``messages``, ``add_generation_prompt``, ``tools`` and
    ``documents`` (None) plus the tokenizer's special tokens (``bos_token``,
    ``eos_token``, ...) as variables. A template error is one line (``UserError``).
    """

    def __init__(self, source: str, variables: dict | None = None, origin: str = "chat template"):
        require(isinstance(source, str) and source.strip() != "",
                f"{origin}: the chat template is not a non-empty string")
        self.source = source
        self.variables = dict(variables or {})
        self.origin = origin
        self._compiled = None

    @classmethod
    def from_dir(cls, directory: str) -> "ChatTemplate | None":
        """The chat template beside a tokenizer, or None: ``chat_template.jinja``, else
        ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of named
        templates whose ``default`` is taken); the special tokens from
        ``tokenizer_config.json``, then ``special_tokens_map.json`` for those it lacks."""
        files = tokenizer_files(directory)
        config = (read_json(files["tokenizer_config.json"], obj=True)
                  if "tokenizer_config.json" in files else {})
        variables = {k: _token_text(config[k]) for k in TEMPLATE_TOKENS if k in config}
        if "special_tokens_map.json" in files:
            extra = read_json(files["special_tokens_map.json"], obj=True)
            for k in TEMPLATE_TOKENS:
                if k in extra and variables.get(k) is None:
                    variables[k] = _token_text(extra[k])
        if "chat_template.jinja" in files:
            path = files["chat_template.jinja"]
            return cls(storage.read_text(path), variables, origin=path)
        source = config.get("chat_template")
        if source is None:
            return None
        origin = files["tokenizer_config.json"]
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            require("default" in named, f"{origin}: chat_template lists templates "
                    f"{sorted(map(str, named))} but none named 'default'")
            source = named["default"]
        return cls(source, variables, origin=origin)

    def compile(self):
        """The compiled template (compiled once); a syntax error is one line."""
        if self._compiled is None:
            import jinja2
            import jinja2.ext
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                                  separators=separators, sort_keys=sort_keys)

            def strftime_now(fmt):
                import datetime
                return datetime.datetime.now().strftime(fmt)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = strftime_now
            try:
                self._compiled = env.from_string(self.source)
            except jinja2.exceptions.TemplateError as e:
                raise UserError(f"{self.origin}: chat template: {_first_line(e)}") from None
        return self._compiled

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The chat as text (each message a dict with ``role`` and ``content``)."""
        import jinja2
        compiled = self.compile()
        try:
            return compiled.render(messages=[dict(m) for m in messages],
                                   add_generation_prompt=bool(add_generation_prompt),
                                   tools=None, documents=None, **self.variables)
        except jinja2.exceptions.TemplateError as e:
            raise UserError(f"{self.origin}: chat template: {_first_line(e)}") from None


class Tokenizer:
    """Encode, decode and chat-template text with a LLaDA ``tokenizer.json``."""

    def __init__(self, tok, source: str = "tokenizer", chat_template: ChatTemplate | None = None):
        self.tok = tok
        self.source = source
        self.chat_template = chat_template
        ids = {}
        for s in SPECIAL_TOKENS:
            i = tok.token_to_id(s)
            require(i is not None, f"{source}: lacks the special token {s}")
            ids[s] = i
        self.bos_id, self.eos_id, self.mask_id = ids[BOS], ids[EOS], ids[MASK]
        self.start_header_id, self.end_header_id, self.eot_id = (
            ids[START_HEADER], ids[END_HEADER], ids[EOT])
        self.special_ids = frozenset(ids.values())

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        """A ``tokenizer.json`` (or a directory holding one), with the chat template found
        beside it (:meth:`ChatTemplate.from_dir`) when there is one."""
        from tokenizers import Tokenizer as HFTokenizer
        if storage.isdir(path):
            path = storage.join(path, "tokenizer.json")
        require(storage.isfile(path), f"{path}: no such tokenizer file")
        try:
            tok = HFTokenizer.from_str(storage.read_text(path))
        except UserError:
            raise
        except Exception as e:  # tokenizers raises plain Exceptions on bad files
            raise UserError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        return cls(tok, source=path, chat_template=ChatTemplate.from_dir(storage.dirname(path)))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def check_model(self, mc, who: str = "") -> None:
        """One clear error unless this tokenizer fits model config ``mc``: every id within
        its vocabulary and the same mask token id (another mask id makes the samplers and
        the losses use a token the model never saw as the mask: silent junk)."""
        from dsl_jax.errors import require

        where = f" ({who})" if who else ""
        require(self.vocab_size <= mc.vocab_size,
                f"{self.source}: {self.vocab_size} tokens do not fit the model's vocabulary "
                f"{mc.vocab_size}{where}")
        require(self.mask_id == mc.mask_token_id,
                f"{self.source}: mask token id {self.mask_id} differs from the model's "
                f"{mc.mask_token_id}{where}")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no added special tokens (special-token text is honoured)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` with every special token (EOS, EoT, mask, headers) removed."""
        return self.tok.decode([int(i) for i in ids if int(i) not in self.special_ids],
                               skip_special_tokens=True).strip()

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The chat as text: through the tokenizer's own chat template when it has one
        (which decides what ``add_generation_prompt`` does: LLaDA-8B-Instruct's always
        ends with the assistant header), else :func:`llada_chat`."""
        if self.chat_template is not None:
            return self.chat_template.render(messages, add_generation_prompt)
        return llada_chat(messages, add_generation_prompt)

    def chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt))

    def prompt(self, user_text: str) -> list[int]:
        """Ids of a one-turn chat prompt ending with the assistant header."""
        return self.chat([{"role": "user", "content": user_text}])


def train_small(texts: Iterable[str], vocab_size: int = 512, path: str | None = None) -> Tokenizer:
    """Train a small byte-level BPE tokenizer with LLaDA's special tokens as ids 0..5
    (BOS 0, EOS 1, mask 2, start-header 3, end-header 4, EoT 5). For tests and the demo."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    if path is not None:
        storage.makedirs(storage.dirname(path))
        storage.write_text(path, tok.to_str(pretty=True))
    return Tokenizer(tok, source=path or "trained tokenizer")
