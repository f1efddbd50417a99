"""Parity of the instance decoder with micro-sam 1.8.14's AIS decoder (``get_decoder``).

micro-sam's own code builds the decoder with random weights; its state is saved in micro-sam's
checkpoint format (``{"decoder_state": ...}``), read back, and loaded into micro-sam's decoder
and into ours. Both see the same random embeddings and map their output to the same image size.
Tolerance: every output value within DECODER_TOL (absolute; outputs are sigmoids in [0, 1]).

micro-sam runs its decoder in training mode, so its batch normalisation uses the statistics of
the image at hand; ours does the same by default (``image_statistics=True``). The variant with
the checkpoint's running statistics is compared with micro-sam's decoder in evaluation mode.
"""

from __future__ import annotations

import pytest
import torch

from napari_sam.models.registry import MODELS
from napari_sam.models.weights import load_instance_decoder
from reference import VIT_B, meta_sam, mobile_sam_vit_t, random_state, reference_nuclei_s

micro_sam_segmentation = pytest.importorskip(
    "micro_sam.instance_segmentation",
    reason="micro-sam 1.8.14 (reference for the instance decoder) is not installed",
)
torch_em_model = pytest.importorskip("torch_em.model")

DECODER_TOL = 1e-4

# The references' image encoders, configured like the registry's.
REFERENCE_ENCODERS = {
    "vit_t": lambda: mobile_sam_vit_t().image_encoder,
    "vit_b": lambda: meta_sam(**VIT_B).image_encoder,
    "nuclei_s": lambda: reference_nuclei_s().image_encoder,
}


def micro_sam_checkpoint(encoder: torch.nn.Module, path, *, transposed: bool, seed: int) -> None:
    """Write random decoder weights in micro-sam's layout and checkpoint format to ``path``.

    The layout is that of micro-sam's AIS network (torch-em's UNETR without the encoder's skip
    connections); micro-sam keeps every key not under ``encoder`` as ``decoder_state``.
    """
    unetr = torch_em_model.UNETR(
        encoder=encoder, out_channels=3, use_skip_connection=False, use_conv_transpose=transposed
    )
    decoder = micro_sam_segmentation.DecoderAdapter(unetr)
    torch.save({"decoder_state": random_state(decoder, seed)}, path)


@pytest.mark.parametrize(
    ("name", "transposed", "image_statistics"),
    [
        pytest.param("vit_t", False, True, marks=pytest.mark.slow),
        pytest.param("vit_b", False, True, marks=pytest.mark.slow),
        ("nuclei_s", False, True),
        pytest.param("vit_t", True, True, marks=pytest.mark.slow),
        ("nuclei_s", False, False),
        ("nuclei_s", True, False),
    ],
)
def test_instance_decoder_maps_equal_micro_sams(tmp_path, name, transposed, image_statistics):
    torch.manual_seed(0)
    encoder = REFERENCE_ENCODERS[name]()
    path = tmp_path / "checkpoint.pt"
    micro_sam_checkpoint(encoder, path, transposed=transposed, seed=1)
    decoder_state = torch.load(path, map_location="cpu", weights_only=True)["decoder_state"]

    theirs = micro_sam_segmentation.get_decoder(encoder, decoder_state, device="cpu")
    if not image_statistics:
        theirs.eval()  # micro-sam itself leaves its decoder in training mode
    sam = MODELS[name].build().eval()
    sam.name = name
    ours = load_instance_decoder(sam, decoder_state, source="test weights",
                                 image_statistics=image_statistics)

    side = sam.img_size // 16
    embeddings = torch.randn(1, 256, side, side, generator=torch.Generator().manual_seed(2))
    original_size = (300, 500)  # wider than high: the model input is padded below the image
    input_size = (round(sam.img_size * 0.6), sam.img_size)
    with torch.no_grad():
        expected = theirs(embeddings, input_size, original_size)
        found = sam.postprocess_masks(ours(embeddings), input_size, original_size)

    assert found.shape == expected.shape == (1, 3, *original_size)
    assert found.std() > 0.05, "outputs saturated: the comparison would prove little"
    difference = (found - expected).abs().max().item()
    assert difference <= DECODER_TOL, f"max abs difference {difference:.2e}"
