"""Data configuration: input formats, the token store, packing and batching.

Two ways to say which JSONL fields make an example, which are equivalent:

- LWM's field template, `fields: "[vision],caption"`: comma-separated fields are concatenated
  in order; a `[bracketed]` field carries no loss; `a+b` joins the subfields `a` and `b` with
  `subfield_separator`; `<|bos|>` / `<|eos|>` insert those tokens. A field whose name is
  `vision_field` or starts with `vision` holds flat VQ codes (`tokens_per_frame` per frame).
- The typed form, `segments: [{field: vision, loss: false, kind: vision}, {field: caption}]`.

`parse_field_template` turns the first into the second; `DataConfig.resolved_segments()` gives
the segments whichever form the config used.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.config.errors import ConfigError
from lwm.config.vision import ReadsVisionVocab, VisionVocab

DataFormat = Literal["text", "vision_text", "chat"]
OverlongPolicy = Literal["split", "drop"]
BadRecordPolicy = Literal["error", "skip"]
SegmentKind = Literal["text", "vision"]
QAGeneratorKind = Literal["template", "lm"]
TemplateQAMode = Literal["plant", "extract"]

SPECIAL_FIELDS = ("<|bos|>", "<|eos|>")


@dataclasses.dataclass(frozen=True)
class FieldSegment:
    """One piece of an example: a JSONL field (or `a+b` subfields, or `<|bos|>`/`<|eos|>`).

    `loss` says whether the piece's tokens are prediction targets; `kind: vision` reads the
    field as flat VQ codes and wraps them in `<vision>` … `</vision>`.
    """

    field: str = "text"
    loss: bool = True
    kind: SegmentKind = "text"

    def validate(self) -> None:
        """Raises `ConfigError` for an empty field name or a joined/special vision field."""
        if not self.field or any(not part.strip() for part in self.field.split("+")):
            raise ConfigError(
                f"data segment field={self.field!r} has an empty name: write a JSONL field name, "
                f"`a+b` to join subfields, or <|bos|>/<|eos|>"
            )
        if self.kind == "vision" and ("+" in self.field or self.field in SPECIAL_FIELDS):
            raise ConfigError(
                f"data segment field={self.field!r} has kind=vision: a vision segment must name "
                f"one field holding a flat list of VQ codes"
            )

    @property
    def subfields(self) -> tuple[str, ...]:
        """The field names joined by `+` (one name for a plain field)."""
        return tuple(part.strip() for part in self.field.split("+"))


def parse_field_template(template: str, vision_field: str = "vision") -> tuple[FieldSegment, ...]:
    """Parses LWM's field template (`"[vision],caption"`) into typed segments.

    A field named `vision_field` or starting with `vision` is a vision field; `<|bos|>` and
    `<|eos|>` stay special fields. Raises `ConfigError` naming the bad part.
    """
    segments = []
    for raw in template.split(","):
        part = raw.strip()
        loss = True
        if part.startswith("[") and part.endswith("]"):
            part, loss = part[1:-1].strip(), False
        if not part or "[" in part or "]" in part:
            raise ConfigError(
                f"data.fields={template!r}: part {raw!r} is not a field, `[field]`, `a+b` or "
                f"<|bos|>/<|eos|>"
            )
        is_vision = part == vision_field or (part.startswith("vision") and part not in SPECIAL_FIELDS)
        segment = FieldSegment(field=part, loss=loss, kind="vision" if is_vision else "text")
        segment.validate()
        segments.append(segment)
    return tuple(segments)


@dataclasses.dataclass(frozen=True)
class ChatTemplateConfig:
    """How a conversation becomes tokens (LWM's form by default).

    One turn renders as `<s>{system}{user_prefix}{question}[{vision_separator}<vision>…</vision>]`
    `{assistant_prefix}` (no loss) then `{answer_prefix}{answer}</s>` (loss), giving LWM's
    `<s>You are a helpful assistant. USER: {question}\\n<vision>…</vision> ASSISTANT: {answer}</s>`.
    Later turns repeat from `{user_prefix}`. A `system` message replaces `system`.
    """

    system: str = "You are a helpful assistant."
    user_prefix: str = " USER: "
    vision_separator: str = "\n"
    assistant_prefix: str = " ASSISTANT:"
    answer_prefix: str = " "
    add_bos: bool = True
    eos_after_answer: bool = True

    def validate(self) -> None:
        """Raises `ConfigError` for a missing text piece or an empty assistant prefix."""
        for name in ("system", "user_prefix", "vision_separator", "assistant_prefix", "answer_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"data.chat.{name}={getattr(self, name)!r} must be a string "
                                  f"(quote it in YAML, e.g. '\"\"' for an empty one)")
        if not self.assistant_prefix.strip():
            raise ConfigError(
                "data.chat.assistant_prefix is empty: the model needs a marker before each answer, "
                "e.g. ' ASSISTANT:'"
            )


@dataclasses.dataclass(frozen=True)
class DataConfig(ReadsVisionVocab):
    """Where the data lives, how records become tokens, and how tokens become batches.

    `batch_size` is the global number of rows per step, over all processes; each process's
    iterator yields `batch_size / process_count` rows of `seq_len` tokens.
    """

    # Inputs (for tokenizing) and the token store (for training).
    paths: tuple[str, ...] = ()
    store_path: str = ""
    format: DataFormat = "text"
    text_field: str = "text"
    fields: str = ""
    segments: tuple[FieldSegment, ...] = ()
    subfield_separator: str = " "
    add_bos: bool = True
    add_eos: bool = True
    messages_field: str = "messages"
    vision_field: str = "vision"
    chat: ChatTemplateConfig = dataclasses.field(default_factory=ChatTemplateConfig)
    tokenizer: str = ""  # a SentencePiece .model file; empty: lwm/assets/tokenizer.model
    text_vocab_size: int = 0
    # Which VQ tokenizer's codes the vision fields hold. In a training run it is the model's
    # (`model.vision`), filled in by the root config: state it there, once.
    vision: VisionVocab = dataclasses.field(default_factory=VisionVocab)
    on_bad_record: BadRecordPolicy = "error"
    bad_record_examples: int = 5
    # Packing and batching.
    seq_len: int = 2048
    batch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    overlong: OverlongPolicy = "split"
    packing_bins: int = 16
    read_chunk: int = 64
    read_threads: int = 4
    num_workers: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field and what would fix it."""
        positive = ("seq_len", "batch_size", "packing_bins", "read_chunk", "read_threads")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be positive")
        for name in ("num_workers", "text_vocab_size", "bad_record_examples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be zero or positive")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len={self.seq_len}: a row needs at least 2 tokens")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ConfigError(
                f"data.num_epochs={self.num_epochs} must be positive, or null to repeat forever"
            )
        if self.fields and self.segments:
            raise ConfigError(
                "data.fields and data.segments are both set: use either LWM's template string "
                "(fields) or the typed list (segments), not both"
            )
        segments = self.resolved_segments()
        if self.format == "text" and any(s.kind == "vision" for s in segments):
            raise ConfigError(
                f"data.format=text but the segments include vision field(s) "
                f"{[s.field for s in segments if s.kind == 'vision']}: use data.format=vision_text"
            )
        if self.format == "vision_text" and not (self.fields or self.segments):
            raise ConfigError(
                "data.format=vision_text needs data.fields (e.g. '[vision],caption') or "
                "data.segments saying which fields are vision codes and which carry loss"
            )
        if self.format == "chat" and not self.messages_field:
            raise ConfigError("data.messages_field is empty: name the field holding the turns")

    def resolved_segments(self) -> tuple[FieldSegment, ...]:
        """The example's segments: `segments`, else the parsed `fields`, else `text_field`."""
        if self.segments:
            return self.segments
        if self.fields:
            return parse_field_template(self.fields, self.vision_field)
        return (FieldSegment(field=self.text_field, loss=True, kind="text"),)

    @property
    def vision_vocab_size(self) -> int:
        """Smallest vision vocabulary holding the codes plus `<eof>` and `<eov>`."""
        return self.vision.min_vocab_size


@dataclasses.dataclass(frozen=True)
class QAConfig:
    """Model-generated (or template) QA for long-context chat finetuning (`lwm make-qa`).

    Documents (JSONL, `text_field`) are split into chunks of about `chunk_tokens` tokens; each
    chunk gets question/answer pairs; consecutive chunks are concatenated into contexts of at
    most each of `target_lengths` tokens, followed by `questions_per_example` questions about
    chunks inside the context, each answered in its own assistant turn.
    """

    input: str = ""
    output: str = ""
    text_field: str = "text"
    chunk_tokens: int = 1000
    target_lengths: tuple[int, ...] = (4096,)
    questions_per_example: int = 1
    min_fill: float = 0.5
    generator: QAGeneratorKind = "template"
    template_mode: TemplateQAMode = "plant"
    pairs_per_chunk: int = 2
    prompt: str = ""
    seed: int = 0
    # The causal LM that writes the pairs when generator=lm: any lwm model directory,
    # including a Hugging Face model converted with `lwm convert hf2lwm`.
    model_dir: str = ""
    max_new_tokens: int = 256
    temperature: float = 0.0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        if self.generator == "lm" and not self.model_dir:
            raise ConfigError(
                "qa.generator=lm needs qa.model_dir: a model directory (lwm train output or "
                "`lwm convert hf2lwm` of a local Hugging Face model) to write the pairs"
            )
        for name in ("chunk_tokens", "questions_per_example", "pairs_per_chunk", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"qa.{name}={getattr(self, name)} must be positive")
        if not self.target_lengths or any(length <= self.chunk_tokens for length in self.target_lengths):
            raise ConfigError(
                f"qa.target_lengths={list(self.target_lengths)} must be non-empty and each longer "
                f"than qa.chunk_tokens={self.chunk_tokens}, so a context holds at least one chunk "
                f"plus its question"
            )
        if not 0 < self.min_fill <= 1:
            raise ConfigError(f"qa.min_fill={self.min_fill} must lie in (0, 1]")
        if self.prompt and "{passage}" not in self.prompt:
            raise ConfigError(
                "qa.prompt must contain {passage} (where the chunk goes) and may contain {n} "
                "(the number of pairs to ask for)"
            )


@dataclasses.dataclass(frozen=True)
class MakeQAConfig:
    """Root config of `lwm make-qa`: the QA settings and the data section (tokenizer, template)."""

    qa: QAConfig = dataclasses.field(default_factory=QAConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(format="chat"))
