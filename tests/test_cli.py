"""The ``napari-sam`` command, in-process through ``napari_sam.cli.main`` and as a real process."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import napari_sam
from conftest import make_tiny_model
from napari_sam.cli import main
from napari_sam.synthetic import synthetic_nuclei

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_answer(image, **prompts):
    """The answer of the one path (tiles of the tiny model's 64 px input) to ``prompts``."""
    segmenter = napari_sam.Segmenter(make_tiny_model())
    segmenter.set_image(image)
    masks, scores, _ = segmenter.predict(**prompts)
    return masks[int(np.argmax(scores))]


# --------------------------------------------------------------------------- #
# sample and models
# --------------------------------------------------------------------------- #
def test_sample_writes_image_and_labels(tmp_path, capsys):
    out, lab = tmp_path / "out.tif", tmp_path / "lab.tif"
    assert main(["sample", str(out), "--size", "64", "--labels", str(lab)]) == 0
    image, labels = tifffile.imread(out), tifffile.imread(lab)
    assert image.dtype == np.uint16 and image.shape == (64, 64)
    assert labels.shape == (64, 64) and labels.max() > 0
    expected_image, expected_labels = synthetic_nuclei((64, 64), seed=0)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(labels, expected_labels)
    assert f"{labels.max()} nuclei" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "other.tif"), "--size", "64", "--seed", "1"]) == 0
    assert not np.array_equal(tifffile.imread(tmp_path / "other.tif"), image)


def test_a_sample_stack_tiff_carries_its_z_step_to_segment_stack(tmp_path, capsys):
    """The planes of the sample stack lie 2 pixels apart: a tiff says so (segment-stack then
    needs no --voxel-size), an .npy cannot, and the message says what to give instead."""
    from napari_sam.volume.io import open_volume

    assert main(["sample", str(tmp_path / "stack.tif"), "--3d", "3", "--size", "32"]) == 0
    assert "z step 2 px in the file" in capsys.readouterr().out
    volume = open_volume(str(tmp_path / "stack.tif"))
    assert volume.voxel_size == (2.0, 1.0, 1.0) and volume.shape == (3, 32, 32)
    expected, _ = synthetic_nuclei((3, 32, 32), seed=0, anisotropy=2.0)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "stack.tif"), expected)
    assert main(["sample", str(tmp_path / "stack.npy"), "--3d", "3", "--size", "32"]) == 0
    assert "give segment-stack --voxel-size 2,1,1" in capsys.readouterr().out


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["nuclei_s", "vit_b", "vit_l", "vit_h", "vit_t", "vit_t_lm", "vit_b_lm",
                     "vit_l_lm", "vit_t_em_organelles", "vit_b_em_organelles",
                     "vit_l_em_organelles", "sam2.1_hiera_tiny", "sam2.1_hiera_small",
                     "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]


# --------------------------------------------------------------------------- #
# segment
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def real_segment(one_thread, tmp_path_factory, vit_t_checkpoint):
    """One real run of ``segment`` with a vit_t checkpoint, in-process."""
    folder = tmp_path_factory.mktemp("segment")
    image, _ = synthetic_nuclei((48, 80), seed=2)
    tifffile.imwrite(folder / "img.tif", image)
    mask = folder / "mask.tif"
    argv = ["segment", str(folder / "img.tif"), "--point", "20,30", "--checkpoint",
            str(vit_t_checkpoint), "--device", "cpu", "-o", str(mask)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue(), mask, argv


def test_segment_writes_a_0_1_mask(real_segment):
    status, out, err, mask_path, _ = real_segment
    assert status == 0, err
    mask = tifffile.imread(mask_path)
    assert mask.dtype == np.uint8 and mask.shape == (48, 80)
    assert set(np.unique(mask)) <= {0, 1}
    found = re.search(r"(\d+) pixels, predicted IoU (-?[\d.]+)", out)
    assert found, out
    assert int(found.group(1)) == int(mask.sum())


def test_segment_as_a_process(tmp_path, real_segment, vit_t_checkpoint):
    """The real command in a fresh interpreter: same answer as in-process, written as PNG 0/255."""
    _, _, _, mask_path, argv = real_segment
    png = tmp_path / "mask.png"
    argv = argv[:-1] + [str(png)]
    env = dict(os.environ, OMP_NUM_THREADS="1",  # as in-process (fixture one_thread)
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "napari_sam.cli", *argv], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pixels" in result.stdout
    written = np.asarray(Image.open(png))
    assert written.dtype == np.uint8 and written.shape == (48, 80)
    assert set(np.unique(written)) <= {0, 255}
    np.testing.assert_array_equal(written, tifffile.imread(mask_path) * 255)


def test_segment_passes_prompts_as_row_col(image_file, tmp_path, tiny_load_model, capsys):
    path, image = image_file
    out = tmp_path / "mask.npy"
    status = main(["segment", str(path), "--point", "20,30", "--negative", "5,70",
                   "--box", "10,20,40,60", "--checkpoint", "ck.pt", "-o", str(out)])
    assert status == 0, capsys.readouterr().err
    assert tiny_load_model == [(None, Path("ck.pt"), "auto")]
    expected = tiny_answer(image, points=[[20, 30], [5, 70]], labels=[1, 0],
                           box=[10, 20, 40, 60], multimask=False)
    mask = np.load(out)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)
    assert 0 < expected.mean() < 1


def test_segment_one_click_picks_the_best_of_three(image_file, tmp_path, tiny_load_model):
    path, image = image_file
    out = tmp_path / "mask.png"
    assert main(["segment", str(path), "--point", "20,30", "-o", str(out)]) == 0
    written = np.asarray(Image.open(out))
    expected = tiny_answer(image, points=[[20, 30]], multimask=True)
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(written, expected.astype(np.uint8) * 255)


def test_segment_model_option(image_file, tmp_path, tiny_load_model):
    path, _ = image_file
    assert main(["segment", str(path), "--box", "1,2,30,40", "--model", "vit_t", "--device", "cpu",
                 "-o", str(tmp_path / "m.tif")]) == 0
    assert tiny_load_model == [("vit_t", None, "cpu")]


def assert_clean_error(capsys, status, *patterns):
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("napari-sam: error: ")
    assert "Traceback" not in captured.err
    for pattern in patterns:
        assert re.search(pattern, captured.err), captured.err
    return captured


def test_no_prompt(image_file, tmp_path, capsys, tiny_load_model):
    path, _ = image_file
    status = main(["segment", str(path), "-o", str(tmp_path / "m.tif")])
    assert_clean_error(capsys, status, r"give at least one prompt: --point")
    assert not (tmp_path / "m.tif").exists()
    assert tiny_load_model == []  # refused before any model is loaded


def test_missing_image(tmp_path, capsys, tiny_load_model):
    status = main(["segment", str(tmp_path / "nope.tif"), "--point", "1,1", "-o",
                   str(tmp_path / "m.tif")])
    assert_clean_error(capsys, status, r"image '.*nope\.tif' does not exist")


def test_missing_checkpoint(image_file, tmp_path, capsys):
    path, _ = image_file
    status = main(["segment", str(path), "--point", "1,1", "--checkpoint",
                   str(tmp_path / "ck.pt"), "-o", str(tmp_path / "m.tif")])
    assert_clean_error(capsys, status, r"checkpoint .*ck\.pt' does not exist")


def test_unreadable_image_file(tmp_path, capsys, tiny_load_model):
    for name in ("bad.png", "bad.tif"):
        (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(1000))
        status = main(["segment", str(tmp_path / name), "--point", "1,1", "-o",
                       str(tmp_path / "m.tif")])
        assert_clean_error(capsys, status)


def test_point_outside_the_image(image_file, tmp_path, capsys, tiny_load_model):
    path, _ = image_file
    status = main(["segment", str(path), "--point", "20,300", "-o", str(tmp_path / "m.tif")])
    assert_clean_error(capsys, status, r"outside the image of shape \(48, 80\)")


def test_stack_instead_of_an_image(tmp_path, capsys, tiny_load_model):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((10, 32, 32), np.uint16))
    status = main(["segment", str(tmp_path / "stack.tif"), "--point", "1,1", "-o",
                   str(tmp_path / "m.tif")])
    assert_clean_error(capsys, status, r"3D stack")


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("--point", "1,2,3", r"argument --point: expected 2 comma-separated numbers, got '1,2,3'"),
        ("--point", "a,b", r"argument --point: expected 2"),
        ("--negative", "7", r"argument --negative: expected 2"),
        ("--box", "1,2,3", r"argument --box: expected 4 comma-separated numbers"),
        ("--model", "vit_x", r"argument --model: invalid choice: 'vit_x'"),
    ],
)
def test_malformed_arguments(image_file, tmp_path, capsys, option, value, match):
    path, _ = image_file
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(path), option, value, "-o", str(tmp_path / "m.tif")])
    assert exit_.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_no_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "napari-sam" in capsys.readouterr().err


def test_error_as_a_process(tmp_path):
    """A user error in a real process: exit status 2, one line on stderr, no traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "napari_sam.cli", "segment", str(tmp_path / "none.tif"),
         "--point", "1,1", "-o", str(tmp_path / "m.tif")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"napari-sam: error: image {str(tmp_path / 'none.tif')!r} does not exist"
    ]


# --------------------------------------------------------------------------- #
# auto
# --------------------------------------------------------------------------- #
def test_auto_writes_the_generators_label_image(image_file, tmp_path, tiny_load_model, capsys):
    path, image = image_file
    out = tmp_path / "labels.tif"
    options = ["--sampler", "grid", "--points-per-side", "8", "--pred-iou-thresh", "0",
               "--stability-score-thresh", "0"]
    assert main(["auto", str(path), "-o", str(out), *options]) == 0
    segmenter = napari_sam.Segmenter(make_tiny_model(), automatic=dict(
        sampler="grid", points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0))
    segmenter.set_image(image)
    expected = segmenter.segment_all()
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint32 and expected.max() > 0
    np.testing.assert_array_equal(labels, expected)
    assert f"{expected.max()} objects; planes kept at their own pixels" in capsys.readouterr().out


def test_auto_uses_the_settings_that_suit_the_default_model(image_file, tmp_path, monkeypatch):
    seen = {}

    class Recorder(napari_sam.AutomaticMaskGenerator):
        def __init__(self, model, **settings):
            seen.update(settings)
            super().__init__(model, **settings)

    from napari_sam.engine import segmenter

    def tiny_nuclei_s(*args, **kwargs):
        model = make_tiny_model()
        model.name = "nuclei_s"  # what load_model() records for the default model
        return model

    monkeypatch.setattr(segmenter, "AutomaticMaskGenerator", Recorder)
    monkeypatch.setattr(napari_sam, "load_model", tiny_nuclei_s)
    path, _ = image_file
    assert main(["auto", str(path), "-o", str(tmp_path / "l.npy"), "--points-per-side", "4"]) == 0
    recommended = napari_sam.MODELS["nuclei_s"].automatic
    assert seen["pred_iou_thresh"] == recommended["pred_iou_thresh"]
    assert seen["sampler"] == recommended["sampler"]
    assert main(["auto", str(path), "-o", str(tmp_path / "l.npy"), "--points-per-side", "4",
                 "--pred-iou-thresh", "0.9", "--overwrite"]) == 0
    assert seen["pred_iou_thresh"] == 0.9
    assert np.load(tmp_path / "l.npy").dtype == np.uint32


def test_auto_refuses_an_image_format_for_labels(image_file, tmp_path, tiny_load_model, capsys):
    path, _ = image_file
    assert main(["auto", str(path), "-o", str(tmp_path / "labels.png")]) == 2
    assert ".tif or .npy" in capsys.readouterr().err
    assert not (tmp_path / "labels.png").exists()


# --------------------------------------------------------------------------- #
# embed and segment-stack
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_segment_stack_and_embed_on_a_tiff_volume(tmp_path, capsys):
    from test_stack import sphere_volume

    from napari_sam.volume.io import open_zarr_array

    image, truth = sphere_volume()
    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, image, photometric="minisblack")
    tiles = ["--diameter", "15"]  # enlarged twice, to 384 px: 4 tiles of the model's 256 px
    cache = str(tmp_path / "cache.zarr")
    assert main(["embed", str(source), "--cache", cache, "--z", "0:2", *tiles]) == 0
    assert "8 tiles embedded, 0 already there; object diameter 15.0 px (given)" in capsys.readouterr().out
    out = str(tmp_path / "labels.zarr")
    assert main(["segment-stack", str(source), out, "--cache", cache, "--sampler", "boxes", *tiles]) == 0
    report = capsys.readouterr().out
    assert "4 planes segmented" in report and f"{truth.max()} objects in 3D" in report
    labels = open_zarr_array(out)
    assert labels.shape == image.shape and labels.dtype == np.uint32
    assert main(["segment-stack", str(source), out, "--sampler", "boxes", *tiles]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["segment-stack", str(source), out, "--sampler", "boxes", "--resume", *tiles]) == 0
    assert "0 planes segmented, 4 already done" in capsys.readouterr().out
