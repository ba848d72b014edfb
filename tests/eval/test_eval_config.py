"""`lwm eval`'s config: the presets load, and wrong settings name the field and the fix."""

from pathlib import Path

import pytest

from lwm.config import ConfigError, load_config
from lwm.config.eval import RULER_TASKS, EvalRunConfig
from lwm.eval.ruler.tasks import TASKS

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"


def test_presets_load():
    tiny = load_config(EvalRunConfig, CONFIGS / "ruler-tiny.yaml", ["--load.model", "m"])
    assert tiny.suite == "ruler" and tiny.ruler.lengths == (1536, 2048) and len(tiny.ruler.tasks) == 11
    big = load_config(EvalRunConfig, CONFIGS / "ruler-7b-1m.yaml", ["--load.model", "m"])
    assert big.ruler.lengths[:6] == (4096, 8192, 16384, 32768, 65536, 131072) and big.ruler.lengths[-1] == 1 << 20
    assert big.mesh.sp == -1 and big.ruler.max_new_tokens == 0  # RULER's own answer budgets
    video = load_config(EvalRunConfig, CONFIGS / "vniah-tiny.yaml", ["--load.model", "m", "--load.vq", "v"])
    assert video.suite == "vniah" and video.vniah.frames == (8, 16, 32)
    assert tuple(TASKS) == RULER_TASKS


@pytest.mark.parametrize("overrides, message", [
    (["--ruler.tasks", "[niah_single_9]"], "unknown task 'niah_single_9'"),
    (["--ruler.tasks", "[qa_1]"], "ruler.squad is empty"),
    (["--ruler.tasks", "[qa_2]"], "ruler.hotpotqa is empty"),
    (["--ruler.lengths", "[0]"], "ruler.lengths"),
    (["--ruler.samples", "0"], "ruler.samples=0"),
    (["--cache.max_len", "1024"], "cache.max_len=1024 cannot hold"),
    (["--suite", "vniah"], "needs a VQ tokenizer"),
    (["--suite", "vniah", "--load.vq", "v", "--vniah.frames", "[1]"], "vniah.needle_frames=1 leaves no haystack"),
])
def test_wrong_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EvalRunConfig, CONFIGS / "ruler-tiny.yaml", ["--load.model", "m", *overrides])


def test_lengths_shorthand():
    from lwm.cli.eval import _length

    assert [_length(text) for text in ("4096", "4K", "128k", "1M")] == [4096, 4096, 131072, 1 << 20]
    with pytest.raises(ConfigError, match="not a length"):
        _length("four")
