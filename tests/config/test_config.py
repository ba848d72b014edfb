"""Config loading, dotted overrides, and every validation message."""

from pathlib import Path

import pytest

from lwm.config import ConfigError, MeshConfig, ModelConfig, TrainRunConfig, load_config, save_config
from lwm.demo import DemoConfig
from lwm.mesh import make_mesh, resolve_axis_sizes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


TRAIN_PRESETS = sorted(
    str(path.relative_to(CONFIGS))
    for pattern in ("*.yaml", "long/*.yaml", "vision/*.yaml", "chat/*.yaml")
    for path in CONFIGS.glob(pattern)
    if not path.name.startswith("demo")
)


@pytest.mark.parametrize("path", TRAIN_PRESETS)
def test_every_preset_loads_and_validates(path):
    config = load_config(TrainRunConfig, CONFIGS / path)
    assert config.model.num_layers > 0


def test_demo_config_and_launchers_point_at_real_presets():
    for name in ("demo.yaml", "demo-full.yaml"):
        assert load_config(DemoConfig, CONFIGS / name).model.num_layers > 0
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    launchers = sorted(scripts.glob("launch_*.sh"))
    assert len(launchers) == 4
    for launcher in launchers:
        named = [word for word in launcher.read_text().split() if word.startswith("configs/")]
        assert named and all((CONFIGS.parent / path).is_file() for path in named), launcher


def test_stage_progression_preset():
    config = load_config(TrainRunConfig, CONFIGS / "long/lwm-text-stages.yaml")
    assert [(s.seq_len, s.rope_theta) for s in config.stages] == [
        (32768, 1e6), (131072, 1e7), (262144, 1e7), (524288, 2.5e7), (1048576, 5e7)]


def test_long_context_presets_follow_lwm_progression():
    theta = {name: load_config(TrainRunConfig, CONFIGS / f"long/lwm-text-{name}.yaml").model.rope_theta
             for name in ("128k", "256k", "512k", "1m")}
    assert theta == {"128k": 1e7, "256k": 1e7, "512k": 2.5e7, "1m": 5e7}
    one_m = load_config(TrainRunConfig, CONFIGS / "long/lwm-text-1m.yaml")
    assert one_m.data.seq_len == one_m.model.max_seq_len == 1_048_576


def test_dotted_overrides_are_typed(tmp_path):
    config = load_config(
        TrainRunConfig, CONFIGS / "tiny.yaml",
        ["--train.lr", "3e-4", "--model.num_layers=2", "--mesh.fsdp", "4", "--model.remat", "full"],
    )
    assert config.train.lr == pytest.approx(3e-4) and isinstance(config.train.lr, float)
    assert config.model.num_layers == 2 and config.mesh.fsdp == 4 and config.model.remat == "full"
    # a saved config reloads to the same value
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(TrainRunConfig, tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("overrides, message", [
    (["--train.lrr", "1"], "did you mean 'lr'"),
    (["--model.num_layers", "many"], "model.num_layers"),
    (["--model.remat", "sometimes"], "model.remat"),
    (["--train.lr"], "has no value"),
    (["train.lr", "1"], "expected --section.field"),
    (["--model.num_kv_heads", "3"], "model.num_kv_heads=3 must divide model.num_heads=4"),
    (["--model.hidden_size", "250"], "model.hidden_size=250 is not divisible by model.num_heads=4"),
    (["--mesh.dp", "-1"], "at most one axis may take the remaining devices"),
    (["--mesh.tp", "0"], "mesh.tp=0"),
    (["--mesh.sp", "3"], "data.seq_len=256 is not divisible by mesh.sp=3"),
    (["--data.seq_len", "4096"], "data.seq_len=4096 exceeds model.max_seq_len=2048"),
    (["--mesh.tp", "3"], "model.num_heads=4 is not divisible by mesh.tp=3"),
    (["--model.attention", "ring", "--mesh.sp", "2", "--model.query_chunk_size", "96"],
     "model.query_chunk_size=96 does not divide the per-device length data.seq_len/mesh.sp=128"),
    (["--train.warmup_steps", "500"], "train.warmup_steps=500 must lie between 0 and train.steps=200"),
    (["--train.text_loss_weight", "0", "--train.vision_loss_weight", "0"], "both 0"),
    (["--train.vision_loss_weight", "-1"], "must not be negative"),
    (["--mesh.dp", "3", "--mesh.fsdp", "1"], "data.batch_size=8 does not divide over the 3 devices"),
])
def test_validation_names_the_wrong_value(overrides, message):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(TrainRunConfig, CONFIGS / "tiny.yaml", overrides)
    assert message in str(error.value)


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  hidden_size: 64\n  num_heads: [4\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+"):
        load_config(TrainRunConfig, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainRunConfig, tmp_path / "missing.yaml")
    (tmp_path / "unknown.yaml").write_text("modle:\n  hidden_size: 64\n")
    with pytest.raises(ConfigError, match="unknown.yaml.*modle"):
        load_config(TrainRunConfig, tmp_path / "unknown.yaml")


def test_mesh_resolution_and_errors():
    assert resolve_axis_sizes(MeshConfig(dp=2, fsdp=-1, tp=2, sp=1), 8) == {"dp": 2, "fsdp": 2, "tp": 2, "sp": 1}
    with pytest.raises(ConfigError, match="does not divide 8"):
        resolve_axis_sizes(MeshConfig(dp=3, fsdp=-1), 8)
    with pytest.raises(ConfigError, match="needs 4 devices but 8 are available"):
        resolve_axis_sizes(MeshConfig(dp=1, fsdp=2, tp=2, sp=1), 8)
    mesh = make_mesh(MeshConfig(dp=1, fsdp=2, tp=2, sp=2))
    assert dict(mesh.shape) == {"dp": 1, "fsdp": 2, "tp": 2, "sp": 2}


def test_vision_vocabulary_is_stated_once_in_the_model(tmp_path):
    config = load_config(TrainRunConfig, CONFIGS / "tiny.yaml",
                         ["--model.vision_vocab_size", "514", "--model.vision.codebook_size", "512",
                          "--model.vision.tokens_per_frame", "64"])
    # The data section reads the model's vocabulary without being told.
    assert (config.data.codebook_size, config.data.tokens_per_frame) == (512, 64)
    assert config.data.vision_vocab_size == 514 and config.model.eov_token == 513
    # A data section that names another VQ tokenizer's vocabulary is refused, naming both.
    with pytest.raises(ConfigError, match="data.vision .*differs from model.vision"):
        load_config(TrainRunConfig, CONFIGS / "tiny.yaml",
                    ["--model.vision_vocab_size", "514", "--model.vision.codebook_size", "512",
                     "--data.vision.codebook_size", "256"])
    # The old per-section fields are gone, with a pointer to where the value lives now.
    with pytest.raises(ConfigError, match="did you mean 'vision'|codebook_size"):
        load_config(TrainRunConfig, CONFIGS / "tiny.yaml", ["--data.codebook_size", "512"])


def test_a_model_yaml_from_before_the_vision_section_still_loads(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("vocab_size: 2048\nhidden_size: 64\nnum_heads: 4\nintermediate_size: 96\nnum_layers: 2\n"
                    "vision_vocab_size: 514\ncodebook_size: 512\ntokens_per_frame: 64\n")
    config = load_config(ModelConfig, path)
    assert (config.codebook_size, config.tokens_per_frame, config.eov_token) == (512, 64, 513)
