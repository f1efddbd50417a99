"""The instance decoder on its own: output shapes, normalisation, and the weights it refuses."""

from __future__ import annotations

import pytest
import torch

from napari_sam.models.instance_decoder import InstanceDecoder
from napari_sam.models.registry import MODELS, build_instance_decoder
from napari_sam.models.weights import load_instance_decoder


@pytest.fixture(scope="module")
def nuclei_s():
    sam = MODELS["nuclei_s"].build().eval()
    sam.name = "nuclei_s"
    return sam


def embeddings(batch: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 256, side, side, generator=torch.Generator().manual_seed(seed))


def test_maps_cover_the_model_input_with_three_probabilities(nuclei_s):
    decoder = build_instance_decoder(nuclei_s).eval()
    with torch.no_grad():
        maps = decoder(embeddings(1))
    assert maps.shape == (1, 3, nuclei_s.img_size, nuclei_s.img_size)
    assert 0 <= maps.min() and maps.max() <= 1


def test_each_image_is_normalised_by_its_own_statistics_in_training_too(nuclei_s):
    decoder = build_instance_decoder(nuclei_s).train()
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    batch = embeddings(2)
    with torch.no_grad():
        together = decoder(batch)
        alone = torch.cat([decoder(batch[:1]), decoder(batch[1:])])
    torch.testing.assert_close(together, alone)
    for key, value in decoder.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a forward pass"


@pytest.mark.parametrize("transposed", [False, True])
def test_both_upsampling_layouts_of_micro_sam_load_unchanged(nuclei_s, transposed):
    state = InstanceDecoder(transposed=transposed).state_dict()
    assert any(".block." in k for k in state if k.startswith("decoder.samplers.")) == transposed

    decoder = load_instance_decoder(nuclei_s, state, source="test weights")

    assert decoder.deconv_out.transposed == transposed
    assert not decoder.training
    for key, value in decoder.state_dict().items():
        assert torch.equal(value, state[key])


def test_decoder_for_embeddings_of_another_width_is_refused_naming_the_widths(nuclei_s):
    state = InstanceDecoder(embed_dim=768).state_dict()
    expected = ("test weights is an instance decoder for 768-channel image embeddings, but the "
                "'nuclei_s' model has 256-channel embeddings")
    with pytest.raises(ValueError, match=expected):
        load_instance_decoder(nuclei_s, state, source="test weights")


def test_sam_checkpoint_given_as_decoder_is_refused_naming_its_architecture(nuclei_s):
    with pytest.raises(ValueError, match="is a 'nuclei_s' SAM checkpoint, not an instance decoder: "
                       "pass micro-sam's decoder weights"):
        load_instance_decoder(nuclei_s, nuclei_s.state_dict(), source="test weights")


def test_weights_that_are_no_decoder_are_refused_listing_the_differences(nuclei_s):
    state = InstanceDecoder(features=32).state_dict()
    state["out_conv.weight"] = torch.zeros(3, 64, 1, 1)  # its output layer says width 64
    state["head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as refused:
        load_instance_decoder(nuclei_s, state, source="test weights")
    message = str(refused.value)
    assert message.startswith("test weights is not an instance decoder for the 'nuclei_s' model (")
    assert "unexpected: head.weight (1)" in message
    assert "other shape: base.block.1.bias, base.block.1.weight, base.block.4.bias ..." in message


def test_a_narrower_decoder_loads_with_its_width_read_from_its_weights(nuclei_s):
    torch.manual_seed(0)
    state = InstanceDecoder(features=16).state_dict()
    decoder = load_instance_decoder(nuclei_s, state, source="test weights")
    assert all(torch.equal(decoder.state_dict()[k], v) for k, v in state.items())
    assert decoder(torch.zeros(1, 256, 16, 16)).shape == (1, 3, 256, 256)
