"""`data_prep.folders.replace_folder`: a finished folder takes the place of the old one by renames only."""

from __future__ import annotations

from data_prep.folders import replace_folder


def test_replace_folder_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    staging = tmp_path / ".model.build_1"
    staging.mkdir()
    (staging / "weights").write_text("new")
    replace_folder(staging, out)
    assert (out / "weights").read_text() == "new"
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the renamed-aside old copy is gone


def test_replace_folder_creates_the_target_when_absent(tmp_path):
    staging = tmp_path / ".model.build_2"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    replace_folder(staging, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").read_text() == "{}" and not staging.exists()
