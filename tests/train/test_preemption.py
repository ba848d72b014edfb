"""A signal at any moment of training ends with a checkpoint of the last finished step, and the
run resumes to the uninterrupted loss curve, bit for bit (issue 19.1).

The signals are raised in-process (`signal.raise_signal`, so the real handler runs) from inside
the functions the trainer is in at chosen moments: restoring, dispatching a step, fetching
metrics on a log step (`log_every 1`), writing a checkpoint. All interruptions chain through one
run directory; the final resumed curve must equal a straight run's.
"""

import signal

import pytest
from train_helpers import compilation_cache, examples, losses_by_step, tiny_config

from lwm.train import hooks, loop
from lwm.train.checkpoint import Checkpointer
from lwm.train.loop import newest_step_on_disk, train

STEPS = ["--train.steps", "8", "--checkpoint.every_steps", "3"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory.mktemp("jax-cache")):
        yield


def signal_on_call(monkeypatch, owner, name, call: int, signum=signal.SIGTERM, after=False):
    """Makes `owner.name` raise `signum` on its `call`-th call (before the real work, or after)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call and not after:
            signal.raise_signal(signum)
        result = real(*args, **kwargs)
        if calls["n"] == call and after:
            signal.raise_signal(signum)
        return result

    monkeypatch.setattr(owner, name, wrapper)


def test_signals_at_any_moment_save_the_last_step_and_resume_exactly(tmp_path):
    train(tiny_config(tmp_path / "straight", *STEPS), source=examples())
    expected = losses_by_step(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 9))

    run = tmp_path / "chain"
    config = tiny_config(run, *STEPS)
    checkpoints = run / "checkpoints"
    # (what is patched, which call, signal, raised after the real call) -> the step it stops at
    moments = [
        ((Checkpointer, "restore_latest", 1, signal.SIGTERM, False), 0),  # while restoring: nothing done yet
        ((hooks, "to_host", 1, signal.SIGTERM, False), 2),  # fetching step 1's metrics, after step 2 ran
        ((loop, "_to_global", 2, signal.SIGINT, False), 4),  # inside step 4 (the second of this run)
        ((Checkpointer, "save", 1, signal.SIGTERM, True), 6),  # while step 6's periodic save is written
    ]
    handler_before = signal.getsignal(signal.SIGTERM)
    for (owner, name, call, signum, after), stop_step in moments:
        with pytest.MonkeyPatch.context() as patch:
            signal_on_call(patch, owner, name, call, signum, after)
            result = train(config, source=examples())[-1]
        assert result.preempted and result.steps == stop_step, (name, result)
        assert signal.Signals(signum).name in result.stop_note
        if stop_step:
            # a complete checkpoint of the last finished step, newest on disk
            assert result.checkpoint_step == stop_step == newest_step_on_disk(checkpoints)
        assert not (run / "model").exists()
    # the handlers are gone again once train() returns
    assert signal.getsignal(signal.SIGTERM) == handler_before
    final = train(config, source=examples())[-1]
    assert not final.preempted and final.steps == 8 and (run / "model" / "params").exists()
    assert losses_by_step(run) == expected  # bit for bit, every step
