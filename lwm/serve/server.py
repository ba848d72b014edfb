"""Building and running the server: model, engine and app from a `ServeRunConfig`, under uvicorn.

`serve(config)` blocks (the `lwm serve` command); `ServerThread` runs the same server in a
background thread on a free port of 127.0.0.1 (tests, benchmarks, notebooks) and stops it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from lwm.config.serve import ServeRunConfig
from lwm.data.text_tokenizer import load_text_tokenizer
from lwm.infer.cache import load_inference_model
from lwm.infer.engine import Engine
from lwm.infer.generate import check_text_vocabulary
from lwm.model.vqgan_convert import load_vq_tokenizer
from lwm.serve.app import ServeState, create_app
from lwm.serve.media import MediaReader
from lwm.serve.protocol import TokenText


def build_state(config: ServeRunConfig, *, inference_model: Any = None, tokenizer: Any = None,
                vq: Any = None) -> ServeState:
    """Loads the model (unless `inference_model` is given), the tokenizers and the engine."""
    if inference_model is None:
        inference_model = load_inference_model(
            config.load.model, mesh_config=config.mesh, dtype=config.load.dtype, cache_dtype=config.cache.dtype,
            prefill_chunk_size=config.cache.prefill_chunk, key_chunk_size=config.cache.key_chunk,
        )
        inference_model.progress = False
    tokenizer = tokenizer if tokenizer is not None else load_text_tokenizer(config.load.tokenizer or None)
    check_text_vocabulary(inference_model, tokenizer)
    if vq is None and config.load.vq:
        vq = load_vq_tokenizer(config.load.vq, resolution=config.load.vq_resolution)
    section = config.serve
    engine = Engine(inference_model, slots=section.slots, slot_size=config.cache.max_len,
                    queue_size=section.queue_size, prefill_chunk=config.cache.prefill_chunk,
                    detokenize=TokenText(tokenizer).continuation)
    api_key = section.api_key or (os.environ.get(section.api_key_env, "") if section.api_key_env else "")
    media = MediaReader(vq, section.media_root, section.video_frames, section.max_frames)
    return ServeState(engine, tokenizer, media, config.chat, model_name=section.model_name, api_key=api_key,
                      max_body_bytes=section.max_body_bytes, default_max_tokens=section.default_max_tokens)


def serve(config: ServeRunConfig) -> None:
    """Runs the server until interrupted."""
    import uvicorn

    state = build_state(config)
    print(f"serve: {config.load.model} as {config.serve.model_name!r}, {len(state.engine.slots)} slots of "
          f"{state.engine.slot_size} tokens over sp={state.engine.model.sequence_parallel} device(s); "
          f"http://{config.serve.host}:{config.serve.port}/v1" + (" (API key required)" if state.api_key else ""),
          flush=True)
    uvicorn.run(create_app(state), host=config.serve.host, port=config.serve.port,
                log_level=config.serve.log_level, timeout_graceful_shutdown=5)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ServerThread:
    """The server on `host:port` in a daemon thread; `with ServerThread(state) as url: ...`.

    `url` is the base URL clients use (`http://127.0.0.1:PORT/v1`). Leaving the block (or
    `stop()`) shuts uvicorn down and stops the engine.
    """

    def __init__(self, state: ServeState, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.state = state
        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(create_app(state), host=self.host, port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="lwm-serve", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the OpenAI API."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> str:
        """Starts and waits until the server accepts connections; returns `url`."""
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Shuts the server and its engine down."""
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
