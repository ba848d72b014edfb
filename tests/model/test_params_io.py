"""Model directories: a model saved sharded over many devices loads on a machine with one."""

import os
import subprocess
import sys

import jax
import numpy as np
from flax import nnx

from lwm.config import MeshConfig, ModelConfig
from lwm.mesh import make_mesh, state_shardings
from lwm.model.params_io import create_model, save_model

SMALL = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, max_seq_len=64)

LOAD_ON_ONE_DEVICE = """
import sys
import jax, numpy as np
from lwm.model.params_io import load_model
assert jax.device_count() == 1, jax.devices()
model = load_model(sys.argv[1])
np.save(sys.argv[2], np.asarray(model(np.arange(12, dtype=np.int32)[None] % 61)))
"""


def test_model_saved_on_eight_devices_loads_on_one(tmp_path):
    model = create_model(SMALL)
    mesh = make_mesh(MeshConfig(dp=1, fsdp=-1, tp=1, sp=1))
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh):
        state = jax.device_put(state, state_shardings(state, mesh))
    sharded = nnx.merge(graphdef, state)
    assert len(jax.tree.leaves(nnx.state(sharded))[0].sharding.device_set) == 8
    save_model(sharded, tmp_path / "model")
    expected = np.asarray(model(np.arange(12, dtype=np.int32)[None] % 61))

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", LOAD_ON_ONE_DEVICE, str(tmp_path / "model"), str(tmp_path / "logits.npy")],
                   check=True, env=env, capture_output=True, text=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=1e-5, atol=1e-5)
