"""Writers stay inside their folders, replace files whole, and leave no temp files when a write fails."""

import pytest
import torch

from moda import features, teacher
from moda.paths import replacing_atomically, write_atomically


class WriteFailed(Exception):
    """Raised by a test's write callback half-way through a write."""


def half_write_then_fail(handle):
    handle.write(b"new content, cut sh")
    raise WriteFailed("the disk filled up")


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes: a failed write leaves the old file and no temp file
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interruption", [WriteFailed, KeyboardInterrupt])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path, interruption):
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b"old content\n")

    def write(handle):
        handle.write(b"new content, cut sh")
        raise interruption("stopped mid-write")

    with pytest.raises(interruption):
        write_atomically(path, write)
    assert path.read_bytes() == b"old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(WriteFailed):
        write_atomically(tmp_path / "new.json", half_write_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "meta.json"
    path.write_bytes(b"old")
    write_atomically(path, lambda handle: handle.write(b"new"))
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_a_failed_replacement_made_another_way_leaves_no_temp_file(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(b"old image")
    with pytest.raises(WriteFailed):
        with replacing_atomically(path) as temp:
            temp.write_bytes(b"half an ima")
            raise WriteFailed("copy interrupted")
    assert path.read_bytes() == b"old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.jpg"]


def test_build_dataset_leaves_no_temp_image_when_a_copy_fails(tmp_path, monkeypatch):
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"a photo's bytes")
    output_dir = tmp_path / "out"

    def no_links(src, dst):
        raise OSError("another file system: no hard links")

    def copy_cut_short(src, dst):
        with open(dst, "wb") as handle:
            handle.write(b"a pho")
        raise WriteFailed("the disk filled up")

    monkeypatch.setattr(teacher.os, "link", no_links)
    monkeypatch.setattr(teacher.shutil, "copyfile", copy_cut_short)
    with pytest.raises(WriteFailed):
        teacher.place_image(str(source), output_dir, "images/photo.jpg")
    assert list((output_dir / "images").iterdir()) == []


def test_the_feature_cache_leaves_no_temp_file_when_a_write_fails(tmp_path, monkeypatch):
    cache = features.FeatureCache(tmp_path, "pixels")
    cache.put("ab12", torch.ones(3))

    def save_cut_short(handle, array):
        handle.write(b"\x93NUMPY")
        raise WriteFailed("the disk filled up")

    monkeypatch.setattr(features.np, "save", save_cut_short)
    with pytest.raises(WriteFailed):
        cache.put("ab12", torch.zeros(3))
    assert torch.equal(cache.get("ab12"), torch.ones(3))
    assert [p.name for p in cache.path("ab12").parent.iterdir()] == ["ab12.npy"]
