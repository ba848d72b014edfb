"""User-facing errors keep their message and fields across a pickle (data worker processes)."""

import pickle

import pytest

from lwm.config import ConfigError
from lwm.data.text_tokenizer import TextTokenizer, TokenizerFileError
from lwm.data.video import VideoReadError
from lwm.errors import LwmError


def test_errors_survive_a_pickle():
    for error in (VideoReadError("clips/a.mp4", "no video stream"), ConfigError("data.seq_len=1 is too short")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and isinstance(copy, LwmError)
    copy = pickle.loads(pickle.dumps(VideoReadError("clips/a.mp4", "no video stream")))
    assert (str(copy.path), copy.reason) == ("clips/a.mp4", "no video stream")


def test_a_garbage_tokenizer_file_is_a_user_error(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"this is not a protobuf \x00\xff\x13")
    with pytest.raises(TokenizerFileError, match="tokenizer.model: not a SentencePiece model"):
        TextTokenizer(path)
