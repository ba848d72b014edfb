"""The project's own model checkpoint layout: a config plus an Orbax parameter tree.

A model directory holds `model.yaml` (the `ModelConfig`) and `params/` (an Orbax checkpoint of
the parameters as a nested dict of arrays). The layout of that dict follows the model: with
`scan_layers` the layers are stacked under `layers` with a leading layer axis; without it they
are `layers/0`, `layers/1`, .... `stack_layers` and `unstack_layers` move between the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lwm.config import ModelConfig, load_config, save_config
from lwm.data.integrity import check_file_manifest, reading, write_file_manifest
from lwm.model.llama import LlamaModel
from lwm.paths import as_path, is_url

MODEL_CONFIG_FILE = "model.yaml"
PARAMS_DIR = "params"


def create_model(config: ModelConfig, seed: int = 0) -> LlamaModel:
    """A freshly initialised model."""
    return LlamaModel(config, rngs=nnx.Rngs(seed))


def abstract_model(config: ModelConfig) -> LlamaModel:
    """The model with shapes and dtypes only: nothing is allocated (works for 7B on a laptop)."""
    return nnx.eval_shape(lambda: LlamaModel(config, rngs=nnx.Rngs(0)))


def numpy_initialised_model(config: ModelConfig, seed: int = 0, std: float = 0.02) -> LlamaModel:
    """A model with random weights drawn by numpy (normal with `std`; norm scales 1).

    Nothing is compiled, so it is instant on a small CPU where `create_model`'s jitted
    initialisation takes seconds: for tests, benchmarks and smoke runs.
    """
    model = abstract_model(config)
    rng = np.random.default_rng(seed)
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable):
            shape = tuple(variable.shape)
            value = np.ones(shape) if str(path[-1]) == "scale" else rng.normal(0.0, std, shape)
            variable.set_value(jnp.asarray(value, dtype=variable.dtype))
    return model


def count_parameters(model: nnx.Module) -> int:
    """Number of scalar parameters (works on abstract models too)."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return int(sum(np.prod(leaf.shape) for leaf in leaves))


def params_dict(model: nnx.Module) -> dict[str, Any]:
    """The parameters as a plain nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def set_params(model: nnx.Module, params: dict[str, Any]) -> None:
    """Loads a nested dict of arrays into the model, checking every shape."""
    state = nnx.state(model, nnx.Param)
    expected = nnx.to_pure_dict(state)
    flat_expected = dict(_flatten(expected))
    flat_given = dict(_flatten(params))
    missing = sorted(set(flat_expected) - set(flat_given))
    extra = sorted(set(flat_given) - set(flat_expected))
    if missing or extra:
        raise ValueError(f"parameter tree mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, value in flat_given.items():
        if tuple(value.shape) != tuple(flat_expected[key].shape):
            raise ValueError(
                f"parameter {'/'.join(key)} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(flat_expected[key].shape)}"
            )
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def _flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    items = []
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, dict):
            items.extend(_flatten(value, path))
        else:
            items.append((path, value))
    return items


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Turns `layers/{i}/...` into `layers/...` with a leading layer axis."""
    layers = [params["layers"][i] for i in range(num_layers)]
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
    return {**params, "layers": stacked}


def unstack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Turns stacked `layers/...` into `layers/{i}/...`."""
    stacked = params["layers"]
    layers = {i: jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked) for i in range(num_layers)}
    return {**params, "layers": layers}


def save_model(model: LlamaModel, directory: str | Path) -> Path:
    """Writes `model.yaml` and `params/` into `directory` (which must not hold params yet)."""
    directory = as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(model.config, directory / MODEL_CONFIG_FILE)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, params_dict(model))
    _finish(directory)
    return directory


def _finish(directory: Any) -> None:
    # A local model directory lists its files last: one without the list was not finished, and
    # a truncated or missing file is named at load time instead of deep inside Orbax. The save
    # is collective; one process writes the list.
    if not is_url(directory) and jax.process_index() == 0:
        write_file_manifest(Path(directory))


def params_template(config: ModelConfig) -> dict[str, Any]:
    """The parameter dict of `config`'s model as `jax.ShapeDtypeStruct` leaves (no allocation),
    with the key types `load_model` restores (layer indices are ints without `scan_layers`)."""
    return params_dict(abstract_model(config))


def fill_params(config: ModelConfig, flat: dict[tuple[str, ...], Any], source: str) -> dict[str, Any]:
    """The parameter dict of `config`'s model with the arrays of `flat` (`{path of strings:
    array}`), checking that every parameter is given once with its shape and dtype."""
    template = params_template(config)
    given = dict(flat)
    missing: list[str] = []

    def fill(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {key: fill(value, path + (str(key),)) for key, value in node.items()}
        if path not in given:
            missing.append("/".join(path))
            return None
        array = given.pop(path)
        if tuple(array.shape) != tuple(node.shape) or np.dtype(array.dtype) != np.dtype(node.dtype):
            raise ValueError(f"{source}: {'/'.join(path)} is {array.dtype}{list(array.shape)}, the model "
                             f"expects {np.dtype(node.dtype)}{list(node.shape)}")
        return array

    tree = fill(template, ())
    if missing or given:
        raise ValueError(f"{source}: parameter tree mismatch: missing {missing[:5]}, unexpected "
                         f"{['/'.join(key) for key in list(given)[:5]]}")
    return tree


def save_params(config: ModelConfig, params: dict[str, Any], directory: str | Path) -> Path:
    """Writes `model.yaml` and `params/` from a plain parameter dict (numpy or jax arrays in
    the `params_template` layout), without building the model: converters hold one copy of
    the weights. `directory` must not hold params yet."""
    directory = as_path(directory)
    if (directory / PARAMS_DIR).exists():
        raise FileExistsError(f"{directory / PARAMS_DIR} exists: choose an empty output directory")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, params)
    # The config is written last: a directory with model.yaml holds complete parameters.
    save_config(config, directory / MODEL_CONFIG_FILE)
    _finish(directory)
    return directory


def load_params_host(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The config and the parameters of a model directory as host numpy arrays (one process,
    no mesh): for converters that write the weights elsewhere."""
    config = load_model_config(directory)
    device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params_template(config))
    params = load_params_tree(directory, target, process_local=True)
    return config, jax.tree.map(np.asarray, params)


def load_params_tree(directory: str | Path, target: dict[str, Any] | None = None, *,
                     process_local: bool = False) -> dict[str, Any]:
    """Reads the parameter dict of a model directory (onto `target`'s shapes and shardings).

    In a multi-process job a restore is collective: every process calls it with the same
    global target. `process_local=True` is for a target on this process's own devices, read by
    one process alone (the main process exporting a model); it skips the cross-process barriers
    that would otherwise wait forever for the others.
    """
    directory = as_path(directory)
    path = directory / PARAMS_DIR
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no {PARAMS_DIR}/: not an lwm model directory")
    if not is_url(directory):
        check_file_manifest(Path(directory), what="model directory")
    options = ocp.options.MultiprocessingOptions()
    if process_local:
        me = jax.process_index()
        options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    with reading(directory, "model directory"), \
            ocp.StandardCheckpointer(multiprocessing_options=options) as checkpointer:
        return checkpointer.restore(path, target) if target is not None else checkpointer.restore(path)


def load_model_config(directory: str | Path) -> ModelConfig:
    """The `ModelConfig` stored in a model directory."""
    path = as_path(directory) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {MODEL_CONFIG_FILE}: not an lwm model directory")
    return load_config(ModelConfig, path)


def load_model(directory: str | Path, overrides: tuple[str, ...] = ()) -> LlamaModel:
    """Loads a model saved by `save_model` (or `lwm convert hf2lwm`).

    `overrides` change runtime settings such as `--attention blockwise` or `--dtype bfloat16`;
    shape fields must match the stored parameters.
    """
    config = load_config(ModelConfig, as_path(directory) / MODEL_CONFIG_FILE, overrides)
    # Restore straight into the abstract model's state: no random initialisation is computed
    # only to be overwritten (for 7B that would double the memory and the load time).
    graphdef, state = nnx.split(abstract_model(config))
    # An explicit placement: without one Orbax reuses the saving run's shardings, which name
    # devices this process may not have (a model trained on 8 devices, loaded on 1).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, load_params_tree(directory, target, process_local=True))
    return nnx.merge(graphdef, state)
