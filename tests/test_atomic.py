"""Atomic writes: the old file survives a writer that fails half way; no temp files are left."""
import pytest

from pic_core.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as handle:
        handle.write(b"new but incomplete")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_text_writes_create_folders_and_replace_whole_files(tmp_path):
    target = tmp_path / "a" / "b.csv"
    atomic_write_text(target, "x,y\n1,2\n")
    atomic_write_text(target, "x\n")
    assert target.read_text() == "x\n"


def test_only_whole_file_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "f", "ab"):
        pass
