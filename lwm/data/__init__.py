"""Data layer: token store, input formats, chat/QA data, masked sequence packing, batches.

Modules: `store` (tensorstore token store), `records` (JSONL formats, bad-record reports,
`tokenize_to_store`), `chat` (chat template), `qa` (long-context QA, `lwm make-qa`), `packing`
(masked sequence packing), `loader` (`make_batch_iterator`). The names below are imported on
first use, so `import lwm.data` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TokenExample": "lwm.data.store",
    "TokenStore": "lwm.data.store",
    "TokenStoreWriter": "lwm.data.store",
    "StoreError": "lwm.data.store",
    "BadRecordError": "lwm.data.records",
    "BadRecordReport": "lwm.data.records",
    "ExampleEncoder": "lwm.data.records",
    "TextTokenizer": "lwm.data.text_tokenizer",
    "TokenizerLike": "lwm.data.tokens",
    "tokenize_to_store": "lwm.data.records",
    "encode_conversation": "lwm.data.chat",
    "chat_prompt": "lwm.data.chat",
    "make_qa": "lwm.data.qa",
    "PackingStats": "lwm.data.packing",
    "PackIterDataset": "lwm.data.packing",
    "pack_examples": "lwm.data.packing",
    "BatchIterator": "lwm.data.loader",
    "make_batch_iterator": "lwm.data.loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lwm.data' has no attribute {name!r}")
