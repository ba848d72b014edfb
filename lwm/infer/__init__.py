"""Inference: KV cache with chunked prefill and sharded ring decoding, sampling, text and
vision generation, chat and video question answering.

Modules: `cache` (`InferenceModel`, `KVCache`, `load_inference_model`), `sampling`
(`SamplingParams`, filters, `VisionSchedule`), `generate` (`generate_text`, `TextGenerator`,
`generate_vision`, `codes_to_frames`, `write_frames`), `video_qa` (`ChatSession`,
`encode_video`, `answer_video_question`). Names below are imported on first use, so
`import lwm.infer` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "InferenceModel": "lwm.infer.cache",
    "KVCache": "lwm.infer.cache",
    "load_inference_model": "lwm.infer.cache",
    "SamplingParams": "lwm.infer.sampling",
    "VisionSchedule": "lwm.infer.sampling",
    "sample_tokens": "lwm.infer.sampling",
    "Generation": "lwm.infer.generate",
    "TextGenerator": "lwm.infer.generate",
    "VisionSampling": "lwm.infer.generate",
    "codes_to_frames": "lwm.infer.generate",
    "generate_text": "lwm.infer.generate",
    "generate_vision": "lwm.infer.generate",
    "write_frames": "lwm.infer.generate",
    "ChatSession": "lwm.infer.video_qa",
    "answer_video_question": "lwm.infer.video_qa",
    "encode_video": "lwm.infer.video_qa",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lwm.infer' has no attribute {name!r}")
