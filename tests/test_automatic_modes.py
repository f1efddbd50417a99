"""The automatic mode at every entry point: the model's own by default, chosen by --mode or
mode=, recorded with a stack run, and refused clearly where it cannot work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

import napari_sam
from conftest import make_tiny_model
from napari_sam.cli import main
from napari_sam.models.registry import MODELS, automatic_mode
from napari_sam.synthetic import synthetic_nuclei
from napari_sam.volume.stack import RECORD, segment_stack


@pytest.fixture(scope="module")
def nuclei():
    return synthetic_nuclei((96, 96), density=0.3, radius=(6, 10), seed=4)


def test_the_default_mode_is_the_models_own():
    assert automatic_mode(napari_sam.load_model("nuclei_s", device="cpu")) == MODELS["nuclei_s"].mode
    assert automatic_mode(make_tiny_model()) == "amg"  # a model the registry does not name
    assert all(MODELS[name].mode == "ais" for name in MODELS if name.endswith(("_lm", "_organelles")))
    with pytest.raises(ValueError, match="unknown automatic mode 'sam': choose one of amg, ais, apg"):
        automatic_mode(make_tiny_model(), "sam")


def test_cli_refuses_generator_options_with_another_mode(tmp_path, nuclei, capsys):
    tifffile.imwrite(tmp_path / "image.tif", nuclei[0])
    status = main(["auto", str(tmp_path / "image.tif"), "-o", str(tmp_path / "labels.tif"),
                   "--mode", "ais", "--sampler", "grid", "--pred-iou-thresh", "0.5"])
    assert status != 0
    assert ("--pred-iou-thresh, --sampler: options of --mode amg, not of --mode ais"
            in capsys.readouterr().err)
    assert not (tmp_path / "labels.tif").exists()


def test_cli_ais_with_a_model_without_decoder_names_the_fix(tmp_path, nuclei, tiny_load_model,
                                                           capsys):
    tifffile.imwrite(tmp_path / "image.tif", nuclei[0])
    status = main(["auto", str(tmp_path / "image.tif"), "-o", str(tmp_path / "labels.tif"),
                   "--mode", "ais"])
    assert status != 0
    err = capsys.readouterr().err
    assert "need an instance decoder" in err and "mode='amg'" in err
    assert not (tmp_path / "labels.tif").exists()


def test_cli_auto_ais_writes_the_one_paths_labels(tmp_path, nuclei, capsys):
    tifffile.imwrite(tmp_path / "image.tif", nuclei[0])
    assert main(["auto", str(tmp_path / "image.tif"), "-o", str(tmp_path / "labels.tif"),
                 "--mode", "ais", "--device", "cpu"]) == 0
    expected = napari_sam.segment_all(nuclei[0], model=napari_sam.load_model("nuclei_s",
                                                                              device="cpu"),
                                      mode="ais")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), expected)
    assert expected.max() > 0


def test_stack_with_a_mode_that_cannot_work_writes_nothing(tmp_path, nuclei):
    volume = np.stack([nuclei[0]] * 2)
    with pytest.raises(ValueError, match="need an instance decoder"):
        segment_stack(volume, tmp_path / "labels.zarr", model=make_tiny_model(), mode="ais")
    with pytest.raises(ValueError, match="sampler: settings of mode 'amg', not of 'apg'"):
        segment_stack(volume, tmp_path / "labels.zarr", model=make_tiny_model(), mode="apg",
                      sampler="grid")
    assert not (tmp_path / "labels.zarr").exists()


def test_stack_records_its_mode_and_resumes_only_with_it(tmp_path, nuclei):
    volume = np.stack([nuclei[0]] * 2)
    out = tmp_path / "labels.zarr"
    model = napari_sam.load_model("nuclei_s", device="cpu")
    summary = segment_stack(volume, out, model=model, mode="ais", link=False)
    assert summary.objects > 0
    assert json.loads((out / RECORD / "run.json").read_text())["mode"] == "ais"
    with pytest.raises(FileExistsError, match=r"other settings \(mode\)"):
        segment_stack(volume, out, model=model, mode="amg", resume=True, link=False)
