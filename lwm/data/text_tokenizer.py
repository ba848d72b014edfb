"""The text tokenizer: a LLaMA-style SentencePiece model with `<vision>` and `</vision>` as real
special tokens (one id each, never split, no BOS inserted around them).

The default model is the project's own `lwm/assets/tokenizer.model` (trained by
`scripts/train_text_tokenizer.py`). A LLaMA `tokenizer.model` also loads: when a model lacks the
two vision symbols they are appended as user-defined pieces (ids `vocab_size`, `vocab_size+1`
of the original model), and LLaMA's dummy-prefix space is added only at the start of the text,
not after a special token (as Hugging Face's non-legacy LLaMA tokenizer does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from lwm.errors import LwmError

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "tokenizer.model"
VISION_START = "<vision>"
VISION_END = "</vision>"
_SPECIAL_SPLIT = re.compile(f"({re.escape(VISION_START)}|{re.escape(VISION_END)})")


class TokenizerFileError(LwmError, ValueError):
    """A tokenizer file is not a SentencePiece model, or lacks the vision pieces."""


class TextTokenizer:
    """Text to ids and back with SentencePiece.

    `encode(text)` never adds BOS/EOS unless asked; `<vision>`/`</vision>` in the text become
    `vision_start_id`/`vision_end_id`.
    """

    def __init__(self, model_file: str | Path | None = None):
        import sentencepiece as spm

        self.model_file = Path(model_file) if model_file is not None else DEFAULT_TOKENIZER
        if not self.model_file.is_file():
            raise FileNotFoundError(f"tokenizer model {self.model_file} does not exist")
        serialized, self._dummy_prefix = _prepare_model(self.model_file.read_bytes(), self.model_file)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(serialized)
        except Exception as error:  # sentencepiece raises OSError/RuntimeError on bad files
            raise TokenizerFileError(f"{self.model_file}: not a SentencePiece model ({error})") from error
        self.vision_start_id = self._sp.piece_to_id(VISION_START)
        self.vision_end_id = self._sp.piece_to_id(VISION_END)
        for piece, index in ((VISION_START, self.vision_start_id), (VISION_END, self.vision_end_id)):
            if index == self._sp.unk_id() or self._sp.id_to_piece(index) != piece:
                raise TokenizerFileError(
                    f"{self.model_file}: {piece} is not a piece of the model; retrain it with "
                    f"scripts/train_text_tokenizer.py (protobuf is needed to add it to other models)"
                )

    @property
    def vocab_size(self) -> int:
        """Number of text ids (specials included)."""
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id."""
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-sequence id."""
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        """Padding id; models without one (LLaMA) pad with EOS."""
        pad = self._sp.pad_id()
        return pad if pad >= 0 else self.eos_id

    @property
    def unk_id(self) -> int:
        """Unknown-piece id (unused with byte fallback, but reserved)."""
        return self._sp.unk_id()

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; BOS/EOS only when asked for."""
        ids: list[int] = [self.bos_id] if add_bos else []
        first = True
        for chunk in _SPECIAL_SPLIT.split(text):
            if not chunk:
                continue
            if chunk == VISION_START:
                ids.append(self.vision_start_id)
            elif chunk == VISION_END:
                ids.append(self.vision_end_id)
            else:
                prefix = " " if first and self._dummy_prefix else ""
                ids.extend(self._sp.encode(prefix + chunk))
            first = False
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; BOS/EOS/pad ids are dropped, the vision tokens come back as text."""
        ids = [int(index) for index in ids]
        size = self.vocab_size
        bad = [index for index in ids if not 0 <= index < size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the text vocabulary [0, {size})")
        controls = {self.bos_id, self.eos_id, self._sp.pad_id()}
        pieces: list[str] = []
        run: list[int] = []
        for index in ids:
            if index in controls:
                continue
            if index in (self.vision_start_id, self.vision_end_id):
                if run:
                    pieces.append(self._sp.decode(run))
                    run = []
                pieces.append(VISION_START if index == self.vision_start_id else VISION_END)
            else:
                run.append(index)
        if run:
            pieces.append(self._sp.decode(run))
        text = "".join(pieces)
        if self._dummy_prefix and text.startswith(" ") and ids and \
                self._sp.id_to_piece(ids[0]).startswith("\u2581"):
            text = text[1:]
        return text

    def id_to_piece(self, index: int) -> str:
        """The SentencePiece piece of one id."""
        return self._sp.id_to_piece(int(index))

    def __len__(self) -> int:
        return self.vocab_size


def _prepare_model(data: bytes, path: Path) -> tuple[bytes, bool]:
    """Returns the model with the vision symbols present and the dummy prefix turned off (it is
    re-added by `encode` at the start of the text only), and whether the model had the prefix.

    Without the protobuf package the model is used unchanged.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as model_pb2
    except ImportError:
        return data, False
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as error:
        raise TokenizerFileError(f"{path}: not a SentencePiece model ({error})") from error
    existing = {piece.piece for piece in proto.pieces}
    for symbol in (VISION_START, VISION_END):
        if symbol not in existing:
            proto.pieces.append(model_pb2.ModelProto.SentencePiece(
                piece=symbol, score=0.0, type=model_pb2.ModelProto.SentencePiece.USER_DEFINED))
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    proto.normalizer_spec.add_dummy_prefix = False
    return proto.SerializeToString(), dummy_prefix


def load_text_tokenizer(path: str | Path | None = None) -> TextTokenizer:
    """The tokenizer at `path` (a SentencePiece `.model` file), or the project's default."""
    return TextTokenizer(path)
