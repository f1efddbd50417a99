"""Fine-tuning from a user's own labels: the held-back split, and the trainer's best checkpoint,
reports and early stop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from napari_sam import load_model
from napari_sam.models.registry import MODELS
from napari_sam.synthetic import synthetic_nuclei
from napari_sam.training.annotations import split_annotations
from napari_sam.training.recipes import Recipe
from napari_sam.training.trainer import train
from napari_sam.volume.io import open_volume, volume_limits


@pytest.fixture(scope="module")
def annotated():
    """Nuclei of about 20 px through a 3-plane stack, one id per nucleus through z."""
    image, labels = synthetic_nuclei((3, 160, 160), density=0.35, radius=(8, 12), seed=3)
    volume = open_volume(image)
    return volume, volume_limits(volume), labels


def split(annotated, **options):
    volume, limits, labels = annotated
    return split_annotations(volume, limits, labels, **{
        "img_size": 64, "model_diameter": None, **options})


def training_labels(result) -> np.ndarray:
    return np.asarray(result.training._pairs[0].labels.data)  # the planes trained on


def test_held_back_objects_are_whole_and_never_trained_on(annotated):
    _, _, labels = annotated
    result = split(annotated, held_out=0.2, seed=1)
    held = result.summary["held_out"]
    assert len(held) == round(0.2 * result.summary["objects"]) >= 3
    # every plane of a held-back id is out of training, and every plane of it is validated
    trained = training_labels(result)
    assert not np.isin(trained, held).any()
    assert set(np.unique(trained)) == set(np.unique(labels)) - set(held)
    evaluated = sum(len(np.unique(window)) - 1 for _, window in result.validation)
    cross_sections = sum(len(np.intersect1d(np.unique(plane), held)) for plane in labels)
    assert evaluated == cross_sections
    for image, window in result.validation:
        assert image.shape == (64, 64, 3) and window.shape == (64, 64)
    # the same seed holds back the same objects, another seed others
    assert split(annotated, held_out=0.2, seed=1).summary["held_out"] == held
    assert split(annotated, held_out=0.2, seed=2).summary["held_out"] != held


def test_objects_arrive_at_the_models_diameter(annotated):
    result = split(annotated, model_diameter=30.0, planes=[1])
    diameter = result.summary["diameter"]
    assert 14 < diameter < 26 and result.summary["scale_factor"] == pytest.approx(30 / diameter)
    trained = training_labels(result)
    assert trained.shape[1:] == tuple(round(160 * 30 / diameter) for _ in range(2))
    areas = np.bincount(trained.ravel())[1:]
    widths = 2 * np.sqrt(areas[areas > 0] / np.pi)
    assert np.median(widths) == pytest.approx(30, rel=0.2)


@pytest.mark.parametrize("problem, message", [
    ("empty", "hold no object"),
    ("shape", "choose the labels drawn on this image"),
    ("few", "too few to hold 3 back"),
    ("planes", "planes must be between 0 and 2"),
])
def test_unusable_labels_are_refused_with_the_fix(annotated, problem, message):
    volume, limits, labels = annotated
    if problem == "empty":
        labels = np.zeros_like(labels)
    elif problem == "shape":
        labels = labels[:, :100]
    elif problem == "few":
        labels = np.where(np.isin(labels, np.unique(labels)[1:4]), labels, 0)
    with pytest.raises(ValueError, match=message):
        split_annotations(volume, limits, labels, img_size=64, model_diameter=None,
                          planes=[0, 3] if problem == "planes" else None)


def test_best_checkpoint_is_kept_when_training_makes_the_model_worse(annotated, tmp_path,
                                                                     one_thread):
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = split(annotated)
    reports = []
    ruinous = Recipe(lr=1.0, warmup=1, train_encoder=True, images_per_step=1, correction_rounds=0)
    history = train(model, result.training, ruinous, steps=4, output=tmp_path,
                    validation=result.validation, validate_every=2, keep_best="box",
                    report=reports.append, log=None, device="cpu")
    assert [entry["step"] for entry in history.validation] == [0, 2, 4]
    assert history.best["step"] == 0
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["step"] == 0 and record["best_by"] == "box"
    kept = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(kept[k], before[k]) for k in before)
    assert [r["step"] for r in reports if "loss" in r] == [1, 2, 3, 4]
    assert [(r["step"], r["best"]) for r in reports if "validation" in r] == [
        (0, True), (2, False), (4, False)]


def test_stopped_run_resumes_to_the_weights_of_an_uninterrupted_run(annotated, tmp_path,
                                                                    one_thread):
    result = split(annotated)
    recipe = Recipe(lr=1e-3, warmup=1, images_per_step=1, correction_rounds=0)
    options = {"steps": 4, "validation": result.validation, "validate_every": 2,
               "keep_best": "point", "log": None, "device": "cpu", "seed": 3}
    whole = make_tiny_model()
    train(whole, result.training, recipe, output=tmp_path / "whole", **options)
    stopped = make_tiny_model()
    history = train(stopped, result.training, recipe, output=tmp_path / "part",
                    should_stop=lambda: True, **options)
    assert history.stopped and history.steps == [1]
    assert [entry["step"] for entry in history.validation] == [0, 1]
    resumed = make_tiny_model()
    train(resumed, result.training, recipe, output=tmp_path / "part", resume=True, **options)
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_kept_checkpoint_loads_as_its_architecture(annotated, tmp_path, one_thread):
    model = load_model("nuclei_s", device="cpu")
    result = split(annotated, img_size=model.img_size, model_diameter=MODELS["nuclei_s"].diameter)
    train(model, result.training, Recipe(images_per_step=1, correction_rounds=0), steps=1,
          output=tmp_path, validation=result.validation, keep_best="point", log=None,
          device="cpu")
    assert load_model(checkpoint=tmp_path / "model.pt", device="cpu").name == "nuclei_s"
