"""The command line under bad input and faults (issue 16): nothing overwritten, nothing mixed,
nothing stale, and one clear line for every user error.

Every test goes through ``napari_sam.cli.main`` as a user would; the table of what each case now
gives is docs/reliability.md.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import napari_sam
from napari_sam.cli import main
from napari_sam.synthetic import synthetic_nuclei
from napari_sam.volume.stack import RECORD

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image_path(image_file):
    """The path of the conftest's small tif."""
    return image_file[0]


@pytest.fixture
def engine_input(monkeypatch, tiny_load_model):
    """The images the command hands to the engine (``Segmenter.set_image``), in order."""
    seen = []

    class Recorder(napari_sam.Segmenter):
        def set_image(self, image, *args, **kwargs):
            seen.append(np.asarray(image))
            return super().set_image(image, *args, **kwargs)

    monkeypatch.setattr(napari_sam, "Segmenter", Recorder)
    return seen


def one_line_error(capsys, status, *patterns, code=2):
    """Assert a clean failure: exit ``code``, one line on stderr matching every pattern."""
    err = capsys.readouterr().err
    assert status == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam: "), err
    for pattern in patterns:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- #
# 1. nothing overwritten
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("command, output", [("segment", "mask.tif"), ("auto", "labels.npy")])
def test_an_existing_output_is_kept_unless_overwrite_is_given(image_path, tmp_path, capsys,
                                                             tiny_load_model, command, output):
    out = tmp_path / output
    out.write_bytes(b"earlier result")
    prompt = ["--point", "20,30"] if command == "segment" else ["--points-per-side", "4"]
    argv = [command, str(image_path), *prompt, "-o", str(out)]
    one_line_error(capsys, main(argv), r"exists: pass --overwrite to replace it")
    assert out.read_bytes() == b"earlier result"
    assert tiny_load_model == []  # refused before any work
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() != b"earlier result"
    assert files_in(tmp_path) == sorted([image_path.name, output])  # no temporary file left


@pytest.mark.parametrize("command", ["segment", "auto"])
@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_the_input_image_is_never_overwritten_not_even_with_overwrite(tmp_path, capsys,
                                                                      tiny_load_model, command,
                                                                      spelling):
    source = tmp_path / "x.tif"
    image, _ = synthetic_nuclei((48, 80), seed=2)
    tifffile.imwrite(source, image)
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    out = {"same": source, "dotdot": tmp_path / "sub" / ".." / "x.tif",
           "symlink": tmp_path / "link.tif", "hardlink": tmp_path / "link.tif"}[spelling]
    if spelling == "symlink":
        out.symlink_to(source)
    elif spelling == "hardlink":
        os.link(source, out)
    prompt = ["--point", "20,30"] if command == "segment" else []
    status = main([command, str(source), *prompt, "-o", str(out), "--overwrite"])
    one_line_error(capsys, status, r"is also an input of this command")
    assert source.read_bytes() == before


def test_the_checkpoint_is_never_overwritten(image_path, tmp_path, capsys, tiny_load_model):
    checkpoint = tmp_path / "weights.npy"
    checkpoint.write_bytes(b"weights")
    status = main(["segment", str(image_path), "--point", "1,1", "--checkpoint", str(checkpoint),
                   "-o", str(checkpoint), "--overwrite"])
    one_line_error(capsys, status, r"is also an input")
    assert checkpoint.read_bytes() == b"weights"


def test_an_output_in_a_missing_folder_is_refused_before_any_work(image_path, tmp_path, capsys,
                                                                  tiny_load_model):
    out = tmp_path / "nowhere" / "m.tif"
    status = main(["segment", str(image_path), "--point", "20,30", "-o", str(out)])
    one_line_error(capsys, status, r"the folder '.*nowhere' of .* does not exist: create it first")
    assert tiny_load_model == []


def test_sample_keeps_existing_files_unless_overwrite_is_given(tmp_path, capsys):
    image, labels = tmp_path / "x.tif", tmp_path / "y.tif"
    for path in (image, labels):
        path.write_bytes(b"keep")
    argv = ["sample", str(image), "--size", "32", "--labels", str(labels)]
    one_line_error(capsys, main(argv), r"x\.tif' exists: pass --overwrite")
    image.unlink()
    one_line_error(capsys, main(argv), r"y\.tif' exists: pass --overwrite")
    assert not image.exists() and labels.read_bytes() == b"keep"  # nothing half done
    assert main([*argv, "--overwrite"]) == 0
    assert tifffile.imread(labels).max() > 0


def test_sample_refuses_labels_onto_its_own_image(tmp_path, capsys):
    out = tmp_path / "x.tif"
    status = main(["sample", str(out), "--size", "32", "--labels", str(out), "--overwrite"])
    one_line_error(capsys, status, r"is also an input")
    assert not out.exists()


@pytest.fixture
def training_run(monkeypatch, tmp_path, tiny_load_model):
    """A labelled image pair and ``train`` replaced by a recorder (the checks come before it)."""
    from napari_sam.training import trainer

    image, labels = synthetic_nuclei((64, 64), seed=3)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    runs = []

    def fake_train(model, data, recipe, *, output, resume, **kwargs):
        runs.append(resume)
        return trainer.TrainingHistory()

    monkeypatch.setattr(trainer, "train", fake_train)
    return [f"{tmp_path / 'image.tif'}:{tmp_path / 'labels.tif'}", "--validation", "0"], runs


def test_train_keeps_an_earlier_model_unless_resume_or_overwrite(tmp_path, capsys, training_run):
    pair, runs = training_run
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"earlier model")
    status = main(["train", *pair, "-o", str(folder)])
    one_line_error(capsys, status, r"model\.pt' exists \(an earlier fine-tuned model\): pass "
                   r"--resume .* --overwrite")
    assert runs == []
    assert main(["train", *pair, "-o", str(folder), "--resume"]) == 0
    assert main(["train", *pair, "-o", str(folder), "--overwrite"]) == 0
    assert runs == [True, False]


def test_train_never_replaces_its_checkpoint(tmp_path, capsys, training_run):
    pair, runs = training_run
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"base")
    status = main(["train", *pair, "--checkpoint", str(folder / "model.pt"), "-o", str(folder),
                   "--overwrite"])
    one_line_error(capsys, status, r"is an input of this command and would be replaced")
    assert runs == [] and (folder / "model.pt").read_bytes() == b"base"


def test_an_interrupted_write_leaves_the_earlier_file_whole(image_path, tmp_path, capsys,
                                                            tiny_load_model, monkeypatch):
    """Ctrl-C in the middle of writing the mask: the old file is intact, no temporary is left."""
    out = tmp_path / "mask.tif"
    tifffile.imwrite(out, np.ones((4, 4), np.uint8))
    before = out.read_bytes()
    real_imwrite = tifffile.imwrite

    def torn_write(file, data, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            Path(file).write_bytes(b"torn")
        else:
            file.write(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", torn_write)
    status = main(["segment", str(image_path), "--point", "20,30", "-o", str(out), "--overwrite"])
    monkeypatch.setattr(tifffile, "imwrite", real_imwrite)
    one_line_error(capsys, status, r"^napari-sam: interrupted: nothing was written$", code=130)
    assert out.read_bytes() == before
    assert files_in(tmp_path) == sorted([image_path.name, out.name])


# --------------------------------------------------------------------------- #
# 4. image files read and written as they are meant
# --------------------------------------------------------------------------- #
def test_a_palette_png_reaches_the_engine_as_its_colours(tmp_path, engine_input):
    indices = np.arange(48 * 80).reshape(48, 80) % 4
    palette = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10], [250, 250, 250]], np.uint8)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "p.png")
    assert main(["segment", str(tmp_path / "p.png"), "--point", "20,30", "-o",
                 str(tmp_path / "m.tif")]) == 0
    np.testing.assert_array_equal(engine_input[0], palette[indices])


def test_grey_with_alpha_reaches_the_engine_as_grey(tmp_path, engine_input):
    grey = (np.arange(48 * 80).reshape(48, 80) % 256).astype(np.uint8)
    alpha = np.full_like(grey, 255)
    Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(tmp_path / "la.png")
    assert main(["segment", str(tmp_path / "la.png"), "--point", "20,30", "-o",
                 str(tmp_path / "m.tif")]) == 0
    np.testing.assert_array_equal(engine_input[0], grey)


def test_a_cmyk_jpeg_reaches_the_engine_as_rgb(tmp_path, engine_input):
    rgb = np.zeros((48, 80, 3), np.uint8)
    rgb[:, 40:] = (200, 40, 40)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert main(["segment", str(tmp_path / "c.jpg"), "--point", "20,30", "-o",
                 str(tmp_path / "m.tif")]) == 0
    seen = engine_input[0]
    assert seen.shape == (48, 80, 3)
    np.testing.assert_allclose(seen[:, 60].mean(0), (200, 40, 40), atol=8)


@pytest.mark.parametrize("pages", [3, 4])
def test_a_tiff_of_a_few_planes_is_refused_not_read_as_colours(tmp_path, capsys, tiny_load_model,
                                                               pages):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((pages, 32, 32), np.uint16), photometric="minisblack")
    status = main(["segment", str(path), "--point", "1,1", "-o", str(tmp_path / "m.tif")])
    one_line_error(capsys, status, rf"is a 3D stack \(Q={pages}", r"one 2D image", r"segment-stack")
    assert tiny_load_model == [] and not (tmp_path / "m.tif").exists()


def test_an_rgb_tiff_stored_as_separate_planes_is_one_colour_image(tmp_path, engine_input):
    rgb = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert main(["segment", str(path), "--point", "20,30", "-o", str(tmp_path / "m.tif")]) == 0
    np.testing.assert_array_equal(engine_input[0], rgb)


def test_an_animation_is_refused_not_read_as_its_first_frame(tmp_path, capsys, tiny_load_model):
    frames = [Image.fromarray(np.full((32, 32), value, np.uint8)) for value in (0, 128, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    status = main(["segment", str(tmp_path / "a.gif"), "--point", "1,1", "-o",
                   str(tmp_path / "m.tif")])
    one_line_error(capsys, status, r"holds 3 frames, not one 2D image")


@pytest.mark.parametrize("name", ["m.jpg", "m.jpeg", "m.webp"])
def test_a_lossy_mask_format_is_refused(image_path, tmp_path, capsys, tiny_load_model, name):
    status = main(["segment", str(image_path), "--point", "20,30", "-o", str(tmp_path / name)])
    one_line_error(capsys, status, r"write the mask to a \.tif, \.png or \.npy file", r"lossy")
    assert tiny_load_model == [] and not (tmp_path / name).exists()


def test_sample_writes_what_the_extension_says(tmp_path):
    expected, _ = synthetic_nuclei((32, 32), seed=0)
    assert main(["sample", str(tmp_path / "x.png"), "--size", "32"]) == 0
    with Image.open(tmp_path / "x.png") as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png), expected)  # 16-bit grey, exact
    assert main(["sample", str(tmp_path / "x.npy"), "--size", "32"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), expected)


def test_sample_3d_before_the_file_says_to_name_the_file_first(tmp_path, capsys):
    """``--3d`` takes an optional number of planes, so argparse gives it the file named after
    it; the error says how to write the command instead of only 'invalid int value'."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--3d", str(tmp_path / "s.tif")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"name the file first: napari-sam sample {tmp_path / 's.tif'} --3d" in error
    assert files_in(tmp_path) == []
    with pytest.raises(SystemExit):
        main(["sample", str(tmp_path / "s.tif"), "--3d", "0"])
    assert "expected at least 1 plane, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, pattern", [
    (["--3d", "2"], r"write a stack to a \.tif or \.npy file, not 'x\.png'"),
    (["--labels", "LABELS.png"], r"write the labels to a \.tif or \.npy file, not 'l\.png'"),
])
def test_sample_refuses_files_that_cannot_hold_its_output(tmp_path, capsys, argv, pattern):
    argv = [arg.replace("LABELS", str(tmp_path / "l")) for arg in argv]
    status = main(["sample", str(tmp_path / "x.png"), "--size", "32", *argv])
    one_line_error(capsys, status, pattern)
    assert files_in(tmp_path) == []


# --------------------------------------------------------------------------- #
# 7. faults: one line, a non-zero status, no traceback
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "cdua"])
def test_a_device_this_machine_lacks_is_one_line_naming_those_it_has(image_path, tmp_path, capsys,
                                                                    monkeypatch, device):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    status = main(["segment", str(image_path), "--point", "20,30", "--device", device, "-o",
                   str(tmp_path / "m.tif")])  # the real load_model: the shipped default model
    one_line_error(capsys, status, rf"device '{device}' is not available here",
                   r"use one of auto, cpu$")


@pytest.mark.parametrize("value, pattern", [
    ("0", r"points_per_side must be an integer >= 1, got 0"),
    ("4096", r"points_per_side=4096 is a grid of 16,777,216 prompts"),
])
def test_a_grid_the_engine_refuses_is_one_line(image_path, tmp_path, capsys, tiny_load_model,
                                               value, pattern):
    status = main(["auto", str(image_path), "--sampler", "grid", "--points-per-side", value,
                   "-o", str(tmp_path / "l.tif")])
    one_line_error(capsys, status, pattern)
    assert not (tmp_path / "l.tif").exists()


def test_a_scheduler_without_distributed_is_one_line(tmp_path, capsys, monkeypatch,
                                                     tiny_load_model):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    np.save(tmp_path / "volume.npy", np.zeros((2, 32, 32), np.uint16))
    out = tmp_path / "labels.zarr"
    status = main(["segment-stack", str(tmp_path / "volume.npy"), str(out),
                   "--scheduler", "tcp://127.0.0.1:8786"])
    one_line_error(capsys, status, r"needs dask.distributed", r"pip install distributed")
    assert not out.exists()


def test_a_missing_optional_package_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the progress bars' package
    np.save(tmp_path / "volume.npy", np.zeros((2, 32, 32), np.uint16))
    status = main(["segment-stack", str(tmp_path / "volume.npy"), str(tmp_path / "labels.zarr")])
    one_line_error(capsys, status, r"^napari-sam: error: this needs the package 'tqdm', which is "
                   r"not installed: pip install tqdm$")


def test_ctrl_c_in_segment_stack_says_what_is_kept_and_how_to_resume(tmp_path, capsys,
                                                                     monkeypatch):
    from napari_sam.volume import stack

    def interrupted_after_two_planes(source, output, **kwargs):
        (Path(output) / RECORD / "done").mkdir(parents=True)
        for plane in (0, 1):
            (Path(output) / RECORD / "done" / str(plane)).touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(stack, "segment_stack", interrupted_after_two_planes)
    out = tmp_path / "labels.zarr"
    status = main(["segment-stack", "volume.npy", str(out)])
    one_line_error(capsys, status, rf"^napari-sam: interrupted: 2 planes of '{re.escape(str(out))}' "
                   r"are finished and kept; run the same command with --resume to continue$",
                   code=130)


def test_ctrl_c_in_segment_writes_nothing(image_path, tmp_path, capsys, monkeypatch,
                                          tiny_load_model):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(napari_sam.Segmenter, "predict", interrupted)
    status = main(["segment", str(image_path), "--point", "20,30", "-o", str(tmp_path / "m.tif")])
    one_line_error(capsys, status, r"^napari-sam: interrupted: nothing was written$", code=130)
    assert files_in(tmp_path) == [image_path.name]


def test_programming_errors_keep_their_traceback(image_path, tmp_path, monkeypatch,
                                                 tiny_load_model):
    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(napari_sam.Segmenter, "predict", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["segment", str(image_path), "--point", "20,30", "-o", str(tmp_path / "m.tif")])


# --------------------------------------------------------------------------- #
# 9. messages that say what is wrong
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("command", ["segment", "auto"])
def test_a_folder_given_as_image_is_called_a_folder(tmp_path, capsys, tiny_load_model, command):
    (tmp_path / "data").mkdir()
    prompt = ["--point", "1,1"] if command == "segment" else []
    status = main([command, str(tmp_path / "data"), *prompt, "-o", str(tmp_path / "m.tif")])
    one_line_error(capsys, status, r"'.*data' is a directory: this command takes one 2D image file")


@pytest.mark.parametrize("spelling", [["--point", "-5,10"], ["--point=-5,10"],
                                      ["--negative", "-5,10", "--point", "3,3"]])
def test_a_negative_coordinate_reaches_the_engine_and_is_refused_there(image_path, tmp_path,
                                                                       capsys, tiny_load_model,
                                                                       spelling):
    status = main(["segment", str(image_path), *spelling, "-o", str(tmp_path / "m.tif")])
    one_line_error(capsys, status, r"outside the image of shape \(48, 80\)")


@pytest.mark.parametrize("value", ["nan,5", "5,inf"])
def test_a_coordinate_that_is_not_a_finite_number_is_refused(image_path, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(image_path), "--point", value, "-o", str(tmp_path / "m.tif")])
    assert exit_.value.code == 2
    assert "argument --point: expected 2 comma-separated numbers" in capsys.readouterr().err


def test_a_box_starting_at_a_negative_row_is_parsed(image_path, tmp_path, capsys,
                                                    tiny_load_model):
    status = main(["segment", str(image_path), "--box", "-2,0,30,40", "-o", str(tmp_path / "m.tif")])
    one_line_error(capsys, status, r"outside the image")
