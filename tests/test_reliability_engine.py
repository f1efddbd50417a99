"""Bad input and damaged files in the engine, models and training: refused with a message that
says what is wrong, or repaired with a warning; never silently wrong answers."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from napari_sam.engine.embeddings import EmbeddingStore, model_fingerprint
from napari_sam.engine.predictor import Predictor

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
OTHER_RGB = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- #
# embedding store: damaged entries, changed weights, reduced precision
# --------------------------------------------------------------------------- #
def _chunk(store: EmbeddingStore, key: str) -> Path:
    (chunk,) = [p for p in (store.path / key / "features").rglob("*") if p.is_file()
                and p.name != "zarr.json"]
    return chunk


def _delete(store, key, other):
    _chunk(store, key).unlink()


def _copy_other(store, key, other):
    _chunk(store, key).write_bytes(_chunk(store, other).read_bytes())


def _corrupt(store, key, other):
    _chunk(store, key).write_bytes(np.random.default_rng(1).bytes(300))


def _break_metadata(store, key, other):
    (store.path / key / "zarr.json").write_text("{not json")


def _rename_other(store, key, other):
    """The whole entry of another image under this key (a copied or renamed directory)."""
    import shutil

    shutil.rmtree(store.path / key)
    shutil.copytree(store.path / other, store.path / key)


def _drop_checksum(store, key, other):
    """An entry as written before checksums were recorded."""
    meta = json.loads((store.path / key / "zarr.json").read_text())
    for name in ("sha256", "shape", "key"):
        meta["attributes"].pop(name)
    (store.path / key / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_delete, _copy_other, _corrupt, _break_metadata,
                                    _rename_other, _drop_checksum])
def test_a_damaged_cache_entry_is_recomputed_with_a_warning_naming_it(tmp_path, damage):
    model = make_tiny_model()
    predictor = Predictor(model)
    store = EmbeddingStore(tmp_path / "cache.zarr")
    truth = store.embed(predictor, RGB).features.clone()
    store.embed(predictor, OTHER_RGB)
    key, other = store.key(model, RGB), store.key(model, OTHER_RGB)
    damage(store, key, other)

    with pytest.warns(RuntimeWarning, match="damaged") as caught:
        again = EmbeddingStore(store.path)
        embedding = again.embed(predictor, RGB)
    message = str(caught[0].message)
    assert str(store.path) in message and key in message
    assert (again.hits, again.misses) == (0, 1)
    assert torch.equal(embedding.features, truth)

    with warnings.catch_warnings():  # overwritten: a clean hit from now on
        warnings.simplefilter("error")
        third = EmbeddingStore(store.path)
        assert torch.equal(third.embed(predictor, RGB).features, truth)
    assert (third.hits, third.misses) == (1, 0)


def test_weights_changed_in_place_are_not_served_embeddings_of_the_old_weights(tmp_path):
    model = make_tiny_model()
    predictor = Predictor(model)
    store = EmbeddingStore(tmp_path / "cache.zarr")
    before = store.embed(predictor, RGB).features.clone()
    fingerprint = model_fingerprint(model)

    with torch.no_grad():
        model.image_encoder.patch_embed.proj.weight.add_(1)
    assert model_fingerprint(model) != fingerprint
    changed = store.embed(predictor, RGB).features.clone()
    assert store.misses == 2 and not torch.equal(changed, before)

    model.load_state_dict(make_tiny_model(seed=0).state_dict())  # back to the first weights
    assert model_fingerprint(model) == fingerprint
    assert torch.equal(store.embed(predictor, RGB).features, before)
    assert (store.hits, store.misses) == (1, 2)


def test_a_cached_embedding_is_served_in_the_models_reduced_precision(tmp_path):
    model = make_tiny_model().to(torch.bfloat16)
    store = EmbeddingStore(tmp_path / "cache.zarr")
    computed = Predictor(model)
    store.embed(computed, RGB)
    first = computed.predict(points=[(20, 25)], labels=[1])

    cached = Predictor(model)
    embedding = EmbeddingStore(store.path).embed(cached, RGB)
    assert embedding.features.dtype == torch.bfloat16
    again = cached.predict(points=[(20, 25)], labels=[1])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- #
# settings and intensities
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("setting, match", [
    (dict(pred_iou_thresh=5), r"pred_iou_thresh must be a number in \[0, 1\], got 5"),
    (dict(pred_iou_thresh=float("nan")), r"pred_iou_thresh .* got nan"),
    (dict(stability_score_thresh=1.5), r"stability_score_thresh .*\[0, 1\], got 1.5"),
    (dict(stability_score_thresh=float("nan")), r"stability_score_thresh .* got nan"),
    (dict(min_mask_region_area=-1), r"min_mask_region_area must be a number >= 0, got -1"),
    (dict(points_per_side=0), r"points_per_side must be an integer >= 1, got 0"),
    (dict(points_per_side=2.5), r"points_per_side must be an integer >= 1, got 2.5"),
    (dict(points_per_side=4096), r"points_per_side=4096 is a grid of 16,777,216 prompts"),
])
def test_automatic_settings_out_of_range_are_refused_naming_them(setting, match):
    from napari_sam.engine.amg import AutomaticMaskGenerator

    with pytest.raises(ValueError, match=match):
        AutomaticMaskGenerator(make_tiny_model(), **setting)


@pytest.mark.parametrize("limits", [(np.nan, np.nan), (0, np.inf), (-np.inf, 10)])
def test_non_finite_intensity_limits_are_refused(limits):
    from napari_sam.engine.image import to_rgb_uint8

    with pytest.raises(ValueError, match="limits must be finite"):
        to_rgb_uint8(np.arange(12, dtype=np.uint16).reshape(3, 4), limits=limits)


def _saturated_uint16(fraction: float) -> np.ndarray:
    """Background near 100, dim objects up to ~2000, and ``fraction`` of pixels at 65535."""
    rng = np.random.default_rng(3)
    image = rng.normal(100, 5, (200, 200))
    image[50:120, 60:140] = rng.normal(1500, 200, (70, 80))
    flat = image.reshape(-1)
    flat[rng.choice(flat.size, int(fraction * flat.size), replace=False)] = 65535
    return np.clip(image, 0, 65535).astype(np.uint16)


def test_saturated_pixels_do_not_crush_the_image_and_are_reported():
    from napari_sam.engine.image import to_rgb_uint8

    image = _saturated_uint16(0.005)
    with pytest.warns(UserWarning, match=r"0.5% of the pixels of channel 0 are saturated"):
        rgb = to_rgb_uint8(image)
    objects = rgb[60:110, 70:130, 0]
    assert np.median(objects) > 150  # was 5: the objects were crushed to black
    assert np.median(rgb[:40, :40, 0]) < 10


def test_an_image_without_saturation_keeps_its_percentile_limits():
    from napari_sam.engine.image import intensity_range

    image = _saturated_uint16(0.0005)  # a few hot pixels: the percentiles already skip them
    few_levels = np.repeat(np.array([0, 1000, 2000], np.uint16), 300).reshape(30, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for img in (image, few_levels):
            pixels = img.reshape(-1, 1)
            np.testing.assert_array_equal(intensity_range(pixels),
                                          np.percentile(pixels, (1, 99.8), axis=0))
        uint8 = np.full((20, 20, 1), 255, np.uint8)
        uint8[:10] = 7
        np.testing.assert_array_equal(intensity_range(uint8)[:, 0], [7, 255])


# --------------------------------------------------------------------------- #
# checkpoints
# --------------------------------------------------------------------------- #
def test_random_bytes_are_called_not_a_pytorch_file_without_torchs_advice(tmp_path):
    from napari_sam import load_model

    path = tmp_path / "download.pth"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError) as error:
        load_model(checkpoint=path, device="cpu")
    message = str(error.value)
    assert "download.pth" in message and "not a PyTorch file" in message
    assert "weights_only" not in message


def test_a_checkpoint_with_python_objects_is_refused_naming_them_without_torchs_advice(tmp_path):
    import argparse

    from napari_sam.models.weights import read_state_dict

    path = tmp_path / "run.pt"
    torch.save({"weight": torch.zeros(2), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ValueError, match=r"run.pt.*Python objects \(argparse.Namespace\)") as error:
        read_state_dict(path)
    assert "weights_only" not in str(error.value)


def test_a_renamed_key_is_named_with_the_closest_architecture(tmp_path, vit_t_checkpoint):
    from napari_sam import load_model

    state = torch.load(vit_t_checkpoint, weights_only=True)
    state["mask_decoder.iou_tokn.weight"] = state.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"closest to 'vit_t'") as error:
        load_model(checkpoint=path, device="cpu")
    message = str(error.value)
    assert "renamed.pt" in message
    assert "missing: mask_decoder.iou_token.weight (1)" in message
    assert "unexpected: mask_decoder.iou_tokn.weight (1)" in message


def test_nan_or_inf_weights_are_refused_naming_the_file_and_how_many(tmp_path, vit_t_checkpoint):
    from napari_sam import load_model

    state = torch.load(vit_t_checkpoint, weights_only=True)
    state["mask_decoder.iou_token.weight"][0, 0] = float("nan")
    state["mask_decoder.mask_tokens.weight"][1, 2] = float("inf")
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"diverged.pt' holds NaN or infinite values in 2 of its "
                                         rf"{len(state)} tensors"):
        load_model(checkpoint=path, device="cpu")


# --------------------------------------------------------------------------- #
# training data
# --------------------------------------------------------------------------- #
def _pairs_on_disk(folder: Path, n: int, *, empty: set[int]):
    import tifffile

    from napari_sam.synthetic import synthetic_nuclei

    pairs = []
    for i in range(n):
        image, labels = synthetic_nuclei((64, 64), seed=i)
        if i in empty:
            labels = np.zeros_like(labels)
        tifffile.imwrite(folder / f"img{i}.tif", image)
        tifffile.imwrite(folder / f"lab{i}.tif", labels)
        pairs.append((folder / f"img{i}.tif", folder / f"lab{i}.tif"))
    return pairs


def test_training_on_all_zero_labels_is_refused_before_it_starts_naming_the_files(tmp_path):
    from napari_sam.training.data import LabelledSlices
    from napari_sam.training.trainer import train

    data = LabelledSlices(_pairs_on_disk(tmp_path, 2, empty={0, 1}), crop_size=64)
    with pytest.raises(ValueError, match="hold no object") as error:
        train(make_tiny_model(), data, steps=1, output=tmp_path / "run", device="cpu", log=None)
    assert "lab0.tif" in str(error.value) and "lab1.tif" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_pair_with_all_zero_labels_among_others_is_named_in_a_warning(tmp_path):
    from napari_sam.training.data import LabelledSlices

    data = LabelledSlices(_pairs_on_disk(tmp_path, 2, empty={1}), crop_size=64)
    with pytest.warns(UserWarning, match=r"pair 1: labels '.*lab1.tif'"):
        data.check_labelled()


def test_validation_examples_without_objects_are_refused(tmp_path):
    from napari_sam.training.data import LabelledSlices
    from napari_sam.training.trainer import train

    data = LabelledSlices(_pairs_on_disk(tmp_path, 1, empty=set()), crop_size=64)
    empty = [(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint32))]
    with pytest.raises(ValueError, match="none of the 1 validation examples holds a labelled"):
        train(make_tiny_model(), data, steps=1, validation=empty, device="cpu", log=None)


# --------------------------------------------------------------------------- #
# plugin: failures in background jobs
# --------------------------------------------------------------------------- #
# Qt aborts the whole run when it finds no display: these tests run under xvfb-run, as in CI.
needs_display = pytest.mark.skipif(
    sys.platform.startswith("linux") and not any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")),
    reason="needs a display: run under xvfb-run -a",
)


@pytest.fixture
def notifications(monkeypatch, tmp_path):
    """Notifications shown, with the error log redirected to ``tmp_path``."""
    pytest.importorskip("pytestqt")
    from napari.utils.notifications import notification_manager

    from napari_sam.plugin import background

    monkeypatch.setattr(background, "error_log", lambda: tmp_path / "errors.log")
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _fail(error: Exception):
    def broken_step():
        raise error
    return broken_step


@needs_display
def test_a_programming_error_in_a_job_is_called_a_bug_with_its_traceback_in_a_log_file(
        qtbot, notifications, tmp_path, caplog):
    from napari_sam.plugin.background import run_in_background

    with caplog.at_level("ERROR", logger="napari_sam.plugin.background"):
        worker = run_in_background(_fail(TypeError("unsupported operand")), what="segmenting")
        qtbot.waitUntil(lambda: worker.ended, timeout=10_000)
    (shown,) = [n.message for n in notifications if "segmenting failed" in n.message]
    log_file = tmp_path / "errors.log"
    assert "TypeError: unsupported operand" in shown and "bug" in shown and str(log_file) in shown
    written = log_file.read_text()
    assert "segmenting failed" in written and "broken_step" in written and "TypeError" in written
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.exc_info is not None and record.exc_info[0] is TypeError


@needs_display
def test_bad_input_in_a_job_is_a_short_message_not_a_bug(qtbot, notifications, tmp_path, caplog):
    from napari_sam.plugin.background import run_in_background

    with caplog.at_level("WARNING", logger="napari_sam.plugin.background"):
        worker = run_in_background(_fail(ValueError("the image is empty")), what="segmenting")
        qtbot.waitUntil(lambda: worker.ended, timeout=10_000)
    (shown,) = [n.message for n in notifications if "segmenting failed" in n.message]
    assert shown == "napari-sam: segmenting failed: the image is empty"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert "ValueError: the image is empty" in (tmp_path / "errors.log").read_text()
