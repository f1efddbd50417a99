"""Training the instance decoder: micro-sam's loss, a short run that learns, files that load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_sam
from napari_sam.models.instance_decoder import InstanceDecoder
from napari_sam.synthetic import SyntheticNuclei, synthetic_dataset
from napari_sam.training.decoder_trainer import DecoderRecipe, distance_loss, train_decoder


def random_maps(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(2, 3, 32, 32, generator=generator)
    targets = torch.rand(2, 3, 32, 32, generator=generator)
    targets[:, 0] = (targets[:, 0] > 0.5).float()
    return maps, targets


@pytest.mark.parametrize("seed", [0, 1])
def test_distance_loss_equals_micro_sams(seed):
    losses = pytest.importorskip("torch_em.loss", reason="torch-em (micro-sam's training code) "
                                 "is not installed")
    maps, targets = random_maps(seed)
    expected = losses.DiceBasedDistanceLoss(mask_distances_in_bg=True)(maps, targets)
    assert torch.allclose(distance_loss(maps, targets), expected, atol=1e-6)


def test_distance_loss_is_zero_for_the_targets_and_ignores_background_distances():
    maps, targets = random_maps(2)
    assert float(distance_loss(targets, targets)) == pytest.approx(0, abs=1e-6)
    off = targets.clone()
    off[:, 1:][targets[:, :1].expand(-1, 2, -1, -1) == 0] = 0.3  # distances on background
    assert float(distance_loss(off, targets)) == pytest.approx(0, abs=1e-6)


@pytest.fixture
def nuclei_s():
    return napari_sam.load_model("nuclei_s", device="cpu")


def test_a_short_run_lowers_the_loss_and_saves_a_decoder_that_loads(tmp_path, nuclei_s,
                                                                    one_thread):
    torch.manual_seed(0)
    decoder = InstanceDecoder(features=4)
    validation = list(synthetic_dataset(1, (256, 256), seed=1))
    history = train_decoder(nuclei_s, decoder, SyntheticNuclei((128, 128)),
                            DecoderRecipe(images_per_step=2, lr=3e-3, warmup=2), steps=8,
                            output=tmp_path, validation=validation, validate_every=4,
                            device="cpu", log=None)
    assert np.mean(history.losses[-3:]) < np.mean(history.losses[:3])
    assert [v["step"] for v in history.validation] == [4, 8]
    record = json.loads((tmp_path / "decoder.json").read_text())
    assert record["step"] == 8 and record["recipe"]["images_per_step"] == 2
    loaded = napari_sam.load_decoder(nuclei_s, tmp_path / "decoder.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in decoder.state_dict().items())


@pytest.mark.parametrize("settings, match", [
    (dict(images_per_step=0), "images_per_step must be at least 1"),
    (dict(lr=0.0), "lr must be positive"),
])
def test_bad_recipes_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        DecoderRecipe(**settings)
