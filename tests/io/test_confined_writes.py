"""Writers stay inside their folders, replace files whole, and leave no temp files when a write fails."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_hf
from moda.catalog import build_dataset, caption
from moda.cli import build_dataset as build_dataset_command, caption as caption_command
from moda.data import features
from moda.io.locks import OutputLockedError, exclusive_lock, lock_file_for
from moda.io.paths import confined_path, replacing_atomically, write_atomically
from moda.train import checkpointing
from tests.conftest import REPO_ROOT


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

    monkeypatch.setattr(build_dataset.os, "link", no_links)
    monkeypatch.setattr(build_dataset.shutil, "copyfile", copy_cut_short)
    with pytest.raises(WriteFailed):
        build_dataset.place_image(str(source), output_dir / "images" / "photo.jpg")
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


def test_a_model_card_whose_writing_fails_leaves_the_earlier_card(tmp_path, tiny_moda_dir, monkeypatch):
    from huggingface_hub import ModelCard

    from hub_card.card import write_model_card

    folder = tmp_path / "model"
    shutil.copytree(tiny_moda_dir, folder)
    card = write_model_card(folder)
    earlier = card.read_bytes()

    def rendering_fails(self):
        raise WriteFailed("the card could not be rendered")

    monkeypatch.setattr(ModelCard, "__str__", rendering_fails)
    with pytest.raises(WriteFailed):
        write_model_card(folder, training_info={"dataset": "another catalog"})
    assert card.read_bytes() == earlier
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_the_cards_example_photos_are_never_written_through_a_link_out_of_the_folder(tmp_path, tiny_moda_dir):
    from hub_card.card import write_model_card

    folder, outside = tmp_path / "model", tmp_path / "outside"
    shutil.copytree(tiny_moda_dir, folder)
    outside.mkdir()
    (folder / "examples").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="example photo 'examples/shirt.jpg' leads out of .* through a symbolic link"):
        write_model_card(folder)
    assert list(outside.iterdir()) == [] and not (folder / "README.md").exists()


def test_loss_curves_whose_writing_fails_leave_the_earlier_picture(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "loss_curves.png"
    path.write_bytes(b"the earlier picture")

    def savefig_cut_short(self, target, **kwargs):
        if hasattr(target, "write"):
            target.write(b"\x89PNG")
        else:
            Path(target).write_bytes(b"\x89PNG")
        raise WriteFailed("the disk filled up")

    monkeypatch.setattr(Figure, "savefig", savefig_cut_short)
    with pytest.raises(WriteFailed):
        train_hf.save_loss_curves([{"step": 1, "loss": 2.0}, {"step": 1, "eval_loss": 2.5}], path)
    assert path.read_bytes() == b"the earlier picture" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_staged_final_model_is_moved_in_weights_last_and_folders_whole_and_stale_weights_go(tmp_path, monkeypatch):
    output = tmp_path / "out"
    (output / "adapter").mkdir(parents=True)
    (output / "adapter" / "from_the_old_run.json").write_text("{}")
    (output / "model.safetensors").write_bytes(b"old weights")
    (output / "checkpoint-5").mkdir()
    staging = output / checkpointing.FINAL_STAGING_DIR
    (staging / "adapter").mkdir(parents=True)
    (staging / "adapter" / "adapter_model.safetensors").write_bytes(b"new adapter")
    for name, data in [("model-00002-of-00002.safetensors", b"b"), ("model.safetensors.index.json", b"{}"),
                       ("model-00001-of-00002.safetensors", b"a"), ("config.json", b"{}")]:
        (staging / name).write_bytes(data)
    moved, replace = [], os.replace

    def recording_replace(source, target):
        moved.append(os.path.basename(target))
        replace(source, target)

    monkeypatch.setattr(checkpointing.os, "replace", recording_replace)
    checkpointing.publish_staged_folder(staging, output)
    assert moved == [".replaced-adapter", "adapter", "config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert [p.name for p in (output / "adapter").iterdir()] == ["adapter_model.safetensors"]
    # The old single weights file would be loaded before the new index: it goes.
    assert sorted(p.name for p in output.iterdir()) == [
        "adapter", "checkpoint-5", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json"]


# ---------------------------------------------------------------------------------------------------------------
# Names from data stay inside their folder
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, inside", [
    ("a.jpg", "a.jpg"), ("sub/a.jpg", "sub/a.jpg"), ("./a.jpg", "a.jpg"), ("sub/../a.jpg", "a.jpg"),
    ("..a.jpg", "..a.jpg"),
])
def test_a_name_inside_the_folder_is_its_resolved_path(tmp_path, name, inside):
    assert confined_path(tmp_path / "root", name, "file_name") == (tmp_path / "root" / inside).resolve()


@pytest.mark.parametrize("name, problem", [
    ("../escape.jpg", "leads out of"),
    ("a/../../x.jpg", "leads out of"),
    ("..", "leads out of"),
    ("/abs/path.jpg", "is an absolute path"),
    ("a\0b.jpg", "holds a NUL character"),
    ("", "names the folder"),
    (".", "names the folder"),
    ("link/x.jpg", "through a symbolic link"),
    ("link", "through a symbolic link"),
])
def test_a_name_leading_out_of_the_folder_is_refused_by_name(tmp_path, name, problem):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="file_name") as raised:
        confined_path(root, name, "file_name")
    assert problem in str(raised.value) and repr(name) in str(raised.value)


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_build_dataset_writes_no_image_outside_its_images_folder(tmp_path, product_images):
    """Metadata file names leading out of the output (.., absolute, a NUL, a symlinked folder) are bad rows, each
    named; nothing is read through them or written anywhere but the output, and the other rows are built."""
    catalog, outside, output = tmp_path / "catalog", tmp_path / "outside", tmp_path / "out"
    for folder in (catalog / "images", catalog / "a", catalog / "sub", tmp_path / "abs", outside, output / "images"):
        folder.mkdir(parents=True)
    # Every name the metadata gives is a real picture: only the name decides where its copy would go.
    product_images[0].save(catalog / "images" / "0.jpg")
    product_images[1].save(catalog / "images" / "1.jpg")
    product_images[2].save(tmp_path / "escape.jpg")  # catalog/../escape.jpg, catalog/a/../../escape.jpg
    product_images[3].save(tmp_path / "abs" / "path.jpg")
    product_images[0].save(catalog / "sub" / "s.jpg")
    # An output folder from before, whose images/sub leads elsewhere.
    (output / "images" / "sub").symlink_to(outside, target_is_directory=True)
    metadata = {"Colour": "Red", "Gender": "Men", "ProductType": "Shirts", "Usage": "Casual"}
    names = ["images/0.jpg", "../escape.jpg", "a/../../escape.jpg", str(tmp_path / "abs" / "path.jpg"),
             "sub/s.jpg", "images/\0.jpg", "images/1.jpg"]
    with open(tmp_path / "items.jsonl", "w") as handle:
        for name in names:
            handle.write(json.dumps({"file_name": name, **metadata}) + "\n")
    before = tree(tmp_path)

    assert build_dataset_command.main(["--images", str(catalog), "--metadata", str(tmp_path / "items.jsonl"),
                         "--output_dir", str(output)]) == 0

    assert list(outside.iterdir()) == []
    written = [row["file_name"] for row in csv.DictReader(open(output / "metadata.csv"))]
    assert written == ["images/0.jpg", "images/1.jpg"]
    new_files = sorted(set(tree(tmp_path)) - set(before))
    assert new_files == ["out/bad_rows.csv", "out/build_settings.json", "out/images/0.jpg", "out/images/1.jpg",
                         "out/metadata.csv", "out/progress.jsonl"]
    bad = list(csv.DictReader(open(output / "bad_rows.csv")))
    assert [row["where"] for row in bad] == [f"{tmp_path / 'items.jsonl'} row {i + 1} ({names[i]})"
                                             for i in (1, 2, 3, 4, 5)]
    reasons = [row["reason"] for row in bad]
    assert "'../escape.jpg' leads out of" in reasons[0] and "'..' climbs above it" in reasons[0]
    assert "'a/../../escape.jpg' leads out of" in reasons[1]
    assert "is an absolute path" in reasons[2] and str(tmp_path / "abs" / "path.jpg") in reasons[2]
    assert "'sub/s.jpg' leads out of" in reasons[3] and "through a symbolic link" in reasons[3]
    assert "holds a NUL character" in reasons[4]
    assert all(reason.startswith("file_name ") for reason in reasons)


def test_build_dataset_reads_and_copies_no_file_outside_its_input_folder(tmp_path, product_images):
    """A catalog's symbolic link to a file elsewhere (a private photo) is a bad row: the file is neither described nor
    linked or copied into the output; a link that stays inside the input is copied as the file it names."""
    catalog, private, output = tmp_path / "catalog", tmp_path / "private", tmp_path / "out"
    for folder in (catalog / "images", private):
        folder.mkdir(parents=True)
    product_images[0].save(catalog / "images" / "0.jpg")
    product_images[1].save(private / "passport.jpg")
    (catalog / "images" / "evil.jpg").symlink_to(private / "passport.jpg")
    (catalog / "images" / "alias.jpg").symlink_to(catalog / "images" / "0.jpg")
    metadata = {"Colour": "Red", "Gender": "Men", "ProductType": "Shirts", "Usage": "Casual"}
    with open(catalog / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file_name", *metadata])
        writer.writeheader()
        for name in ("images/0.jpg", "images/evil.jpg", "images/alias.jpg"):
            writer.writerow({"file_name": name, **metadata})

    assert build_dataset_command.main(["--images", str(catalog), "--output_dir", str(output)]) == 0

    written = [row["file_name"] for row in csv.DictReader(open(output / "metadata.csv"))]
    assert written == ["images/0.jpg", "images/alias.jpg"]
    assert not (output / "images" / "evil.jpg").exists() and not (output / "images" / "evil.jpg").is_symlink()
    assert not (output / "images" / "alias.jpg").is_symlink()
    assert (output / "images" / "alias.jpg").read_bytes() == (catalog / "images" / "0.jpg").read_bytes()
    bad = list(csv.DictReader(open(output / "bad_rows.csv")))
    assert len(bad) == 1 and "images/evil.jpg" in bad[0]["where"]
    assert "lies outside" in bad[0]["reason"] and str(private / "passport.jpg") in bad[0]["reason"]


# ---------------------------------------------------------------------------------------------------------------
# One run at a time on an output
# ---------------------------------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from moda.io.locks import exclusive_lock
with exclusive_lock(sys.argv[1], "a test's other run"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def lock_holder():
    """Starts another process that holds the lock of a path (as another run would) until it is killed."""
    started = []

    def hold(path):
        process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], cwd=REPO_ROOT, text=True,
                                   env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), stdout=subprocess.PIPE)
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()


def test_a_second_caption_run_is_refused_naming_the_pid_that_holds_the_output(tmp_path, tiny_moda_dir, red_image,
                                                                                lock_holder, capsys):
    (tmp_path / "photos").mkdir()
    red_image.save(tmp_path / "photos" / "red.png")
    output = tmp_path / "captions.jsonl"
    holder = lock_holder(output)
    argv = ["--model", str(tiny_moda_dir), "--images", str(tmp_path / "photos"), "--output", str(output),
            "--max_new_tokens", "2"]

    assert caption_command.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("moda caption: error: ") == 1 and "Traceback" not in err
    assert f"--output {output} is being written by another run" in err
    assert f"{lock_file_for(output)} is held by PID {holder.pid}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl.lock", "photos"]  # nothing written

    holder.kill()
    holder.wait()
    assert caption_command.main(argv) == 0  # the killed run's lock does not block the next one
    assert [row["id"] for row in caption.read_output(output)] == ["red.png"]
    assert not lock_file_for(output).exists()


def test_a_second_build_dataset_run_is_refused_naming_the_pid(tmp_path, product_images, lock_holder, capsys):
    catalog = tmp_path / "catalog"
    (catalog / "images").mkdir(parents=True)
    product_images[0].save(catalog / "images" / "0.jpg")
    with open(catalog / "metadata.csv", "w") as handle:
        handle.write("file_name,Colour,ProductType\nimages/0.jpg,Red,Shirts\n")
    output = tmp_path / "out"
    holder = lock_holder(output)

    assert build_dataset_command.main(["--images", str(catalog), "--output_dir", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.count("moda build-dataset: error: ") == 1
    assert f"--output_dir {output} is being written by another run" in err and f"PID {holder.pid}" in err
    assert not output.exists()


def test_a_killed_holder_does_not_block_the_next_run(tmp_path, lock_holder):
    output = tmp_path / "captions.jsonl"
    holder = lock_holder(output)
    with pytest.raises(OutputLockedError, match=f"held by PID {holder.pid}"):
        with exclusive_lock(output, "--output captions.jsonl"):
            pass
    holder.send_signal(signal.SIGKILL)  # no clean-up: the lock file stays, with the dead run's PID in it
    holder.wait()
    assert lock_file_for(output).read_text().strip() == str(holder.pid)
    with exclusive_lock(output, "--output captions.jsonl") as lock_file:
        assert lock_file.read_text().strip() == str(os.getpid())
    assert not lock_file.exists()


def test_a_symbolic_link_at_the_lock_name_is_refused_and_its_target_left_alone(tmp_path):
    victim = tmp_path / "important.txt"
    victim.write_text("keep me\n")
    output = tmp_path / "captions.jsonl"
    lock_file_for(output).symlink_to(victim)
    with pytest.raises(OutputLockedError, match="cannot be opened as a plain file"):
        with exclusive_lock(output, "--output captions.jsonl"):
            pass
    assert victim.read_text() == "keep me\n" and lock_file_for(output).is_symlink()


def test_two_names_of_one_output_share_its_lock(tmp_path):
    output = tmp_path / "captions.jsonl"
    alias = tmp_path / "other-name.jsonl"
    alias.symlink_to(output)
    with exclusive_lock(output, "--output captions.jsonl"):
        with pytest.raises(OutputLockedError, match="--output other-name.jsonl"):
            with exclusive_lock(alias, "--output other-name.jsonl"):
                pass


def test_the_ranks_of_one_caption_run_share_the_output_and_each_shard_has_one_writer(tmp_path):
    output = tmp_path / "captions.jsonl"
    with caption.output_lock(output, 0), caption.output_lock(output, 1), caption.output_lock(output, 2):
        with pytest.raises(OutputLockedError, match="--output"):
            with caption.output_lock(output, 0):
                pass
        with pytest.raises(OutputLockedError, match="rank 1's shard"):
            with caption.output_lock(output, 1):
                pass
    assert sorted(tmp_path.iterdir()) == []
