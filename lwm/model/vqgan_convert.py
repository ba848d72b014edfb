"""Compatibility re-exports: VQGAN weight loading now lives by purpose in

- `lwm.model.formats.safe_files` (reading array files without running code),
- `lwm.model.formats.diffusers_vq` (diffusers `VQModel` folders),
- `lwm.model.formats.lwm_vqgan` (LWM's released `vqgan` pickle),
- `lwm.model.vq_tokenizer` (the runtime tokenizer and `lwm train-vq` checkpoints).

New code should import from those modules.
"""

from __future__ import annotations

from lwm.model.formats.diffusers_vq import (
    diffusers_config_to_vq,
    diffusers_state_to_ours,
    load_diffusers_vqgan,
)
from lwm.model.formats.lwm_vqgan import load_lwm_vqgan, lwm_tree_to_ours, save_lwm_vqgan
from lwm.model.formats.safe_files import (
    SafeUnpickler,
    UnsafeFileError,
    WeightMappingError,
    flatten_tree,
    load_param_file,
)
from lwm.model.formats.vq_assign import assign_weights
from lwm.model.formats.vq_assign import iter_variables as _iter_variables
from lwm.model.vq_tokenizer import (
    CHECKPOINT_CONFIG,
    CHECKPOINT_MODEL,
    VQ,
    VQTokenizer,
    load_vq,
    load_vq_checkpoint,
    load_vq_tokenizer,
    save_vq_checkpoint,
)

__all__ = [
    "CHECKPOINT_CONFIG", "CHECKPOINT_MODEL", "SafeUnpickler", "UnsafeFileError", "VQ", "VQTokenizer",
    "WeightMappingError", "_iter_variables", "assign_weights", "diffusers_config_to_vq",
    "diffusers_state_to_ours", "flatten_tree", "load_diffusers_vqgan", "load_lwm_vqgan", "load_param_file",
    "load_vq", "load_vq_checkpoint", "load_vq_tokenizer", "lwm_tree_to_ours", "save_lwm_vqgan",
    "save_vq_checkpoint",
]
