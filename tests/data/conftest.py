"""Shared helpers of the data tests: a byte-level tokenizer and small configs."""

from __future__ import annotations

import pytest

from lwm.config.data import DataConfig
from lwm.config.vision import VisionVocab


class ByteTokenizer:
    """Ids 0-4 are special (pad, bos, eos, <vision>, </vision>); byte b is id b + 5."""

    name = "bytes"
    pad_id, bos_id, eos_id, vision_start_id, vision_end_id = 0, 1, 2, 3, 4
    vocab_size = 261
    SPECIALS = {1: "<s>", 2: "</s>", 3: "<vision>", 4: "</vision>"}

    def encode(self, text: str) -> list[int]:
        return [byte + 5 for byte in text.encode("utf-8")]

    def decode(self, ids, is_vision=None) -> str:
        """Text ids back to a string; vision ids render as `<v{id}>`."""
        out = []
        for index, token in enumerate(ids):
            token = int(token)
            if is_vision is not None and is_vision[index]:
                out.append(f"<v{token}>")
            elif token in self.SPECIALS:
                out.append(self.SPECIALS[token])
            else:
                out.append(bytes([token - 5]).decode("latin-1"))
        return "".join(out)


@pytest.fixture
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def small_vision_config() -> DataConfig:
    """Vision+text config with 4 codes per frame and a 16-code codebook (eof 16, eov 17)."""
    return DataConfig(format="vision_text", fields="[vision],caption",
                      vision=VisionVocab(codebook_size=16, tokens_per_frame=4), seq_len=32)


from video_helpers import square_videos  # noqa: E402,F401  (a fixture of the video tests)
