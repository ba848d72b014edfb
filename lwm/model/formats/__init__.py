"""Readers, writers and parameter mappings for weight files made by other code bases.

- `lwm_streaming`: tux/EasyLM's streaming msgpack checkpoints (LWM's `params` files);
- `lwm_llama`: LWM's LLaMA / vision-language parameter names and layouts <-> `LlamaModel`;
- `lwm_vqgan`: LWM's `vqgan` pickle (flax auto names) <-> `lwm.model.vqgan.VQGAN`;
- `diffusers_vq`: diffusers `VQModel` folders <-> `VQGAN`;
- `safe_files`: reading array files (pickles, msgpack) without executing code.
"""
