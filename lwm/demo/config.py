"""The demo's config: a training run plus the world it trains on, its tokenizer and its evaluation."""


from __future__ import annotations

import dataclasses

from lwm.config import ConfigError, TrainRunConfig
from lwm.config.synthetic import MAX_NEEDLES, SyntheticWorldConfig
from lwm.config.vq import (
    VQCheckpointConfig,
    VQModelConfig,
    VQTrainConfig,
    VQTrainRunConfig,
)

# The kinds of training examples the world is encoded into (`encode_world`).
# `video_qa` holds every question about one video (random order, one turn each); `passkey` the
# world's documents at `document_chars`; `passkey_short` short single-needle documents (the
# curriculum that makes retrieval form); `recall` key→value drills (several needles, little
# filler, every one asked).
EXAMPLE_KINDS = ("text_to_video", "video_to_text", "video_qa", "passkey", "passkey_short", "recall")

# Written into the output folder so that a rerun may clear it (and never clears anything else).
MARKER_FILE = "demo.json"


def _tiny_vq() -> VQTrainRunConfig:
    """`configs/vq/tiny.yaml` (32x32 frames -> 8x8 codes, codebook 512) with demo-sized training."""
    return VQTrainRunConfig(
        model=VQModelConfig(resolution=32, hidden_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
                            z_channels=32, codebook_size=512, codebook_dim=32, norm_num_groups=8),
        train=VQTrainConfig(steps=300, batch_size=16, lr=2e-3, warmup_steps=30, log_every=10),
        checkpoint=VQCheckpointConfig(dir="runs/demo/vq", every=100000, keep=1, resume=False),
    )


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    """How the world becomes training examples."""

    # Steps and learning rate of the chat stage that follows `train.steps` of pretraining.
    chat_steps: int = 100
    chat_lr: float = 1e-3
    # Passkey documents are about this many characters (fits data.seq_len with the template).
    document_chars: int = 900
    # Short passkey documents (0..short_document_chars characters of filler, one needle) and
    # recall drills (`recall_needles` needles in 0..recall_chars characters), how many of each.
    short_document_chars: int = 250
    short_passkeys: int = 2000
    recall_needles: int = 4
    recall_chars: int = 60
    recall_drills: int = 1000
    # Example kinds of each stage (`EXAMPLE_KINDS`). Chat examples carry loss only on the
    # answers, so pretraining is mostly on the captioned videos, whose every vision token is a
    # target, with short passkeys and recall drills from the first step (retrieval takes the
    # longest to form); the chat stage adds the questions and keeps the captioned videos, so
    # that it does not erase what pretraining taught.
    pretrain_kinds: tuple[str, ...] = ("text_to_video", "video_to_text", "passkey_short", "recall")
    chat_kinds: tuple[str, ...] = ("video_qa", "passkey", "text_to_video", "video_to_text")
    # Ask passkey questions as the needle evaluation does: on the document's line, followed by
    # its instruction (`lwm.eval.needle.INSTRUCTION`).
    passkey_instruction: bool = True

    def validate(self) -> None:
        """Raises `ConfigError` for non-positive sizes."""
        if self.chat_steps < 0 or self.chat_lr <= 0 or self.document_chars <= 0:
            raise ConfigError(f"demo_data: chat_steps={self.chat_steps} must be >= 0, chat_lr={self.chat_lr} "
                              f"and document_chars={self.document_chars} positive")
        for name in ("short_document_chars", "short_passkeys", "recall_chars", "recall_drills"):
            if getattr(self, name) < 0:
                raise ConfigError(f"demo_data.{name}={getattr(self, name)} must be zero or positive")
        if not 1 <= self.recall_needles <= MAX_NEEDLES:
            raise ConfigError(f"demo_data.recall_needles={self.recall_needles} must lie in [1, {MAX_NEEDLES}]")
        for name in ("pretrain_kinds", "chat_kinds"):
            unknown = sorted(set(getattr(self, name)) - set(EXAMPLE_KINDS))
            if unknown or not getattr(self, name):
                raise ConfigError(f"demo_data.{name}={list(getattr(self, name))}: expected a non-empty "
                                  f"list of {list(EXAMPLE_KINDS)}")


@dataclasses.dataclass(frozen=True)
class DemoEvalConfig:
    """Sizes of the evaluation and the learning bars the report checks."""

    # Held-out questions scored (0: all of them).
    max_questions: int = 0
    # Held-out videos the model continues (greedy) from `context_frames` frames.
    continuation_videos: int = 8
    # Frames of a held-out video given before the model continues it.
    context_frames: int = 3
    # Needle grid: context lengths linspace(min, max, intervals) tokens, depths, rounds.
    needle_context_min: int = 256
    needle_context_max: int = 480
    needle_intervals: int = 2
    needle_depths: int = 5
    needle_rounds: int = 2
    max_new_tokens: int = 20
    # Learning bars.
    min_needle_accuracy: float = 0.9
    # QA accuracy must exceed chance by this margin, and the same model without the video by
    # `video_margin` (absolute).
    qa_margin: float = 0.1
    video_margin: float = 0.1

    def validate(self) -> None:
        """Raises `ConfigError` for an impossible grid."""
        if self.context_frames < 1 or self.needle_context_min < 64 or \
                self.needle_context_max < self.needle_context_min:
            raise ConfigError(
                f"evaluation: context_frames={self.context_frames} must be >= 1 and "
                f"64 <= needle_context_min={self.needle_context_min} <= needle_context_max="
                f"{self.needle_context_max}")


@dataclasses.dataclass(frozen=True)
class DemoConfig(TrainRunConfig):
    """A training run plus the world it trains on, its tokenizer and its evaluation."""

    synthetic: SyntheticWorldConfig = dataclasses.field(default_factory=SyntheticWorldConfig)
    vq: VQTrainRunConfig = dataclasses.field(default_factory=_tiny_vq)
    demo_data: DemoDataConfig = dataclasses.field(default_factory=DemoDataConfig)
    evaluation: DemoEvalConfig = dataclasses.field(default_factory=DemoEvalConfig)
    # Fake CPU devices to shard over when running on a CPU-only machine.
    cpu_devices: int = 4
    # One seed for the whole run (`lwm demo --seed N`): the world (`synthetic.seed`), the VQ
    # tokenizer (`vq.train.seed`), the model's initialisation (`train.seed`) and the data order
    # (`data.seed`) all take it, overriding whatever those sections say.
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seed < 0:  # checked here: the sections it is copied into would name themselves
            raise ConfigError(f"seed={self.seed} must be zero or positive (lwm demo --seed N)")
        seeded = {
            "synthetic": dataclasses.replace(self.synthetic, seed=self.seed),
            "vq": dataclasses.replace(self.vq, train=dataclasses.replace(self.vq.train, seed=self.seed)),
            "train": dataclasses.replace(self.train, seed=self.seed),
            "data": dataclasses.replace(self.data, seed=self.seed),
        }
        for name, value in seeded.items():
            object.__setattr__(self, name, value)

    def validate(self) -> None:
        """Raises `ConfigError` when the model, data and tokenizer disagree."""
        super().validate()
        if not self.model.has_vision:
            raise ConfigError("model.vision_vocab_size is 0: the demo trains a vision-language model")
        if self.model.codebook_size != self.vq.model.codebook_size or \
                self.model.tokens_per_frame != self.vq.model.tokens_per_frame:
            raise ConfigError(
                f"model.vision.codebook_size={self.model.codebook_size} / tokens_per_frame="
                f"{self.model.tokens_per_frame} must match the VQ tokenizer's "
                f"{self.vq.model.codebook_size} / {self.vq.model.tokens_per_frame}")
        if self.synthetic.frame_size != self.vq.model.resolution:
            raise ConfigError(f"synthetic.frame_size={self.synthetic.frame_size} must equal "
                              f"vq.model.resolution={self.vq.model.resolution}")
        if self.evaluation.context_frames >= self.synthetic.num_frames:
            raise ConfigError(f"evaluation.context_frames={self.evaluation.context_frames} must be below "
                              f"synthetic.num_frames={self.synthetic.num_frames}")
        if self.evaluation.needle_context_max + self.evaluation.max_new_tokens > self.model.max_seq_len:
            raise ConfigError("evaluation.needle_context_max + max_new_tokens exceeds model.max_seq_len")


