"""LWM's token layout and prompts, exactly as LWM's code builds them (repository
LargeWorldModel/LWM: `lwm/vision_chat.py`, `lwm/vision_generation.py`, `lwm/data.py`), for
running LWM's released models.

- Vision tokens: 256 VQ codes per frame, each frame followed by `<eof>` (8192) and the last by
  `<eov>` (8193) in LWM's training data (`training_vision_tokens`). LWM's `vision_chat` encodes
  one frame per VQGAN call and appends the end token inside that loop, so at inference *every*
  frame ends with 8193 (`chat_vision_tokens`): that is what LWM's models were queried with.
- Frames: an image, or `max_n_frames` frames of a video at `np.linspace(0, n - 1, max_n_frames,
  dtype=int)` (all frames when the video is shorter); each resized so its short side is 256
  (the long side `int(256 * long / short)`, PIL's default bicubic filter), centre-cropped by
  PIL's `crop` with float box coordinates (rounded half to even), scaled to [-1, 1].
- Text: LWM's LLaMA tokenizer (Hugging Face `LlamaTokenizer` over LLaMA's `tokenizer.model`)
  adds BOS (1) at the start of *every* `encode` call and recognises `<s>` in the text as BOS, so
  the vision-chat prompt is the concatenation of five encodings:
  `encode("<s>You are a helpful assistant. USER: {question}\\n")` (it starts 1, 1),
  `encode("<vision>")`, the vision tokens, `encode("</vision>")`, `encode(" ASSISTANT:")`.
  `<vision>` and `</vision>` are plain text to LLaMA's tokenizer. Text pieces follow the
  legacy Hugging Face behaviour (the tokenizers of LWM's time): every text segment gets
  SentencePiece's dummy-prefix space, also after `<s>`.
- Batches are left-padded to a multiple of `max(query_chunk, key_chunk) * sp`
  (`max_n_frames * 257 + 256` rounded up); positions are `cumsum(attention_mask) - 1`, so a
  left-padded prompt computes exactly as the unpadded one.
- Generation (`vision_generation`): prompt `<s>You are a helpful assistant. USER: Generate an
  image of {prompt} ASSISTANT: <vision>` (video: `Generate a video of`), unconditional prompt
  `<s><vision>`, both left-padded to 128 and batched together for classifier-free guidance;
  every 257th generated token is forced to `<eof>` (8192); frames are decoded as
  `uint8((pixels + 1) * 127.5)` (truncated) and written at 4 fps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lwm.errors import LwmError

EOF_TOKEN = 8192  # <eof>: ends a frame
EOV_TOKEN = 8193  # <eov>: ends the vision span
TOKENS_PER_FRAME = 257  # 256 codes + one end token
FRAME_SIZE = 256
MIN_BUFFER = 256  # vision_chat's room for text around the frames
SYSTEM = "You are a helpful assistant."
GENERATION_PROMPT_LENGTH = 128
UNCONDITIONAL_PROMPT = "<s><vision>"
IMAGE_SUFFIXES = (".png", ".jpg")  # what vision_chat reads as an image


class LwmTokenizerError(LwmError, ValueError):
    """LLaMA's tokenizer.model is missing or unreadable."""


class LwmTokenizer:
    """LWM's text tokenizer: LLaMA's SentencePiece model as Hugging Face's legacy
    `LlamaTokenizer` applies it (`encode` adds BOS; `<s>`/`</s>` in the text are BOS/EOS)."""

    _SPECIAL = re.compile(r"(<s>|</s>)")

    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise LwmTokenizerError(
                f"{self.model_file}: no such file; LWM's models read LLaMA's tokenizer.model "
                f"(pass it as --load.tokenizer PATH/tokenizer.model)"
            )
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.model_file))
        except Exception as error:  # sentencepiece raises OSError/RuntimeError on bad files
            raise LwmTokenizerError(f"{self.model_file}: not a SentencePiece model ({error})") from None

    @property
    def vocab_size(self) -> int:
        """Number of text ids (32000 for LLaMA)."""
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        """BOS (1 for LLaMA)."""
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """EOS (2 for LLaMA)."""
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        """LLaMA has no pad id; LWM pads with 0 under a zero attention mask."""
        return 0

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of `text`; `<s>`/`</s>` in the text become BOS/EOS. BOS/EOS are added only when
        asked (as the project's `TextTokenizer` does); `hf_encode` is LWM's `tokenizer.encode`."""
        ids = [self.bos_id] if add_bos else []
        for segment in self._SPECIAL.split(text):
            if segment == "<s>":
                ids.append(self.bos_id)
            elif segment == "</s>":
                ids.append(self.eos_id)
            elif segment:
                ids.extend(self._sp.encode(segment))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def hf_encode(self, text: str) -> list[int]:
        """`LlamaTokenizer.encode(text)` as LWM calls it: BOS, then the text's ids."""
        return self.encode(text, add_bos=True)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` with BOS/EOS dropped (`skip_special_tokens=True`)."""
        keep = [int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id)]
        return self._sp.decode(keep)


# ---------------------------------------------------------------------------------------------
# Vision tokens

def training_vision_tokens(codes_FN: np.ndarray) -> list[int]:
    """LWM's training layout: each frame's codes, `<eof>` between frames, `<eov>` at the end."""
    codes = np.asarray(codes_FN).reshape(len(codes_FN), -1)
    tokens: list[int] = []
    for index, frame in enumerate(codes):
        tokens.extend(int(code) for code in frame)
        tokens.append(EOV_TOKEN if index == len(codes) - 1 else EOF_TOKEN)
    return tokens


def chat_vision_tokens(codes_FN: np.ndarray) -> list[int]:
    """What LWM's `vision_chat` feeds: each frame's codes followed by `<eov>` (8193), every frame
    (it encodes frames one per VQGAN call and ends each call's last frame with 8193)."""
    codes = np.asarray(codes_FN).reshape(len(codes_FN), -1)
    tokens: list[int] = []
    for frame in codes:
        tokens.extend(int(code) for code in frame)
        tokens.append(EOV_TOKEN)
    return tokens


def chat_prompt(tokenizer: LwmTokenizer, question: str, codes_FN: np.ndarray | None = None
                ) -> tuple[list[int], list[bool]]:
    """Ids and vision flags of LWM's vision-chat prompt for one question (and optional frames).

    With frames: `vision_chat.construct_input`'s five encodings. Without: the same prompt with
    no vision span (`hf_encode(text_1) + hf_encode(" ASSISTANT:")`).
    """
    ids: list[int] = []
    flags: list[bool] = []

    def add(tokens: Sequence[int], vision: bool) -> None:
        ids.extend(tokens)
        flags.extend([vision] * len(tokens))

    add(tokenizer.hf_encode(f"<s>{SYSTEM} USER: {question}\n"), False)
    if codes_FN is not None:
        add(tokenizer.hf_encode("<vision>"), False)
        add(chat_vision_tokens(codes_FN), True)
        add(tokenizer.hf_encode("</vision>"), False)
    add(tokenizer.hf_encode(" ASSISTANT:"), False)
    return ids, flags


def followup_prompt(tokenizer: LwmTokenizer, question: str) -> tuple[list[int], list[bool]]:
    """A later turn of a conversation (LWM's code has none; this continues its format:
    ` USER: {question} ASSISTANT:` without BOS)."""
    ids = tokenizer.encode(f" USER: {question}", add_bos=False) + tokenizer.encode(" ASSISTANT:", add_bos=False)
    return ids, [False] * len(ids)


def padded_length(num_frames: int, block_size: int) -> int:
    """`vision_chat`'s input length: `num_frames * 257 + 256` rounded up to `block_size`
    (`max(scan_query_chunk_size, scan_key_chunk_size) * sp`)."""
    return int(math.ceil((num_frames * TOKENS_PER_FRAME + MIN_BUFFER) / block_size) * block_size)


def left_pad(prompts: Sequence[tuple[Sequence[int], Sequence[bool]]], length: int
             ) -> dict[str, np.ndarray]:
    """LWM's batch: `input_ids`, `vision_masks`, `attention_mask` `[B, length]`, each prompt at
    the right end; `position_ids` as LWM derives them (`cumsum(attention_mask) - 1`, clipped)."""
    batch = len(prompts)
    input_ids = np.zeros((batch, length), np.int32)
    vision = np.zeros((batch, length), bool)
    mask = np.zeros((batch, length), np.int32)
    for row, (ids, flags) in enumerate(prompts):
        if len(ids) >= length:
            raise ValueError(f"a prompt of {len(ids)} tokens does not fit LWM's input length {length}")
        input_ids[row, -len(ids):] = ids
        vision[row, -len(ids):] = flags
        mask[row, -len(ids):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)
    return {"input_ids": input_ids, "vision_masks": vision, "attention_mask": mask, "position_ids": positions}


def generation_prompts(prompt: str, video: bool = False) -> tuple[str, str]:
    """The conditional and unconditional prompt texts of `vision_generation`."""
    kind = "a video" if video else "an image"
    return f"<s>{SYSTEM} USER: Generate {kind} of {prompt} ASSISTANT: <vision>", UNCONDITIONAL_PROMPT


def generation_prompt_ids(tokenizer: LwmTokenizer, prompt: str, video: bool = False) -> tuple[list[int], list[int]]:
    """Ids of `vision_generation`'s conditional and unconditional prompts (each `hf_encode`d;
    LWM left-pads both to 128 tokens, which does not change what they compute)."""
    conditional, unconditional = generation_prompts(prompt, video)
    return tokenizer.hf_encode(conditional), tokenizer.hf_encode(unconditional)


def forced_end_of_frame(step: int) -> bool:
    """Whether generated token number `step` (1-based) is forced to `<eof>` (every 257th)."""
    return step % TOKENS_PER_FRAME == 0


def pixels_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """LWM's frame output: `((pixels + 1) * 127.5).astype(uint8)` (truncation, pixels clipped)."""
    return ((np.asarray(pixels, np.float32) + 1) * 127.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Frames

def frame_indices(duration: int, max_n_frames: int) -> list[int]:
    """`vision_chat`'s frame choice: every frame, or `np.linspace(..., dtype=int)` (truncated)."""
    if duration <= max_n_frames:
        return list(range(duration))
    return np.linspace(0, duration - 1, max_n_frames, dtype=int).tolist()


def process_frame(frame_HWC: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """`vision_chat._process_frame`: resize the short side to `size`, centre-crop `size` x
    `size`, scale to float32 in [-1, 1]."""
    from PIL import Image

    image = Image.fromarray(np.asarray(frame_HWC, np.uint8)).convert("RGB")
    width, height = image.size
    if width < height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    image = image.resize((new_width, new_height))
    box = ((new_width - size) / 2, (new_height - size) / 2, (new_width + size) / 2, (new_height + size) / 2)
    image = image.crop(box)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1


def read_vision(path: str | Path, max_n_frames: int = 8, size: int = FRAME_SIZE) -> np.ndarray:
    """float32 frames `[F, size, size, 3]` in [-1, 1], chosen and preprocessed as LWM does: an
    image (`.png`/`.jpg`) or a video (decoded with PyAV; LWM used decord)."""
    from PIL import Image

    from lwm.data.video import VideoReadError

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "no such file")
    if path.name.endswith(IMAGE_SUFFIXES):
        return process_frame(np.asarray(Image.open(path).convert("RGB")), size)[None]
    duration = _count_frames(path)
    wanted = frame_indices(duration, max_n_frames)
    frames = _decode_frames(path, set(wanted))
    if len(frames) != len(set(wanted)):
        raise VideoReadError(path, f"decoded {len(frames)} of the {len(wanted)} frames wanted")
    return np.stack([process_frame(frames[index], size) for index in wanted])


def _count_frames(path: Path) -> int:
    import av

    from lwm.data.video import VideoReadError

    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except Exception as error:  # PyAV raises many types for unreadable files
        raise VideoReadError(path, f"cannot be decoded ({error})") from None


def _decode_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    import av

    frames: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if len(frames) == len(wanted):
                break
    return frames


def encode_vision(vq_tokenizer, path: str | Path, max_n_frames: int = 8) -> np.ndarray:
    """VQ codes `[F, 256]` of LWM's frames of `path`, one frame per VQGAN call as LWM does
    (codes do not depend on the batch, so they are encoded together)."""
    pixels = read_vision(path, max_n_frames, FRAME_SIZE)
    codes = vq_tokenizer.encode(pixels)
    return codes.reshape(len(codes), -1).astype(np.int32)
