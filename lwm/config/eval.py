"""Evaluation configuration: `lwm eval` (RULER's task suite, or the video needle V-NIAH).

`suite` picks what runs. The `load`, `mesh` and `cache` sections are those of the inference
commands (the KV cache is split over `sp`); `ruler` and `vniah` hold each suite's grid.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.config.data import ChatTemplateConfig
from lwm.config.infer import CacheConfig, LoadConfig
from lwm.config.loading import ConfigError
from lwm.config.model import MeshConfig

# RULER's 13 tasks in its order (lwm.eval.ruler.tasks defines them); the QA pair needs local files.
RULER_TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
)
RULER_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
Suite = Literal["ruler", "vniah"]
NeedleKind = Literal["digits", "word", "shape"]


@dataclasses.dataclass(frozen=True)
class RulerConfig:
    """RULER's grid: tasks x lengths x samples, and where the haystacks come from."""

    tasks: tuple[str, ...] = RULER_TASKS[:11]  # qa_1 / qa_2 need ruler.squad / ruler.hotpotqa
    lengths: tuple[int, ...] = RULER_LENGTHS  # tokens: prompt + generation budget (RULER's max_seq_length)
    samples: int = 10  # items per task and length (RULER uses 500)
    seed: int = 42
    essay: str = ""  # any UTF-8 text file as the essay haystack; empty: the built-in generated essay
    squad: str = ""  # local SQuAD-format JSON for qa_1
    hotpotqa: str = ""  # local HotpotQA-format JSON for qa_2
    max_new_tokens: int = 0  # 0: RULER's per-task budgets (128 niah, 30 vt, 120 cwe, 50 fwe, 32 qa)
    output_dir: str = "runs/ruler"
    template: ChatTemplateConfig = dataclasses.field(default_factory=ChatTemplateConfig)

    def validate(self) -> None:
        """Raises `ConfigError` naming the unknown task, the bad length or the missing QA file."""
        if not self.tasks:
            raise ConfigError("ruler.tasks is empty: name at least one of " + ", ".join(RULER_TASKS))
        for task in self.tasks:
            if task not in RULER_TASKS:
                raise ConfigError(f"ruler.tasks: unknown task {task!r}; use any of {', '.join(RULER_TASKS)}")
        if not self.lengths or any(length <= 0 for length in self.lengths):
            raise ConfigError(f"ruler.lengths={list(self.lengths)} must be positive token counts (e.g. [4096, 8192])")
        if self.samples <= 0:
            raise ConfigError(f"ruler.samples={self.samples} must be positive")
        if self.max_new_tokens < 0:
            raise ConfigError(f"ruler.max_new_tokens={self.max_new_tokens} must be >= 0 (0: RULER's budgets)")
        if "qa_1" in self.tasks and not self.squad:
            raise ConfigError("ruler.tasks has qa_1 but ruler.squad is empty: give a local SQuAD JSON file "
                              "(nothing is downloaded) or leave qa_1 out")
        if "qa_2" in self.tasks and not self.hotpotqa:
            raise ConfigError("ruler.tasks has qa_2 but ruler.hotpotqa is empty: give a local HotpotQA JSON file "
                              "(nothing is downloaded) or leave qa_2 out")


@dataclasses.dataclass(frozen=True)
class VniahConfig:
    """The video needle: haystack lengths in frames x needle depths, and what the needle shows."""

    video: str = ""  # a local video or image folder as the haystack; empty: a generated video
    frames: tuple[int, ...] = (8, 16, 32)  # haystack lengths (frames, needle included)
    depth_intervals: int = 5  # needle depths: linspace(0, 100, intervals) percent
    needle: NeedleKind = "digits"  # what the needle frame shows: a number, a word or a shape
    needle_frames: int = 1  # a needle clip of this many identical frames
    rounds: int = 1  # questions per cell, each with its own needle
    seed: int = 0
    max_new_tokens: int = 16
    output_dir: str = "runs/vniah"
    template: ChatTemplateConfig = dataclasses.field(default_factory=ChatTemplateConfig)

    def validate(self) -> None:
        """Raises `ConfigError` for an empty grid or a needle longer than a haystack."""
        if not self.frames or any(count <= 0 for count in self.frames):
            raise ConfigError(f"vniah.frames={list(self.frames)} must be positive frame counts (e.g. [8, 16, 32])")
        for name in ("depth_intervals", "needle_frames", "rounds", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"vniah.{name}={getattr(self, name)} must be positive")
        if self.needle_frames >= min(self.frames):
            raise ConfigError(f"vniah.needle_frames={self.needle_frames} leaves no haystack in "
                              f"vniah.frames={min(self.frames)}: use fewer needle frames or longer haystacks")


def _eval_mesh() -> MeshConfig:
    # Evaluation spends its memory on the KV cache: all devices split it along positions.
    return MeshConfig(dp=1, fsdp=1, tp=1, sp=-1)


@dataclasses.dataclass(frozen=True)
class EvalRunConfig:
    """Root config of `lwm eval`."""

    suite: Suite = "ruler"
    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=_eval_mesh)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    ruler: RulerConfig = dataclasses.field(default_factory=RulerConfig)
    vniah: VniahConfig = dataclasses.field(default_factory=VniahConfig)
    cpu_devices: int = 0  # fake CPU devices to shard over on a CPU-only machine; 0: as is
    progress: bool = True

    def validate(self) -> None:
        """Raises `ConfigError` when the model, the VQ tokenizer or the cache size is missing."""
        if not self.load.model:
            raise ConfigError("load.model is empty: lwm eval needs a model directory; pass --model DIR")
        if self.cpu_devices < 0:
            raise ConfigError(f"cpu_devices={self.cpu_devices} must be >= 0 (0 leaves the device count alone)")
        if self.suite == "vniah" and not self.load.vq:
            raise ConfigError("suite=vniah encodes frames and needs a VQ tokenizer: pass --load.vq PATH")
        if self.suite == "ruler" and self.cache.max_len and self.cache.max_len < max(self.ruler.lengths):
            raise ConfigError(f"cache.max_len={self.cache.max_len} cannot hold ruler.lengths up to "
                              f"{max(self.ruler.lengths)}: raise it or set 0 (automatic)")
