"""Label files: exact round trips, palette indices, the compact label encoding, one-line errors."""

import cv2
import numpy as np
import pytest
from PIL import Image

from segadapt.data.io import read_label, write_png
from segadapt.errors import DataError


def _blocky(rng, h, w, high, dtype=np.uint8):
    small = rng.integers(0, high, (h // 8, w // 8)).astype(dtype)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def test_label_round_trip_exact_and_compact(tmp_path):
    rng = np.random.default_rng(0)
    lab = _blocky(rng, 256, 512, 20)
    lab[::7, ::5] = 255  # ignore pixels scattered through the runs
    write_png(tmp_path / "a.png", lab, rgb=False)
    back = read_label(tmp_path / "a.png")
    assert back.dtype == np.uint8 and np.array_equal(back, lab)
    # the run-length encoding is what makes label folders small and quick to decode
    default = cv2.imencode(".png", lab)[1].size
    assert (tmp_path / "a.png").stat().st_size < default
    lab16 = _blocky(rng, 64, 64, 40000, np.uint16)
    write_png(tmp_path / "b.png", lab16, rgb=False)
    assert np.array_equal(read_label(tmp_path / "b.png"), lab16) and read_label(tmp_path / "b.png").dtype == np.uint16


def test_palette_label_gives_indices_not_colours(tmp_path):
    ids = np.array([[0, 1, 2], [18, 255, 3]], np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([(i * 53) % 256 for i in range(768)])
    im.save(tmp_path / "p.png")
    assert np.array_equal(read_label(tmp_path / "p.png"), ids)
    # a grey PNG whose bytes happen to look like palette colours is read as stored
    Image.fromarray(ids).save(tmp_path / "g.png")
    assert np.array_equal(read_label(tmp_path / "g.png"), ids)


def test_bad_label_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read label"):
        read_label(tmp_path / "missing.png")
    im = Image.fromarray(np.zeros((64, 64), np.uint8), mode="P")
    im.putpalette([0] * 768)
    im.save(tmp_path / "p.png")
    data = (tmp_path / "p.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # a palette file cut short by a crash
    with pytest.raises(DataError, match="cannot read label"):
        read_label(tmp_path / "cut.png")
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="3 channels"):
        read_label(tmp_path / "rgb.png")
