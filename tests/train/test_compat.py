"""Before the first step: the store must fit the model (issue 19.4); a finished run given more
steps continues; a NaN with no checkpoint yet says so."""

import jax
import numpy as np
import pytest
from flax import nnx
from train_helpers import VOCAB, examples, losses_by_step, tiny_config, write_store

import lwm
from lwm.cli import main
from lwm.config import save_config
from lwm.train.compat import DataModelMismatchError, check_store_fits_model
from lwm.train.loop import NonFiniteLossError, newest_step_on_disk, train
from lwm.train.setup import TrainSetup


def test_store_with_a_larger_text_vocabulary_is_refused_before_training(tmp_path):
    store = write_store(tmp_path / "store", text_vocab_size=2048)
    config = tiny_config(tmp_path / "run", "--train.steps", "2")
    with pytest.raises(DataModelMismatchError, match=r"text vocabulary has 2048 ids.*--model.vocab_size 2048"):
        train(config, source=str(store))
    with pytest.raises(DataModelMismatchError, match=str(store)):
        train(tiny_config(tmp_path / "run", "--train.steps", "2", "--data.store_path", str(store)))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was built or trained


def test_vision_stores_must_match_the_models_vision_tokenizer(tmp_path):
    vision = tiny_config(tmp_path, "--model.vision_vocab_size", "258", "--model.vision.codebook_size", "256",
                         "--model.vision.tokens_per_frame", "16").model
    text_only = tiny_config(tmp_path).model
    store = {"text_vocab_size": VOCAB, "vision_vocab_size": 514, "codebook_size": 512, "tokens_per_frame": 16,
             "num_vision_tokens": 100}
    with pytest.raises(DataModelMismatchError, match="text-only"):
        check_store_fits_model("s", store, text_only)
    with pytest.raises(DataModelMismatchError, match="--model.vision_vocab_size 514"):
        check_store_fits_model("s", store, vision)
    with pytest.raises(DataModelMismatchError, match="codebook_size 512 but model.vision.codebook_size is 256"):
        check_store_fits_model("s", {**store, "vision_vocab_size": 258}, vision)
    with pytest.raises(DataModelMismatchError, match="tokens_per_frame 64"):
        check_store_fits_model("s", {**store, "vision_vocab_size": 258, "codebook_size": 256,
                                     "tokens_per_frame": 64}, vision)
    check_store_fits_model("s", {**store, "vision_vocab_size": 258, "codebook_size": 256}, vision)
    # a text store records the data config's codebook too; it does not matter without vision tokens
    check_store_fits_model("s", {"text_vocab_size": VOCAB, "vision_vocab_size": 0, "codebook_size": 8192,
                                 "num_vision_tokens": 0}, text_only)


def test_cli_refuses_a_mismatched_store_in_one_line(tmp_path, capsys):
    store = write_store(tmp_path / "store", text_vocab_size=2048)
    config_file = tmp_path / "tiny.yaml"
    save_config(tiny_config(tmp_path / "run"), config_file)
    code = main(["train", "--config", str(config_file), "--data.store_path", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--model.vocab_size 2048" in err and len(err.splitlines()) == 1


def test_finished_run_rerun_with_more_steps_continues(tmp_path, monkeypatch):
    first = train(tiny_config(tmp_path, "--train.steps", "2"), source=examples())
    assert first[-1].steps == 2 and (tmp_path / "model" / "params").exists()
    assert train(tiny_config(tmp_path, "--train.steps", "2"), source=examples()) == []

    # from here on no random initialisation may happen: resuming restores straight into the
    # abstract state, and init_from reads the weights into the abstract parameters
    def no_random_init(self):
        raise AssertionError("random parameters were created")

    monkeypatch.setattr(TrainSetup, "create_params", no_random_init)
    finetune = train(tiny_config(tmp_path / "finetune", "--train.steps", "1", "--checkpoint.init_from",
                                 str(tmp_path / "model"), "--train.lr", "1e-30"), source=examples())
    assert finetune[-1].steps == 1
    for got, want in zip(jax.tree.leaves(nnx.state(lwm.load_model(str(tmp_path / "finetune" / "model")), nnx.Param)),
                         jax.tree.leaves(nnx.state(lwm.load_model(str(tmp_path / "model")), nnx.Param))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    more = train(tiny_config(tmp_path, "--train.steps", "4"), source=examples())
    assert more[-1].steps == 4 and not more[-1].preempted
    assert sorted(losses_by_step(tmp_path)) == [1, 2, 3, 4]
    assert newest_step_on_disk(tmp_path / "checkpoints") == 4
    assert (tmp_path / "model" / "params").exists() and not list(tmp_path.glob("model.*"))


def test_nan_before_any_checkpoint_does_not_claim_one(tmp_path):
    exploding = tiny_config(tmp_path, "--train.steps", "4", "--checkpoint.every_steps", "100",
                            "--train.lr", "1e35", "--train.warmup_steps", "0")
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written yet") as error:
        train(exploding, source=examples())
    assert "intact" not in str(error.value)
