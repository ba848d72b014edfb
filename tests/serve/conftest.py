"""A server on 127.0.0.1 (free port) over the small model, shared by the tests of this folder
and stopped at the end."""

import pytest
from serve_helpers import CHUNK, make_model, make_vq, serve_config


@pytest.fixture(scope="session")
def small_model():
    return make_model()


@pytest.fixture(scope="session")
def tokenizer():
    from lwm.data.text_tokenizer import TextTokenizer

    return TextTokenizer()


@pytest.fixture(scope="session")
def vq(tmp_path_factory):
    return make_vq(tmp_path_factory.mktemp("vq"))


@pytest.fixture(scope="session")
def inference_model(small_model):
    from lwm.infer.cache import InferenceModel

    return InferenceModel(small_model, None, prefill_chunk_size=CHUNK, key_chunk_size=CHUNK, progress=False)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def server(inference_model, tokenizer, vq, media_root):
    """The running server's `ServerThread` (its `.url` is the OpenAI base URL)."""
    from lwm.serve.server import ServerThread, build_state

    state = build_state(serve_config(media_root=str(media_root)), inference_model=inference_model,
                        tokenizer=tokenizer, vq=vq)
    thread = ServerThread(state)
    thread.start()
    yield thread
    thread.stop()
