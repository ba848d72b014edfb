"""Key/value cache, chunked prefill and the decode step of the LLaMA decoder.

The cache (`KVCache`, defined beside the model's attention) holds every layer's keys and
values, `[layers, batch, size, kv_heads, head_dim]`, and how many positions of each row are
filled. `InferenceModel` runs the model's own blocks and layer loop on top of it
(`LlamaModel.extend`): new tokens are written at positions `lengths[b], lengths[b] + 1, ...`
of their row and then attend to the cache so far with `ringattention.decode_attention`; a
prefill runs chunk by chunk through the same function as one decode step, so memory is
O(size · chunk), never the size² score matrix.

Batches are right-padded: row `b` holds its own tokens at positions `0 .. lengths[b]-1`, the
positions a prompt would have alone, so a padded batch decodes exactly like single prompts.
Padding entries are never written (their positions are -1) and never attended.

On a mesh whose `sp` axis is larger than one, the cache is split along its position axis over
`sp` (device `i` holds a contiguous slice); inside `jax.shard_map` every layer writes the
positions a device owns (`ringattention.update_sharded_cache`, in place in the all-layer
buffer) and attends with `ring_decode_attention`, so a context too large for one device
spreads over many: the path to 1M tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from lwm.config import MeshConfig, ModelConfig
from lwm.infer.requests import CacheOverflowError
from lwm.infer.sampling import SamplingParams, VisionSchedule, classifier_free_guidance, sample_tokens
from lwm.mesh import logical_to_spec, make_mesh, state_shardings
from lwm.model.attention import CACHE_AXES, KVCache
from lwm.model.llama import LlamaModel


def single_device_mesh() -> Mesh:
    """A `(dp, fsdp, tp, sp)` mesh of size one on the first device."""
    return make_mesh(MeshConfig(dp=1, fsdp=1, tp=1, sp=1), devices=jax.devices()[:1])


def _spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh):
    return logical_to_spec(axes, shape, mesh)


def extend_cache(
    model: LlamaModel,
    cache: KVCache,
    input_ids_BT: jax.Array,
    input_is_vision_BT: jax.Array | None,
    new_lengths_B: jax.Array,
    *,
    mesh: Mesh | None = None,
    key_chunk_size: int,
) -> tuple[KVCache, jax.Array]:
    """Runs `input_ids_BT` through the model on top of the cache; returns the cache and hiddens.

    `LlamaModel.extend` under the mesh in context (`mesh` is accepted for callers that name
    it; the compiled steps below run under `jax.set_mesh(mesh)`). Row `b` appends its first
    `new_lengths_B[b]` tokens at positions `lengths[b], lengths[b] + 1, ...`. Pure: call it
    inside `jax.jit`.
    """
    del mesh  # the context mesh (jax.set_mesh) is the one the model's attention shards over
    return model.extend(cache, input_ids_BT, new_lengths_B, input_is_vision_BT=input_is_vision_BT,
                        key_chunk_size=key_chunk_size)


def last_hidden(hidden_BTE: jax.Array, new_lengths_B: jax.Array, previous_BE: jax.Array) -> jax.Array:
    """The hidden state of each row's last new token; `previous_BE` for rows that added none."""
    index = jnp.maximum(jnp.asarray(new_lengths_B) - 1, 0)
    picked = jnp.take_along_axis(hidden_BTE, index[:, None, None], axis=1)[:, 0]
    return jnp.where((jnp.asarray(new_lengths_B) > 0)[:, None], picked, previous_BE)


def head_logits(model: LlamaModel, hidden_BE: jax.Array, head: str) -> jax.Array:
    """Float32 logits `[batch, vocab]` of the text or the vision head."""
    hidden_B1E = hidden_BE[:, None, :]
    logits = model.vision_logits(hidden_B1E) if head == "vision" else model.text_logits(hidden_B1E)
    return logits[:, 0]


def pad_right(sequences: Sequence[Sequence[int]], length: int, fill: int = 0) -> np.ndarray:
    """Right-pads integer (or bool) sequences into one `[batch, length]` array."""
    first = np.asarray(sequences[0]) if len(sequences) else np.zeros(0, np.int32)
    dtype = bool if first.dtype == bool else np.int32
    out = np.full((len(sequences), length), fill, dtype)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = np.asarray(sequence, dtype)
    return out


# Compiled steps live at module level with the graph definition, mesh and settings as static
# arguments, so every `InferenceModel` of the same architecture and mesh shares them.


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _extend_step(graphdef, mesh, key_chunk_size, state, cache, ids_BT, is_vision_BT, new_lengths_B, previous_BE):
    model = nnx.merge(graphdef, state)
    cache, hidden_BTE = extend_cache(
        model, cache, ids_BT, is_vision_BT, new_lengths_B, mesh=mesh, key_chunk_size=key_chunk_size
    )
    return cache, hidden_BTE, last_hidden(hidden_BTE, new_lengths_B, previous_BE)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logits_step(graphdef, head, state, hidden_BE):
    return head_logits(nnx.merge(graphdef, state), hidden_BE, head)


@functools.partial(
    jax.jit,
    static_argnums=(0, 1, 2),
    static_argnames=("max_new_tokens", "sampling", "head", "guidance_scale", "schedule"),
    donate_argnums=(4,),
)
def _decode_loop(graphdef, mesh, key_chunk_size, state, cache, hidden_RE, key, stop_ids, *, max_new_tokens, sampling,
                 head, guidance_scale, schedule):
    """Samples up to `max_new_tokens` per row inside one `lax.while_loop` (see `InferenceModel.decode`)."""
    rows = cache.batch
    guided = guidance_scale is not None
    batch = rows // 2 if guided else rows
    feed_is_vision = jnp.full((rows, 1), head == "vision")

    def keep_going(carry):
        _, _, _, _, done, step, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def step_once(carry):
        state, cache, hidden, tokens, done, step, key = carry
        # The parameters travel in the carry and the model is merged inside the body: NNX
        # transforms (the layer scan) refuse variables holding an outer trace's values.
        model = nnx.merge(graphdef, state)
        logits = head_logits(model, hidden, head)
        if guided:
            logits = classifier_free_guidance(logits, guidance_scale)
        if schedule is not None:
            logits = schedule.constrain(logits, step)
        key, subkey = jax.random.split(key)
        token = sample_tokens(logits, subkey, sampling)
        if schedule is not None:
            token = schedule.force(token, step)
        active = ~done
        token = jnp.where(active, token, -1)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, 1)
        done = done | jnp.isin(token, stop_ids)
        # Both halves of a guided batch receive the token chosen from the mixed logits.
        feed, feed_active = (jnp.concatenate([token, token]), jnp.concatenate([active, active])) if guided \
            else (token, active)
        cache, hidden_RTE = extend_cache(
            model, cache, jnp.maximum(feed, 0)[:, None], feed_is_vision, feed_active.astype(jnp.int32),
            mesh=mesh, key_chunk_size=key_chunk_size,
        )
        hidden = jnp.where(feed_active[:, None], hidden_RTE[:, 0], hidden)
        return state, cache, hidden, tokens, done, step + 1, key

    tokens = jnp.full((batch, max_new_tokens), -1, jnp.int32)
    done = jnp.zeros((batch,), bool)
    carry = (state, cache, hidden_RE, tokens, done, jnp.int32(0), key)
    _, cache, hidden_RE, tokens, _, _, _ = jax.lax.while_loop(keep_going, step_once, carry)
    return cache, hidden_RE, tokens


class InferenceModel:
    """A model placed on a mesh with compiled prefill and decode steps over a `KVCache`.

    `mesh` defaults to one device. Parameters follow the project's sharding rules
    (`lwm.mesh.state_shardings`); the cache is split over `sp` along its positions. The
    cache size is always a multiple of `key_chunk_size * sp` (`round_cache_size`). Compiled
    steps depend on the cache shape: `min_cache_size` makes small requests share one size.

    Example::

        engine = InferenceModel(lwm.load_model("runs/tiny/model"))
        cache = engine.init_cache(batch=1, size=engine.round_cache_size(300))
        cache, hidden = engine.prefill(cache, [prompt_ids])
        logits = engine.logits(hidden, "text")
    """

    def __init__(
        self,
        model: LlamaModel,
        mesh: Mesh | None = None,
        *,
        cache_dtype: str | None = None,
        prefill_chunk_size: int = 512,
        key_chunk_size: int = 512,
        min_cache_size: int = 0,
        progress: bool = True,
    ):
        if prefill_chunk_size <= 0 or key_chunk_size <= 0:
            raise ValueError(
                f"prefill_chunk_size={prefill_chunk_size} and key_chunk_size={key_chunk_size} must be positive"
            )
        self.config: ModelConfig = model.config
        self.mesh = mesh if mesh is not None else single_device_mesh()
        self.cache_dtype = jnp.dtype(cache_dtype or self.config.dtype)
        self.prefill_chunk_size = prefill_chunk_size
        self.key_chunk_size = key_chunk_size
        self.min_cache_size = min_cache_size
        self.progress = progress
        self.graphdef, state = nnx.split(model)
        with jax.set_mesh(self.mesh):
            self.state = jax.device_put(state, state_shardings(state, self.mesh))

    # ------------------------------------------------------------------ sizes and shardings

    @property
    def sequence_parallel(self) -> int:
        """Devices the cache's positions are split over."""
        return int(self.mesh.shape["sp"])

    def round_cache_size(self, positions: int) -> int:
        """The smallest valid cache size holding `positions` (a multiple of key chunk × sp), and
        at least `min_cache_size`: requests of different lengths then share compiled steps."""
        unit = self.key_chunk_size * self.sequence_parallel
        return math.ceil(max(positions, self.min_cache_size, 1) / unit) * unit

    def cache_sharding(self, batch: int, size: int) -> NamedSharding:
        """How cache arrays `[layers, batch, size, kv_heads, head_dim]` lie on the mesh."""
        shape = (self.config.num_layers, batch, size, self.config.kv_heads, self.config.head_dim)
        return NamedSharding(self.mesh, _spec(CACHE_AXES, shape, self.mesh))

    def _check_size(self, size: int) -> None:
        unit = self.key_chunk_size * self.sequence_parallel
        if size <= 0 or size % unit:
            raise ValueError(
                f"cache size {size} must be a positive multiple of key_chunk_size × sp = "
                f"{self.key_chunk_size} × {self.sequence_parallel}; use round_cache_size({size})"
            )

    def init_cache(self, batch: int, size: int) -> KVCache:
        """An empty cache of `batch` rows and `size` positions, sharded over `sp`."""
        self._check_size(size)
        config = self.config
        shape = (config.num_layers, batch, size, config.kv_heads, config.head_dim)
        sharding = self.cache_sharding(batch, size)
        with jax.set_mesh(self.mesh):
            zeros = jax.jit(lambda: jnp.zeros(shape, self.cache_dtype), out_shardings=sharding)
            lengths = jax.device_put(jnp.zeros((batch,), jnp.int32), NamedSharding(self.mesh, _spec((None,), (batch,), self.mesh)))
            return KVCache(zeros(), zeros(), lengths)

    def reset(self, cache: KVCache) -> KVCache:
        """The same buffers with every row emptied (stale entries are never attended)."""
        return KVCache(cache.k, cache.v, jnp.zeros_like(cache.lengths))

    def extend(
        self,
        cache: KVCache,
        input_ids_BT: Any,
        input_is_vision_BT: Any = None,
        new_lengths_B: Any = None,
        previous_hidden_BE: Any = None,
    ) -> tuple[KVCache, jax.Array, jax.Array]:
        """Appends one block of tokens (the cache passed in is consumed).

        Returns the cache, the hidden states of every token `[batch, T, hidden]` and the hidden
        state of each row's last new token `[batch, hidden]` (`previous_hidden_BE` for rows that
        added nothing). `new_lengths_B` defaults to all T tokens of every row.
        """
        ids = jnp.asarray(input_ids_BT, jnp.int32)
        batch, new_len = ids.shape
        if batch != cache.batch:
            raise ValueError(f"{batch} rows of tokens for a cache of {cache.batch} rows")
        is_vision = jnp.zeros(ids.shape, bool) if input_is_vision_BT is None else jnp.asarray(input_is_vision_BT, bool)
        lengths = jnp.full((batch,), new_len, jnp.int32) if new_lengths_B is None else jnp.asarray(new_lengths_B, jnp.int32)
        previous = (jnp.zeros((batch, self.config.hidden_size), jnp.dtype(self.config.dtype))
                    if previous_hidden_BE is None else previous_hidden_BE)
        with jax.set_mesh(self.mesh):
            return _extend_step(self.graphdef, self.mesh, self.key_chunk_size, self.state, cache, ids, is_vision,
                                lengths, previous)

    def logits(self, hidden_BE: jax.Array, head: str = "text") -> jax.Array:
        """Float32 logits `[batch, vocab]` of `head` ("text" or "vision") for hidden states."""
        if head not in ("text", "vision"):
            raise ValueError(f"head={head!r}: use 'text' or 'vision'")
        with jax.set_mesh(self.mesh):
            return _logits_step(self.graphdef, head, self.state, hidden_BE)

    def prefill(
        self,
        cache: KVCache,
        prompts: Sequence[Sequence[int]],
        is_vision: Sequence[Sequence[bool]] | None = None,
        *,
        description: str = "prefill",
    ) -> tuple[KVCache, jax.Array]:
        """Appends one prompt per row, chunk by chunk; returns the cache and last hiddens.

        Prompts may differ in length (the batch is right-padded; each row continues from its own
        length, so this also appends a new turn to a cache that already holds a conversation).
        Raises `CacheOverflowError` when a row would overflow the cache.
        """
        if len(prompts) != cache.batch:
            raise ValueError(f"{len(prompts)} prompts for a cache of {cache.batch} rows")
        lengths = np.asarray([len(prompt) for prompt in prompts], np.int32)
        filled = np.asarray(jax.device_get(cache.lengths))
        overflow = np.nonzero(filled + lengths > cache.size)[0]
        if overflow.size:
            row = int(overflow[0])
            raise CacheOverflowError(
                f"row {row}: {filled[row]} cached + {lengths[row]} new tokens exceed the cache size "
                f"{cache.size}; allocate a larger cache (cache.max_len)"
            )
        chunk = self.prefill_chunk_size
        total = max(1, int(lengths.max(initial=0)))
        padded = math.ceil(total / chunk) * chunk
        ids = pad_right(prompts, padded)
        flags = pad_right(is_vision, padded, False) if is_vision is not None else np.zeros(ids.shape, bool)
        hidden = jnp.zeros((cache.batch, self.config.hidden_size), jnp.dtype(self.config.dtype))
        starts = range(0, padded, chunk)
        progress = None
        if self.progress and len(starts) > 8 and jax.process_index() == 0:
            from tqdm import tqdm

            progress = tqdm(total=int(lengths.sum()), desc=description, unit="tok")
        for start in starts:
            new = np.clip(lengths - start, 0, chunk).astype(np.int32)
            cache, _, hidden = self.extend(
                cache, ids[:, start:start + chunk], flags[:, start:start + chunk], new, hidden
            )
            if progress is not None:
                progress.update(int(new.sum()))
        if progress is not None:
            progress.close()
        return cache, hidden

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        cache: KVCache,
        hidden_RE: jax.Array,
        *,
        max_new_tokens: int,
        sampling: SamplingParams = SamplingParams(),
        key: jax.Array | None = None,
        head: str = "text",
        stop_ids: Sequence[int] = (),
        guidance_scale: float | None = None,
        schedule: VisionSchedule | None = None,
    ) -> tuple[KVCache, jax.Array, jax.Array]:
        """Generates up to `max_new_tokens` per row in one compiled `lax.while_loop`.

        `hidden_RE` holds the hidden state of each row's last token (from `prefill`). Every
        step takes logits of `head`, samples, and feeds the token back (as a vision token when
        `head="vision"`) so the cache ends holding every generated token. A row stops after a
        token in `stop_ids` (which is kept); the loop ends when every row stopped. With
        `guidance_scale`, rows `[:B]` are conditional and `[B:]` unconditional prompts of the
        same B requests: logits = u + scale·(c − u), and both rows receive the same token.
        `schedule` enforces the vision frame structure.

        Returns the cache (consumed and replaced), the last hidden states and the tokens
        `[B, max_new_tokens]` int32, -1 after a row stopped.
        """
        if head not in ("text", "vision"):
            raise ValueError(f"head={head!r}: use 'text' or 'vision'")
        if guidance_scale is not None and cache.batch % 2:
            raise ValueError(f"guidance needs conditional and unconditional rows; the cache has {cache.batch} rows")
        filled = int(np.max(jax.device_get(cache.lengths), initial=0))
        if filled + max_new_tokens > cache.size:
            raise CacheOverflowError(
                f"{filled} cached + {max_new_tokens} new tokens exceed the cache size {cache.size}; "
                f"allocate a larger cache (cache.max_len) or generate fewer tokens"
            )
        settings = dict(
            max_new_tokens=int(max_new_tokens), sampling=sampling, head=head,
            guidance_scale=None if guidance_scale is None else float(guidance_scale), schedule=schedule,
        )
        key = jax.random.key(0) if key is None else key
        # Stop ids are data, not part of the compiled program; -1 never matches a token.
        stops = jnp.asarray([int(token) for token in stop_ids] or [-1], jnp.int32)
        with jax.set_mesh(self.mesh):
            return _decode_loop(self.graphdef, self.mesh, self.key_chunk_size, self.state, cache, hidden_RE, key,
                                stops, **settings)


def load_inference_model(
    model_dir: str,
    *,
    mesh: Mesh | None = None,
    mesh_config: MeshConfig | None = None,
    dtype: str = "",
    cache_dtype: str = "",
    prefill_chunk_size: int = 512,
    key_chunk_size: int = 512,
) -> InferenceModel:
    """Loads a model directory (`lwm.load_model`: training output, `save_model` or
    `lwm convert hf2lwm`) onto a mesh, ready for cached decoding.

    `mesh_config` builds the mesh (default: one device); `dtype` overrides the compute dtype;
    `cache_dtype` defaults to the compute dtype.
    """
    from lwm.model.params_io import load_model

    overrides = ("--dtype", dtype) if dtype else ()
    model = load_model(model_dir, overrides)
    if mesh is None and mesh_config is not None:
        mesh = make_mesh(mesh_config)
    return InferenceModel(
        model, mesh, cache_dtype=cache_dtype or None, prefill_chunk_size=prefill_chunk_size,
        key_chunk_size=key_chunk_size,
    )
