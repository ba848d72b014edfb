"""Device mesh and the mapping from logical axis names to mesh axes.

This module and `ringattention` are the only places that spell `PartitionSpec`s: models name
their axes logically (`embed`, `heads`, `seq`, ...) and the rules below place them on the
`(dp, fsdp, tp, sp)` mesh, following LWM: parameters are sharded over `('fsdp', 'sp')` × `tp`,
so sequence-parallel devices also hold a slice of the weights, and activations over
`(('dp', 'fsdp'), 'sp', 'tp')`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lwm.config import ConfigError, MeshConfig

# The mesh axes, each named once: data, fully-sharded data, tensor and sequence parallelism.
DATA_AXIS = "dp"
FSDP_AXIS = "fsdp"
TENSOR_AXIS = "tp"
SEQUENCE_AXIS = "sp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS, SEQUENCE_AXIS)

# Logical axis -> mesh axes. A dimension is only sharded when its size divides evenly.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tp"),
    ("embed", ("fsdp", "sp")),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("mlp", "tp"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    # activations
    ("batch", ("dp", "fsdp")),
    ("seq", "sp"),
    ("act_heads", "tp"),
    ("act_kv_heads", "tp"),
    ("act_embed", None),
    ("act_mlp", "tp"),
    ("act_vocab", "tp"),
)


def resolve_axis_sizes(config: MeshConfig, device_count: int) -> dict[str, int]:
    """Axis sizes with the -1 axis filled in; raises `ConfigError` when they do not factor."""
    sizes = config.sizes()
    fixed = math.prod(size for size in sizes.values() if size != -1)
    wildcard = [name for name, size in sizes.items() if size == -1]
    if wildcard:
        if device_count % fixed:
            raise ConfigError(
                f"mesh {sizes} cannot use {device_count} devices: the fixed axes multiply to "
                f"{fixed}, which does not divide {device_count}; choose sizes whose product "
                f"divides the device count"
            )
        sizes[wildcard[0]] = device_count // fixed
    elif fixed != device_count:
        raise ConfigError(
            f"mesh {sizes} needs {fixed} devices but {device_count} are available: make the "
            f"product of dp·fsdp·tp·sp equal {device_count}, or set one axis to -1"
        )
    return sizes


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the `(dp, fsdp, tp, sp)` mesh from config with automatic (not explicit) sharding."""
    devices = list(devices if devices is not None else jax.devices())
    try:
        sizes = resolve_axis_sizes(config, len(devices))
    except ConfigError as error:
        if devices and all(device.platform == "cpu" for device in devices):
            # One CPU is one device unless JAX is told otherwise before it starts.
            wanted = math.prod(size for size in config.sizes().values() if size != -1)
            raise ConfigError(
                f"{error}. On CPU, get {wanted} fake devices with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={wanted} in the environment, "
                f"or jax.config.update('jax_num_cpu_devices', {wanted}) before JAX starts "
                f"(inference configs: cpu_devices: {wanted})"
            ) from None
        raise
    shape = tuple(sizes[name] for name in MESH_AXES)
    device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | jax.sharding.AbstractMesh | Mapping[str, int] | None = None,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
) -> PartitionSpec:
    """Maps logical axis names to a `PartitionSpec`.

    `mesh` is a `Mesh` or just its axis sizes (`{"dp": 2, ...}`, for planning without
    devices). With `shape` and `mesh` given, a dimension whose size the mesh axes do not divide
    is left replicated instead of failing (for example a 3-way vocabulary on a 2-way `tp`), and
    mesh axes of size 1 are dropped.
    """
    table = dict(rules)
    sizes = None if mesh is None else dict(mesh) if isinstance(mesh, Mapping) else dict(mesh.shape)
    used: set[str] = set()
    spec: list[Any] = []
    for index, name in enumerate(logical_axes):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(axis for axis in axes if axis not in used)
        if sizes is not None:
            axes = tuple(axis for axis in axes if sizes[axis] > 1)
            if shape is not None and axes:
                if shape[index] % math.prod(sizes[axis] for axis in axes):
                    axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def shard_shape(
    shape: Sequence[int], logical_axes: Sequence[str | None], mesh_sizes: Mapping[str, int],
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
) -> tuple[int, ...]:
    """The shape of one device's shard of an array laid out by `logical_to_spec`."""
    spec = logical_to_spec(logical_axes, shape, mesh_sizes, rules)
    local = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        local.append(size // math.prod(mesh_sizes[name] for name in names))
    return tuple(local)


def logical_axes_of(variable: Any) -> tuple[str | None, ...]:
    """The logical axis names a model variable was annotated with (replicated if none)."""
    axes = variable.get_metadata().get("logical_axes")
    return tuple(axes) if axes is not None else (None,) * len(variable.shape)


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """`NamedSharding`s for every variable of an `nnx.State` (abstract or concrete)."""
    def sharding(variable: Any) -> Any:
        spec = logical_to_spec(logical_axes_of(variable), variable.shape, mesh, rules)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device (scalars, small tables)."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a `[batch, seq]` input array: batch over `(dp, fsdp)`, sequence over `sp`."""
    return NamedSharding(mesh, logical_to_spec(("batch", "seq"), None, mesh, rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's layout by logical names when a mesh is active; a no-op otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def shard_over_sequence(
    local_attention: Any, mesh: Any, q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array,
    segment_ids_BT: jax.Array,
) -> jax.Array:
    """Runs a per-shard attention (ring attention over `sp`) inside `jax.shard_map`.

    The sequence must split evenly over `sp`; batch and heads follow the activation rules.
    """
    sequence_parallel = mesh.shape[SEQUENCE_AXIS]
    if q_BTHD.shape[1] % sequence_parallel:
        raise ValueError(
            f"sequence length {q_BTHD.shape[1]} is not divisible by mesh axis {SEQUENCE_AXIS}={sequence_parallel}: "
            f"ring attention gives every sequence-parallel device an equal block"
        )
    q_spec = logical_to_spec(("batch", "seq", "act_heads", None), q_BTHD.shape, mesh)
    kv_spec = logical_to_spec(("batch", "seq", "act_kv_heads", None), k_BTKD.shape, mesh)
    if q_spec[2] != kv_spec[2]:
        # Query and key heads must split the same way so each device keeps whole groups.
        q_spec = PartitionSpec(q_spec[0], q_spec[1], None, None)
        kv_spec = PartitionSpec(kv_spec[0], kv_spec[1], None, None)
    segment_spec = PartitionSpec(q_spec[0], q_spec[1])
    return jax.shard_map(
        local_attention,
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, segment_spec),
        out_specs=q_spec,
        check_vma=False,
    )(q_BTHD, k_BTKD, v_BTKD, segment_ids_BT)
