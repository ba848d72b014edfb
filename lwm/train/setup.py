"""What every sharded train step is built from: the mesh, the model's structure, the optimizer,
the shardings of the training state and the batch, and the pure step function.

The train loop materialises the state from it; the memory planner and the benchmarks compile
the same step on abstract values (`abstract_state`, `abstract_batch`), so what they measure is
what the loop runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx

from lwm.config import TrainRunConfig
from lwm.config.checks import check_batch_divides
from lwm.data.batch import abstract_batch
from lwm.mesh import DATA_AXIS, FSDP_AXIS, SEQUENCE_AXIS, data_sharding, make_mesh, replicated, state_shardings
from lwm.model.attention import sequence_permutation
from lwm.model.llama import LlamaModel
from lwm.model.params_io import abstract_model
from lwm.train.optimizer import make_optimizer
from lwm.train.step import init_train_state, make_train_step, train_state_shardings


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """The pieces of one stage's sharded train step (see `train_setup`)."""

    config: TrainRunConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    abstract_params: nnx.State
    param_shardings: Any
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding
    step_fn: Callable[[dict[str, Any], dict[str, jax.Array]], tuple[dict[str, Any], dict[str, jax.Array]]]

    def create_params(self) -> nnx.State:
        """Freshly initialised parameters (`train.seed`), created sharded."""
        config = self.config

        def create() -> nnx.State:
            return nnx.split(LlamaModel(config.model, rngs=nnx.Rngs(config.train.seed)))[1]

        with jax.set_mesh(self.mesh):
            return jax.jit(create, out_shardings=self.param_shardings)()

    def init_state(self, params: nnx.State) -> dict[str, Any]:
        """The training state (parameters, optimizer moments, step 0), sharded."""
        with jax.set_mesh(self.mesh):
            # The parameters are donated: loaded weights are not held twice while the state is built.
            return jax.jit(lambda p: init_train_state(p, self.optimizer), out_shardings=self.state_shardings,
                           donate_argnums=0)(params)

    def abstract_state(self) -> dict[str, Any]:
        """`ShapeDtypeStruct`s of the training state, with their shardings; allocates nothing."""
        with jax.set_mesh(self.mesh):
            shapes = jax.eval_shape(lambda p: init_train_state(p, self.optimizer), self.abstract_params)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            self.state_shardings)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """`ShapeDtypeStruct`s of one global batch (`data.batch_size` x `data.seq_len`)."""
        return abstract_batch(self.config.data.batch_size, self.config.data.seq_len, self.batch_sharding)

    def compile(self, state: Any = None) -> Any:
        """The jitted step, compiled for `state` (default: the abstract state), with donation."""
        with jax.set_mesh(self.mesh):
            jitted = jax.jit(self.step_fn, out_shardings=(self.state_shardings, None), donate_argnums=(0,))
            return jitted.lower(self.abstract_state() if state is None else state, self.abstract_batch()).compile()


def train_setup(config: TrainRunConfig) -> TrainSetup:
    """Builds the mesh, the abstract model and every sharding of `config`'s train step."""
    mesh = make_mesh(config.mesh)
    check_batch_divides(config.data.batch_size, mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS])
    optimizer = make_optimizer(config.train)
    with jax.set_mesh(mesh):
        graphdef, abstract_params = nnx.split(abstract_model(config.model))
        param_shardings = state_shardings(abstract_params, mesh)
        full_shardings = train_state_shardings(optimizer, abstract_params, param_shardings, replicated(mesh))
    step_fn = make_train_step(graphdef, optimizer, config.train,
                              prepare_batch=sequence_permutation(config.model, mesh.shape[SEQUENCE_AXIS]))
    return TrainSetup(config, mesh, graphdef, optimizer, abstract_params, param_shardings, full_shardings,
                      data_sharding(mesh), step_fn)
