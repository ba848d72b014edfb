"""Memory planning: what a config needs per device, before any device is touched.

Parameter shapes come from `jax.eval_shape` of the real model and their per-device shards from
the same logical-axis rules training uses, so sharding is counted exactly. Activations follow
these formulas, with `T = (batch / (dp·fsdp)) · (seq_len / sp)` tokens per device, width `E`,
MLP width `F`, `K·D` the key/value width, `b` the compute dtype's bytes, and per layer:

- remat `none`: every intermediate is kept for the backward pass:
  `T·b·(8·E + 2·K·D + 4·F)` (layer input, two norms, q, k, v, attention output and
  projection, gate, up, their product, MLP output);
- remat `save_dots`: only matmul outputs: `T·b·(3·E + 2·K·D + 2·F)`;
- remat `full`: only the layer input `T·b·E`, plus one layer's full set during recomputation.

Attention adds its working set on top of one layer: `dense` holds the score matrix
`B·H·S_q·S_k·4` bytes per device, `blockwise`/`ring` one chunk pair `B·H·chunk_q·chunk_k·4`.
The output heads hold float32 logits and their gradient: `2·T·V·4`. Training state is
parameters, gradients (parameter dtype) and AdamW's two moments (float32). Fully sharded
weights are gathered before use: one layer's weights plus the embedding tables and heads, whole,
in the compute dtype.
The KV cache for a context of `C` tokens is `2·L·K·D·C·b / sp` per device per sequence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from flax import nnx

from lwm.config import MeshConfig, TrainRunConfig
from lwm.mesh import logical_axes_of, resolve_axis_sizes, shard_shape
from lwm.model.params_io import abstract_model
from lwm.train.setup import train_setup

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device for each part of a training step (and an inference KV cache)."""

    parameters: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    attention_bytes: int
    logits_bytes: int
    gathered_bytes: int
    kv_cache_bytes: int
    kv_cache_context: int
    mesh: dict[str, int]

    @property
    def training_bytes(self) -> int:
        """Everything a training step holds at its peak."""
        return (self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes
                + self.activation_bytes + self.attention_bytes + self.logits_bytes
                + self.gathered_bytes)

    def report(self, device_memory_gib: float = 0.0) -> str:
        """A human-readable table; says whether it fits `device_memory_gib` when given."""
        rows = [
            ("parameters (count)", f"{self.parameters:,}"),
            ("parameters", _gib(self.parameter_bytes)),
            ("gradients", _gib(self.gradient_bytes)),
            ("optimizer state", _gib(self.optimizer_bytes)),
            ("activations", _gib(self.activation_bytes)),
            ("attention working set", _gib(self.attention_bytes)),
            ("logits", _gib(self.logits_bytes)),
            ("gathered weights", _gib(self.gathered_bytes)),
            ("training total", _gib(self.training_bytes)),
            (f"KV cache at {self.kv_cache_context:,} tokens", _gib(self.kv_cache_bytes)),
        ]
        return _table("per device", "training", self.mesh, rows, self.training_bytes, device_memory_gib)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.3f} GiB"


def _table(title: str, what: str, mesh: dict[str, int], rows: list[tuple[str, str]], total: int,
           device_memory_gib: float) -> str:
    """The plan as lines of `name value`, and whether `total` fits `device_memory_gib`."""
    axes = " × ".join(f"{name}={size}" for name, size in mesh.items())
    lines = [f"{title}, mesh {axes}:"] + [f"  {name:<34} {value:>14}" for name, value in rows]
    if device_memory_gib:
        limit = device_memory_gib * GIB
        verdict = "fits" if total <= limit else "does NOT fit"
        lines.append(f"{what} {verdict} in {device_memory_gib:g} GiB per device ({total / limit:.0%} of it)")
    return "\n".join(lines)


def _parameters(model_config: Any) -> list[Any]:
    """The model's parameter variables, abstract (shapes, dtypes and logical axes only)."""
    model = abstract_model(model_config)
    return jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))


def plan_memory(config: TrainRunConfig, device_count: int, kv_cache_context: int = 0) -> MemoryPlan:
    """The per-device memory plan of `config` on `device_count` devices (nothing is allocated)."""
    model_config = config.model
    mesh_sizes = resolve_axis_sizes(config.mesh, device_count)
    variables = _parameters(model_config)
    param_itemsize = np.dtype(model_config.param_dtype).itemsize if model_config.param_dtype != "bfloat16" else 2
    compute_itemsize = 4 if model_config.dtype == "float32" else 2
    count = sum(int(np.prod(v.shape)) for v in variables)
    shard = sum(math.prod(shard_shape(tuple(v.shape), logical_axes_of(v), mesh_sizes)) for v in variables)

    data = config.data
    batch_shards = mesh_sizes["dp"] * mesh_sizes["fsdp"]
    local_batch = max(data.batch_size // max(batch_shards, 1), 1)
    local_seq = data.seq_len // mesh_sizes["sp"]
    tokens = local_batch * local_seq // max(config.train.grad_accum_steps, 1)
    E, F, L = model_config.hidden_size, model_config.intermediate_size, model_config.num_layers
    kv_width = model_config.kv_heads * model_config.head_dim
    per_layer = {
        "none": 8 * E + 2 * kv_width + 4 * F,
        "save_dots": 3 * E + 2 * kv_width + 2 * F,
        "full": E,
    }[model_config.remat]
    activations = tokens * compute_itemsize * (L * per_layer)
    if model_config.remat == "full":
        activations += tokens * compute_itemsize * (8 * E + 2 * kv_width + 4 * F)
    heads_local = model_config.num_heads // mesh_sizes["tp"] if model_config.num_heads % mesh_sizes["tp"] == 0 else model_config.num_heads
    micro_batch = max(local_batch // max(config.train.grad_accum_steps, 1), 1)
    if model_config.attention == "dense":
        attention = micro_batch * heads_local * data.seq_len * data.seq_len * 4
    else:
        chunk_q = min(model_config.query_chunk_size, local_seq)
        chunk_k = min(model_config.key_chunk_size, local_seq)
        attention = micro_batch * heads_local * chunk_q * chunk_k * 4
    vocab = model_config.vocab_size + (model_config.vision_vocab_size if model_config.has_vision else 0)
    vocab_local = vocab // mesh_sizes["tp"] if vocab % mesh_sizes["tp"] == 0 else vocab
    logits = 2 * tokens * vocab_local * 4
    layer_weights = 2 * E * model_config.num_heads * model_config.head_dim + 2 * E * kv_width + 3 * E * F
    gathered = (layer_weights + E * vocab * (1 if model_config.tie_embeddings else 2)) * compute_itemsize
    kv_cache = 2 * L * kv_width * kv_cache_context * compute_itemsize // mesh_sizes["sp"]
    return MemoryPlan(
        parameters=count,
        parameter_bytes=shard * param_itemsize,
        gradient_bytes=shard * param_itemsize,
        optimizer_bytes=shard * 4 * 2,
        activation_bytes=activations,
        attention_bytes=attention,
        logits_bytes=logits,
        gathered_bytes=gathered,
        kv_cache_bytes=kv_cache,
        kv_cache_context=kv_cache_context,
        mesh=mesh_sizes,
    )


def measured_train_step_bytes(config: TrainRunConfig) -> dict[str, Any]:
    """Compiled memory of one sharded train step on this machine's devices (per device).

    Uses XLA's memory analysis of the real jitted step: arguments (state and batch), outputs
    aliased by donation, and temporaries.
    """
    compiled = train_setup(config).compile()
    analysis = compiled.memory_analysis()
    return {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "alias_bytes": int(analysis.alias_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "peak_bytes": int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                          - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes),
    }


# ---------------------------------------------------------------------------------------------
# Inference (a KV-cache engine holding one long context)

@dataclasses.dataclass(frozen=True)
class InferencePlan:
    """Bytes per device to hold a model and a KV cache of `context` positions and prefill it.

    - parameters: each weight's shard under the mesh rules, in the parameter dtype;
    - KV cache: `2·L·K·D·C·b·batch / (sp·tp)` (keys and values of every layer; positions over
      sp, key/value heads over tp);
    - gathered weights: one layer's weights plus the embedding tables and heads, whole, in the
      compute dtype (fully sharded weights are gathered before use);
    - prefill working set: one prefill chunk of `chunk` tokens per sp shard through one layer
      (`chunk·b·(8·E + 2·K·D + 4·F)`) plus one attention block `H/tp·chunk·key_chunk·4`.
    """

    parameters: int
    parameter_bytes: int
    kv_cache_bytes: int
    gathered_bytes: int
    prefill_bytes: int
    context: int
    mesh: dict[str, int]

    @property
    def total_bytes(self) -> int:
        """Everything held at the peak of a prefill step."""
        return self.parameter_bytes + self.kv_cache_bytes + self.gathered_bytes + self.prefill_bytes

    def report(self, device_memory_gib: float = 0.0) -> str:
        """A human-readable table; says whether it fits `device_memory_gib` when given."""
        rows = [
            ("parameters (count)", f"{self.parameters:,}"),
            ("parameters", _gib(self.parameter_bytes)),
            (f"KV cache at {self.context:,} tokens", _gib(self.kv_cache_bytes)),
            ("gathered weights", _gib(self.gathered_bytes)),
            ("prefill working set", _gib(self.prefill_bytes)),
            ("inference total", _gib(self.total_bytes)),
        ]
        return _table("inference per device", "inference", self.mesh, rows, self.total_bytes, device_memory_gib)


def _itemsize(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "float16") else 4


def plan_inference(model_config: Any, device_count: int, context: int, *, mesh: Any = None,
                   cache_dtype: str = "bfloat16", compute_dtype: str | None = None, batch: int = 1,
                   prefill_chunk: int = 1024, key_chunk: int = 1024) -> InferencePlan:
    """The per-device memory of serving `model_config` with a `context`-token KV cache on
    `device_count` devices; the mesh defaults to every device on sp (as `lwm chat` splits the
    cache). Shapes come from `jax.eval_shape`; nothing is allocated."""
    mesh_sizes = resolve_axis_sizes(mesh or MeshConfig(dp=1, fsdp=1, tp=1, sp=-1), device_count)
    variables = _parameters(model_config)
    count = sum(int(np.prod(v.shape)) for v in variables)
    shard = sum(math.prod(shard_shape(tuple(v.shape), logical_axes_of(v), mesh_sizes)) for v in variables)
    compute = _itemsize(compute_dtype or model_config.dtype)
    E, F, L = model_config.hidden_size, model_config.intermediate_size, model_config.num_layers
    K, D, H = model_config.kv_heads, model_config.head_dim, model_config.num_heads
    tp = mesh_sizes["tp"]
    kv_split = mesh_sizes["sp"] * (tp if K % tp == 0 else 1)
    kv_cache = 2 * L * K * D * context * _itemsize(cache_dtype) * batch // kv_split
    vocab = model_config.vocab_size + (model_config.vision_vocab_size if model_config.has_vision else 0)
    layer_weights = 2 * E * H * D + 2 * E * K * D + 3 * E * F
    gathered = (layer_weights + E * vocab * (1 if model_config.tie_embeddings else 2)) * compute
    chunk = min(prefill_chunk, max(context // mesh_sizes["sp"], 1))
    heads_local = H // tp if H % tp == 0 else H
    prefill = batch * (chunk * compute * (8 * E + 2 * K * D + 4 * F) + heads_local * chunk * key_chunk * 4)
    return InferencePlan(parameters=count, parameter_bytes=shard * _itemsize(model_config.param_dtype),
                         kv_cache_bytes=kv_cache, gathered_bytes=gathered, prefill_bytes=prefill,
                         context=context, mesh=mesh_sizes)
