"""Checkpointer: a damaged newest checkpoint is reported, set aside (not deleted) and the older
one restored; a save cut short is never read (issue 19.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm.config import CheckpointConfig
from lwm.train.checkpoint import CORRUPT_SUFFIX, Checkpointer, abstract_like

CONFIG = CheckpointConfig(keep=5, async_save=False)


def state_at(step: int) -> dict:
    return {"params": {"w": jnp.arange(4096.0) * step, "b": jnp.full((8, 8), float(step))},
            "step": jnp.asarray(step, jnp.int32)}


def write_steps(directory, steps=(1, 2)) -> None:
    checkpointer = Checkpointer(directory, CONFIG)
    for step in steps:
        checkpointer.save(step, state_at(step), {"batches": step}, {"stage": "", "step": step})
    checkpointer.close()


def files_of(step_dir):
    return sorted(p for p in step_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["truncate-largest", "truncate-metadata", "delete-array-file"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, damage, capsys):
    write_steps(tmp_path)
    newest = tmp_path / "2"
    state_files = [p for p in files_of(newest / "state") if "ocdbt.process_0/d" in p.as_posix()
                   or p.parent.name == "d"]
    if damage == "truncate-largest":
        target = max(files_of(newest), key=lambda p: p.stat().st_size)
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "truncate-metadata":
        target = newest / "state" / "_METADATA"
        target.write_bytes(target.read_bytes()[:50])
    else:
        for target in state_files:
            target.unlink()
    checkpointer = Checkpointer(tmp_path, CONFIG)
    restored = checkpointer.restore_latest(abstract_like(state_at(0)))
    checkpointer.close()
    assert restored.step == 1 and restored.data_state == {"batches": 1}
    for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state_at(1))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # one line, naming the checkpoint; the damaged one is kept aside, not deleted
    [note] = checkpointer.notes
    assert str(newest) in note and "incomplete or corrupt" in note and "\n" not in note
    assert capsys.readouterr().err.count("incomplete or corrupt") == 1
    assert (tmp_path / f"2{CORRUPT_SUFFIX}").is_dir() and not newest.exists()
    assert checkpointer.last_saved_step == 1


def test_every_checkpoint_damaged_means_a_fresh_start(tmp_path):
    write_steps(tmp_path, steps=(1,))
    (tmp_path / "1" / "state" / "_METADATA").write_text("{")
    checkpointer = Checkpointer(tmp_path, CONFIG)
    assert checkpointer.restore_latest(abstract_like(state_at(0))) is None
    checkpointer.close()
    assert (tmp_path / f"1{CORRUPT_SUFFIX}").is_dir()


def test_an_unfinished_save_is_never_read(tmp_path):
    write_steps(tmp_path, steps=(1,))
    # what a kill during the write of step 2 leaves: Orbax's temporary folder
    (tmp_path / "2.orbax-checkpoint-tmp").mkdir()
    (tmp_path / "2.orbax-checkpoint-tmp" / "junk").write_text("half")
    checkpointer = Checkpointer(tmp_path, CONFIG)
    assert checkpointer.latest_step() == 1
    assert checkpointer.restore_latest(abstract_like(state_at(0))).step == 1
    assert checkpointer.notes == []
    checkpointer.close()
