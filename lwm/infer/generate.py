"""Text generation and vision generation (text → image or video) with a KV cache.

Text goes through `lwm.infer.engine.Engine`, the continuous-batching loop the server runs:
prompts are prefilled in chunks and decoded one step per token until a stop token (EOS by
default) or `max_new_tokens`. Vision generation pairs a conditional and an unconditional row
for guidance and forces `<eof>`/`<eov>`, so it runs `InferenceModel.decode`'s compiled loop;
both call the model's own decoder block through `InferenceModel.extend`.

Vision (LWM's procedure): the conditional prompt is
`<s>You are a helpful assistant. USER: Generate an image of {prompt} ASSISTANT: <vision>` and
the unconditional one `<s><vision>`; both are batched together and classifier-free guidance
mixes their vision-head logits (u + scale·(c − u)). `<eof>` is forced after every
`tokens_per_frame` codes and `<eov>` at the end. A video first generates its first frame from
the image prompt, then the remaining frames from `Generate a video of {prompt}` followed by
that frame, with the video settings. Codes decode to frames with the VQ tokenizer and are
written as PNG, GIF or MP4.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lwm.config.data import ChatTemplateConfig
from lwm.infer.cache import InferenceModel
from lwm.infer.engine import Engine
from lwm.infer.requests import CacheOverflowError, Request
from lwm.infer.sampling import SamplingParams, VisionSchedule


@dataclasses.dataclass(frozen=True)
class Generation:
    """One generated answer: token ids (stop token removed), text, and whether it stopped."""

    tokens: tuple[int, ...]
    text: str
    stopped: bool


def split_generated(tokens_N: np.ndarray, stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Generated ids up to (not including) the first stop token, and whether one came."""
    out: list[int] = []
    for token in np.asarray(tokens_N).tolist():
        if token < 0:
            break
        if token in stop_ids:
            return out, True
        out.append(int(token))
    return out, False


def encode_prompt(tokenizer: Any, prompt: str | Sequence[int]) -> list[int]:
    """A text prompt as `[BOS] + ids`; a sequence of ids is taken as is."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_bos=True)
    return [int(token) for token in prompt]


def check_text_vocabulary(engine: InferenceModel, tokenizer: Any) -> None:
    """Raises `ValueError` when the tokenizer's ids do not fit the model's text table."""
    if tokenizer.vocab_size > engine.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's text vocabulary is "
            f"{engine.config.vocab_size}: load the tokenizer the model was trained with (load.tokenizer)"
        )


def _text_requests(prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, sampling: SamplingParams,
                   stop_ids: Sequence[int], seed: int) -> list[Request]:
    return [Request(tuple(int(t) for t in ids), max_tokens=max_new_tokens, sampling=sampling, seed=seed + row,
                    stop_ids=tuple(stop_ids)) for row, ids in enumerate(prompt_ids)]


def generate_text(
    engine: InferenceModel,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_new_tokens: int = 256,
    sampling: SamplingParams = SamplingParams(),
    stop_ids: Sequence[int] | None = None,
    seed: int = 0,
    cache_size: int | None = None,
) -> list[Generation]:
    """Answers a batch of prompts (strings get BOS; id lists are used as given).

    The prompts run together through `lwm.infer.engine.Engine` (one slot each), the path the
    server, `lwm chat` and `lwm needle` take. Each row stops at EOS (or `stop_ids`); row `i`
    samples with seed `seed + i`. A slot holds the longest prompt plus `max_new_tokens`, rounded
    up to the cache granularity, unless `cache_size` says more.
    """
    check_text_vocabulary(engine, tokenizer)
    prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    if any(not ids for ids in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    stops = tuple(stop_ids) if stop_ids is not None else (tokenizer.eos_id,)
    longest = max(len(ids) for ids in prompt_ids)
    batch = Engine(engine, slots=len(prompt_ids), queue_size=len(prompt_ids),
                   slot_size=max(cache_size or 0, longest + max_new_tokens))
    completions = batch.generate(_text_requests(prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling,
                                                stop_ids=stops, seed=seed))
    return [Generation(c.tokens, tokenizer.decode(list(c.tokens)), c.finish_reason == "stop") for c in completions]


class TextGenerator:
    """`generate(prompt_ids) -> answer_text` over one engine slot, greedy by default.

    The slot (`max_prompt_tokens + max_new_tokens` positions, spread over the mesh's `sp`
    devices) is allocated once; consecutive prompts that share a prefix (the same haystack with
    the needle deeper) reuse its keys and values. This is the callable the needle evaluation and
    `lwm make-qa` take; call `i` samples with seed `seed + i`.
    """

    def __init__(
        self,
        engine: InferenceModel,
        tokenizer: Any,
        *,
        max_prompt_tokens: int,
        max_new_tokens: int = 32,
        sampling: SamplingParams = SamplingParams(),
        stop_ids: Sequence[int] | None = None,
        seed: int = 0,
    ):
        check_text_vocabulary(engine, tokenizer)
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.stop_ids = tuple(stop_ids) if stop_ids is not None else (tokenizer.eos_id,)
        self.calls = seed
        self.engine = Engine(engine, slots=1, queue_size=1, slot_size=max_prompt_tokens + max_new_tokens)
        self.cache_size = self.engine.slot_size

    def __call__(self, prompt_ids: Sequence[int]) -> str:
        if len(prompt_ids) > self.max_prompt_tokens:
            raise CacheOverflowError(
                f"a prompt of {len(prompt_ids)} tokens exceeds max_prompt_tokens={self.max_prompt_tokens}"
            )
        [request] = _text_requests([prompt_ids], max_new_tokens=self.max_new_tokens, sampling=self.sampling,
                                   stop_ids=self.stop_ids, seed=self.calls)
        self.calls += 1
        return self.tokenizer.decode(list(self.engine.generate([request])[0].tokens))


# ------------------------------------------------------------------------------------- vision


@dataclasses.dataclass(frozen=True)
class VisionSampling:
    """Guidance scale and sampling of one vision stage (the image, or the video's later frames)."""

    cfg_scale: float = 5.0
    sampling: SamplingParams = SamplingParams(temperature=1.0)

    @classmethod
    def of(cls, stage: Any) -> VisionSampling:
        """The guidance and sampling a config's vision stage names (`generate.image`/`video`)."""
        return cls(stage.cfg_scale, SamplingParams.of(stage))


def vision_prompts(
    tokenizer: Any, prompt: str, *, video: bool, template: ChatTemplateConfig = ChatTemplateConfig()
) -> tuple[list[int], list[int]]:
    """Conditional and unconditional prompt ids (both end with `<vision>`)."""
    verb = "Generate a video of" if video else "Generate an image of"
    text = f"{template.system}{template.user_prefix}{verb} {prompt}{template.assistant_prefix}{template.answer_prefix}<vision>"
    conditional = tokenizer.encode(text, add_bos=True)
    unconditional = [tokenizer.bos_id, tokenizer.vision_start_id]
    return conditional, unconditional


def _guided_stage(
    engine: InferenceModel,
    conditional: list[tuple[list[int], list[bool]]],
    unconditional: list[tuple[list[int], list[bool]]],
    schedule: VisionSchedule,
    stage: VisionSampling,
    key: jax.Array,
    cache_size: int | None,
) -> np.ndarray:
    """Prefills conditional and unconditional prompts together and decodes vision tokens."""
    rows = conditional + unconditional
    guided = stage.cfg_scale != 1.0
    if not guided:  # scale 1 is exactly the conditional model: skip the unconditional half
        rows = conditional
    longest = max(len(ids) for ids, _ in rows)
    cache = engine.init_cache(len(rows), engine.round_cache_size(max(cache_size or 0, longest + schedule.total_tokens)))
    cache, hidden = engine.prefill(cache, [ids for ids, _ in rows], [flags for _, flags in rows],
                                   description="prefill vision prompt")
    _, _, tokens = engine.decode(
        cache, hidden, max_new_tokens=schedule.total_tokens, sampling=stage.sampling, key=key, head="vision",
        guidance_scale=stage.cfg_scale if guided else None, schedule=schedule,
    )
    return np.asarray(jax.device_get(tokens))


def generate_vision(
    engine: InferenceModel,
    tokenizer: Any,
    prompt: str | Sequence[str],
    *,
    num_frames: int = 1,
    image: VisionSampling = VisionSampling(cfg_scale=5.0, sampling=SamplingParams(temperature=1.0)),
    video: VisionSampling = VisionSampling(cfg_scale=5.0, sampling=SamplingParams(temperature=1.0, top_k=100)),
    seed: int = 0,
    template: ChatTemplateConfig = ChatTemplateConfig(),
    cache_size: int | None = None,
) -> np.ndarray:
    """VQ codes `[prompts, num_frames, tokens_per_frame]` for one or more text prompts.

    The model must have a vision head (`vision_vocab_size > 0`). Each stage's cache holds its
    prompts and tokens, or `cache_size` positions if that is more.
    """
    config = engine.config
    if not config.has_vision:
        raise ValueError("this model has no vision vocabulary (model.vision_vocab_size is 0): it cannot generate images")
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be at least 1")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    check_text_vocabulary(engine, tokenizer)
    tokens_per_frame, codebook = config.tokens_per_frame, config.codebook_size
    key_image, key_video = jax.random.split(jax.random.key(seed))

    def as_rows(pairs):
        return [(ids, [False] * len(ids)) for ids in pairs]

    image_prompts = [vision_prompts(tokenizer, text, video=False, template=template) for text in prompts]
    first_schedule = VisionSchedule(tokens_per_frame, codebook, 1, end_with_eov=num_frames == 1)
    first = _guided_stage(
        engine, as_rows([c for c, _ in image_prompts]), as_rows([u for _, u in image_prompts]),
        first_schedule, image, key_image, cache_size,
    )  # [B, tokens_per_frame + 1]
    frames = [first[:, :tokens_per_frame]]
    if num_frames > 1:
        video_prompts = [vision_prompts(tokenizer, text, video=True, template=template) for text in prompts]
        conditional, unconditional = [], []
        for (cond, uncond), frame in zip(video_prompts, first):
            frame = [int(token) for token in frame]
            conditional.append((cond + frame, [False] * len(cond) + [True] * len(frame)))
            unconditional.append((uncond + frame, [False] * len(uncond) + [True] * len(frame)))
        rest_schedule = VisionSchedule(tokens_per_frame, codebook, num_frames - 1, end_with_eov=True)
        rest = _guided_stage(engine, conditional, unconditional, rest_schedule, video, key_video, cache_size)
        rest = rest.reshape(len(prompts), num_frames - 1, tokens_per_frame + 1)[:, :, :tokens_per_frame]
        frames.append(rest.reshape(len(prompts), -1))
    codes = np.concatenate(frames, axis=1).reshape(len(prompts), num_frames, tokens_per_frame)
    return codes.astype(np.int32)


def codes_to_frames(vq_tokenizer: Any, codes_FN: np.ndarray) -> np.ndarray:
    """uint8 frames `[F, H, W, 3]` from codes `[F, tokens_per_frame]` (square code grids)."""
    codes = np.asarray(codes_FN)
    side = int(round(np.sqrt(codes.shape[-1])))
    if side * side != codes.shape[-1]:
        raise ValueError(f"{codes.shape[-1]} codes per frame do not form a square grid")
    if side != vq_tokenizer.codes_per_side:
        raise ValueError(
            f"frames of {side}x{side} codes do not match the VQ tokenizer's "
            f"{vq_tokenizer.codes_per_side}x{vq_tokenizer.codes_per_side}: use the tokenizer the model was trained with"
        )
    return vq_tokenizer.decode(codes.reshape(-1, side, side))


def write_frames(frames: np.ndarray, path: str | Path, fps: float = 4.0) -> list[Path]:
    """Writes frames to `.png` (one file per frame: `name.png`, or `name_000.png`, ...),
    `.gif` or `.mp4`/`.webm`; returns the files written."""
    from lwm.data.video import write_video

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        if len(frames) == 1:
            Image.fromarray(frames[0]).save(path)
            return [path]
        written = []
        for index, frame in enumerate(frames):
            target = path.with_name(f"{path.stem}_{index:03d}{path.suffix}")
            Image.fromarray(frame).save(target)
            written.append(target)
        return written
    if suffix in (".gif", ".mp4", ".webm", ".mkv", ".mov"):
        return [write_video(path, frames, fps=fps)]
    raise ValueError(f"output {path}: unsupported suffix {suffix!r}; use .png, .gif or .mp4")


def text_prompt_generator(
    engine: InferenceModel,
    tokenizer: Any,
    *,
    max_prompt_tokens: int,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
) -> Callable[[str], str]:
    """A `generate(prompt_text) -> answer_text` callable (what `lwm make-qa` asks an LM with).

    The prompt is encoded with a leading BOS; prompts longer than `max_prompt_tokens` keep
    their last tokens, and how many were cut is counted on the callable's `truncated` attribute.
    """
    generator = TextGenerator(
        engine, tokenizer, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
        sampling=SamplingParams(temperature=temperature), seed=seed,
    )

    def generate(prompt: str) -> str:
        ids = tokenizer.encode(prompt, add_bos=True)
        if len(ids) > max_prompt_tokens:
            generate.truncated += 1
            ids = ids[-max_prompt_tokens:]
        return generator(ids)

    generate.truncated = 0  # type: ignore[attr-defined]
    return generate
