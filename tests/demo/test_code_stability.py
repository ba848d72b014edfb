import numpy as np
import pytest

from lwm.demo.code_stability import code_stability


def test_counts_changes_where_pixels_stay():
    # One 16x16 video of 2 frames, 4x4 codes of 4x4-pixel patches: only patch (0, 0) changes.
    frames = np.zeros((1, 2, 16, 16, 3), np.uint8)
    frames[0, 1, 1, 2] = 200
    codes = np.zeros((1, 2, 4, 4), np.int32)
    codes[0, 1, 0, 0] = 7   # under the changed patch
    codes[0, 1, 0, 1] = 3   # its patch is the same, a neighbour changed
    codes[0, 1, 3, 3] = 9   # its patch and all its neighbours are the same
    got = code_stability(frames, codes.reshape(1, 2, 16))
    assert got["codes_changed"] == pytest.approx(3 / 16)
    assert got["patches_changed"] == pytest.approx(1 / 16)
    assert got["changed_where_patch_changed"] == pytest.approx(1.0)
    assert got["changed_where_patch_same"] == pytest.approx(2 / 15)
    # 12 patches are not (0, 0) or next to it; one of them changed its code.
    assert got["changed_where_neighbourhood_same"] == pytest.approx(1 / 12)
    assert got["codes_used"] == 4


def test_codes_that_do_not_tile_the_frames_are_refused():
    with pytest.raises(ValueError, match="do not tile"):
        code_stability(np.zeros((1, 2, 16, 16, 3), np.uint8), np.zeros((1, 2, 15), np.int32))
