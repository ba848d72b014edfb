"""LWM's LLaMA and vision-language parameter names <-> `lwm.model.llama.LlamaModel`.

LWM's flax modules (`FlaxLLaMAForCausalLMModule`, `FlaxVideoLLaMAForCausalLMModule`) name their
parameters, relative to the parameter root:

    transformer/wte/embedding        [V, E]      ours: embed
    transformer/vte/embedding        [Vv, E]     ours: vision_embed  (vision-language only)
    transformer/ln_f/kernel          [E]         ours: final_norm/scale  (RMSNorm weight)
    lm_head/kernel                   [E, V]      ours: lm_head  (absent with tied embeddings)
    vision_head/kernel               [E, Vv]     ours: vision_head
    transformer/h/scan_decoder/...   stacked on axis 0 (nn.scan, param_scan_axis=0), or
    transformer/h/{i}/...            one layer each, with, per layer:
        attention/wq|wk|wv/kernel    [E, H*D]    ours: attention/wq|wk|wv [E, H, D]
        attention/wo/kernel          [H*D, E]    ours: attention/wo [H, D, E]
        feed_forward/w1|w3|w2/kernel             ours: mlp/w_gate|w_up|w_down (w2(silu(w1 x) * w3 x))
        attention_norm/kernel, ffn_norm/kernel   ours: attention_norm/scale, mlp_norm/scale

LWM rotates interleaved channel pairs (2i, 2i+1) as complex numbers; `LlamaModel` rotates
(i, i + D/2) (Hugging Face's rotate-half). Both pair channel 2i of LWM with frequency i, so
permuting each head's q and k channels to `[0, 2, 4, ..., 1, 3, 5, ...]` makes the two models
compute the same attention scores (v and wo are not touched). The permutation only moves
values, so conversion is bit-exact in both directions. LWM has no grouped-query attention
(wk and wv have all H heads) and uses RMSNorm eps 1e-6 for its 7B models.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from lwm.config import ModelConfig
from lwm.model.formats.safe_files import WeightMappingError

# (LWM's name within a layer, ours within a layer, how the array is laid out)
_LAYER_PARAMS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("attention", "wq", "kernel"), ("attention", "wq"), "qk"),
    (("attention", "wk", "kernel"), ("attention", "wk"), "qk"),
    (("attention", "wv", "kernel"), ("attention", "wv"), "v"),
    (("attention", "wo", "kernel"), ("attention", "wo"), "o"),
    (("feed_forward", "w1", "kernel"), ("mlp", "w_gate"), "plain"),
    (("feed_forward", "w2", "kernel"), ("mlp", "w_down"), "plain"),
    (("feed_forward", "w3", "kernel"), ("mlp", "w_up"), "plain"),
    (("attention_norm", "kernel"), ("attention_norm", "scale"), "plain"),
    (("ffn_norm", "kernel"), ("mlp_norm", "scale"), "plain"),
)
SCAN_PREFIX = ("transformer", "h", "scan_decoder")


def check_lwm_compatible(config: ModelConfig, source: str = "model") -> None:
    """Refuses configs LWM's LLaMA cannot express (grouped-query attention)."""
    if config.kv_heads != config.num_heads:
        raise WeightMappingError(
            f"{source}: model.num_kv_heads={config.kv_heads} differs from num_heads={config.num_heads}; "
            f"LWM's LLaMA has no grouped-query attention"
        )


def rope_permutation(head_dim: int) -> np.ndarray:
    """Indices taking one head's channels from LWM's interleaved order to rotate-half order."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def _top_params(config: ModelConfig) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]]:
    E, V = config.hidden_size, config.vocab_size
    top = [(("transformer", "wte", "embedding"), ("embed",), (V, E))]
    if config.has_vision:
        top.append((("transformer", "vte", "embedding"), ("vision_embed",), (config.vision_vocab_size, E)))
    top.append((("transformer", "ln_f", "kernel"), ("final_norm", "scale"), (E,)))
    if config.has_vision:
        top.append((("vision_head", "kernel"), ("vision_head",), (E, config.vision_vocab_size)))
    if not config.tie_embeddings:
        top.append((("lm_head", "kernel"), ("lm_head",), (E, V)))
    return top


def _layer_shape(kind: str, lwm_name: tuple[str, ...], config: ModelConfig) -> tuple[int, ...]:
    E, F, HD = config.hidden_size, config.intermediate_size, config.num_heads * config.head_dim
    if kind in ("qk", "v"):
        return (E, HD)
    if kind == "o":
        return (HD, E)
    if lwm_name[0] == "feed_forward":
        return (F, E) if lwm_name[1] == "w2" else (E, F)
    return (E,)


def lwm_param_shapes(config: ModelConfig, *, scan_layers: bool = True) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every key LWM's module holds for `config`, with its shape, in the order written here."""
    shapes = {lwm: shape for lwm, _, shape in _top_params(config)[:2 if config.has_vision else 1]}
    for lwm_name, _, kind in _LAYER_PARAMS:
        shape = _layer_shape(kind, lwm_name, config)
        if scan_layers:
            shapes[SCAN_PREFIX + lwm_name] = (config.num_layers, *shape)
    if not scan_layers:
        for layer in range(config.num_layers):
            for lwm_name, _, kind in _LAYER_PARAMS:
                shapes[("transformer", "h", str(layer)) + lwm_name] = _layer_shape(kind, lwm_name, config)
    for lwm, _, shape in _top_params(config)[2 if config.has_vision else 1:]:
        shapes[lwm] = shape
    return shapes


def _to_ours(kind: str, array: np.ndarray, config: ModelConfig) -> np.ndarray:
    """One LWM array (optionally with a leading layer axis) in our layout."""
    H, D = config.num_heads, config.head_dim
    if kind == "qk":
        return array.reshape(*array.shape[:-1], H, D)[..., rope_permutation(D)]
    if kind == "v":
        return array.reshape(*array.shape[:-1], H, D)
    if kind == "o":
        return array.reshape(*array.shape[:-2], H, D, array.shape[-1])
    return array


def _to_lwm(kind: str, array: np.ndarray, config: ModelConfig) -> np.ndarray:
    """The inverse of `_to_ours`."""
    if kind == "qk":
        inverse = np.argsort(rope_permutation(config.head_dim))
        array = array[..., inverse]
        return array.reshape(*array.shape[:-2], -1)
    if kind == "v":
        return array.reshape(*array.shape[:-2], -1)
    if kind == "o":
        return array.reshape(*array.shape[:-3], -1, array.shape[-1])
    return array


def _cast(array: np.ndarray, dtype: Any) -> np.ndarray:
    if isinstance(dtype, str) and dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    return np.ascontiguousarray(array.astype(np.dtype(dtype), copy=False))


def lwm_to_flat_params(items: Iterable[tuple[tuple[str, ...], np.ndarray]], config: ModelConfig,
                       source: str) -> dict[tuple[str, ...], np.ndarray]:
    """Our parameters `{path: array}` (path components as strings, layers stacked under
    `layers` when `config.scan_layers`, else `layers/{i}`), from LWM's `(key, array)` records.

    Accepts a scanned or an unscanned LWM file whatever `config.scan_layers` says. Each array
    is converted when it arrives and cast to `config.param_dtype`. Raises `WeightMappingError`
    naming `source` and the key for an unknown key, a wrong shape, a key given twice, or
    missing keys.
    """
    check_lwm_compatible(config, source)
    dtype = config.param_dtype
    L = config.num_layers
    top = {lwm: (ours, shape) for lwm, ours, shape in _top_params(config)}
    layer_params = {lwm: (ours, kind) for lwm, ours, kind in _LAYER_PARAMS}
    flat: dict[tuple[str, ...], np.ndarray] = {}
    pending: dict[tuple[str, ...], dict[int, np.ndarray]] = {}  # unscanned file, scanned model
    seen: set[tuple[str, ...]] = set()
    layout: str | None = None

    def put(path: tuple[str, ...], array: np.ndarray, key: tuple[str, ...]) -> None:
        if path in flat:
            raise WeightMappingError(f"{source}: {'/'.join(key)} is given twice")
        flat[path] = array

    for key, array in items:
        name = "/".join(key)
        if key in seen:
            raise WeightMappingError(f"{source}: {name} is given twice")
        seen.add(key)
        array = np.asarray(array)
        if key in top:
            ours, shape = top[key]
            _check_shape(array, shape, source, name)
            put(ours, _cast(array, dtype), key)
            continue
        if key[:3] == SCAN_PREFIX and key[3:] in layer_params:
            this_layout, layer = "scanned", None
        elif len(key) > 3 and key[:2] == ("transformer", "h") and key[2].isdigit() and key[3:] in layer_params:
            this_layout, layer = "unscanned", int(key[2])
            if layer >= L:
                raise WeightMappingError(
                    f"{source}: {name} is layer {layer} but model.num_layers={L}; set --model.num_layers"
                )
        else:
            raise WeightMappingError(
                f"{source}: {name} is not a parameter of LWM's model for this config "
                f"(vision_vocab_size={config.vision_vocab_size}, tie_embeddings={config.tie_embeddings})"
            )
        if layout is not None and this_layout != layout:
            raise WeightMappingError(f"{source}: {name} mixes scanned and unscanned layers")
        layout = this_layout
        ours, kind = layer_params[key[3:]]
        shape = _layer_shape(kind, key[3:], config)
        if layer is None:
            _check_shape(array, (L, *shape), source, name)
            converted = _cast(_to_ours(kind, array, config), dtype)
            if config.scan_layers:
                put(("layers",) + ours, converted, key)
            else:
                for index in range(L):
                    put(("layers", str(index)) + ours, np.ascontiguousarray(converted[index]), key)
        else:
            _check_shape(array, shape, source, name)
            converted = _cast(_to_ours(kind, array, config), dtype)
            if config.scan_layers:
                group = pending.setdefault(ours, {})
                group[layer] = converted
                if len(group) == L:
                    put(("layers",) + ours, np.stack([group[i] for i in range(L)]), key)
                    del pending[ours]
            else:
                put(("layers", str(layer)) + ours, converted, key)
    expected = lwm_param_shapes(config, scan_layers=layout != "unscanned")
    missing = [("/".join(key)) for key in expected if key not in seen]
    if missing:
        raise WeightMappingError(
            f"{source}: missing {len(missing)} parameter(s) LWM's model has for this config: "
            f"{missing[:6]}{' ...' if len(missing) > 6 else ''}"
        )
    return flat


def _check_shape(array: np.ndarray, shape: tuple[int, ...], source: str, name: str) -> None:
    if tuple(array.shape) != tuple(shape):
        raise WeightMappingError(
            f"{source}: {name} has shape {tuple(array.shape)}, the model config expects {tuple(shape)} "
            f"(check the --model-config preset against the file)"
        )


def params_to_lwm(params: Mapping[str, Any], config: ModelConfig, *, scan_layers: bool = True,
                  dtype: Any = "bfloat16", root: tuple[str, ...] = ("params",)
                  ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """LWM's `(key, array)` records for our parameter dict (`params_dict(model)` layout), in
    LWM's key order, cast to `dtype`, under `root` (`params`, as LWM's trainer writes it)."""
    check_lwm_compatible(config)
    L = config.num_layers
    top = _top_params(config)
    by_path = {ours: lwm for lwm, ours, _ in top}
    layers = params["layers"]

    def layer_array(ours: tuple[str, ...], index: int | None) -> np.ndarray:
        node = layers if config.scan_layers else _child(layers, index if index is not None else 0)
        for part in ours:
            node = node[part]
        array = np.asarray(node)
        if config.scan_layers and index is not None:
            array = array[index]
        if not config.scan_layers and index is None:
            array = np.stack([np.asarray(_leaf(_child(layers, i), ours)) for i in range(L)])
        return array

    def emit_top(paths: Iterable[tuple[str, ...]]) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
        for ours in paths:
            yield root + by_path[ours], _cast(np.asarray(_leaf(params, ours)), dtype)

    yield from emit_top([ours for _, ours, _ in top if ours in (("embed",), ("vision_embed",))])
    if scan_layers:
        for lwm_name, ours, kind in _LAYER_PARAMS:
            yield root + SCAN_PREFIX + lwm_name, _cast(_to_lwm(kind, layer_array(ours, None), config), dtype)
    else:
        for index in range(L):
            for lwm_name, ours, kind in _LAYER_PARAMS:
                yield (root + ("transformer", "h", str(index)) + lwm_name,
                       _cast(_to_lwm(kind, layer_array(ours, index), config), dtype))
    yield from emit_top([ours for _, ours, _ in top if ours not in (("embed",), ("vision_embed",))])


def _child(tree: Mapping[Any, Any], index: int) -> Any:
    return tree[index] if index in tree else tree[str(index)]


def _leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree
