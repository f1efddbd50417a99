"""Automatic instance segmentation (AIS): one image (InstanceGenerator) and the one path
(Segmenter.segment_all(mode="ais")), tiled; parity with micro-sam 1.8.14.

Parity: micro-sam's ``InstanceSegmentationWithDecoder`` and ``TiledInstanceSegmentationWithDecoder``
run Meta's ``SamPredictor`` on the references' ``nuclei_s`` architecture (MobileSAM's TinyViT in
Meta's SAM) and their decoder from ``get_decoder``; ours run the same random weights, written once
in each project's checkpoint format. Random weights give meaningless but usable maps: on a
synthetic nuclei image their foreground and distance maps vary around 0.5 with a spread of about
0.1, which the seeded watershed turns into tens of irregular objects. No weight is scaled: the
test asserts that there are at least MIN_OBJECTS, so that it can fail. Criterion: the same
instances, each matched at IoU >= 0.99, none extra.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_sam import Segmenter, load_model, segment_all
from napari_sam.engine.ais import InstanceGenerator, decoder_maps
from napari_sam.engine.embeddings import EmbeddingStore
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.instances import labels_from_maps
from napari_sam.models.registry import build_instance_decoder
from napari_sam.models.sam import PIXEL_MEAN, PIXEL_STD
from napari_sam.models.weights import load_instance_decoder
from napari_sam.synthetic import synthetic_nuclei
from conftest import make_tiny_model
from test_instance_segmentation import assert_same_instances

MIN_OBJECTS = 10
MAPS_TOL = 1e-4  # as the decoder's parity test


# -- a decoder whose maps are known: pointwise and local functions of the image -------------

class ImageAsEmbedding(nn.Module):
    """An image encoder whose embedding is the normalised image itself, at full resolution."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConeDecoder(nn.Module):
    """Maps read from an image of cones (1 at an object's centre, falling to 0 at its edge),
    after a 5 x 5 mean filter: a decoder that sees 2 pixels of context on each side."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        red = (features[:, :1] * PIXEL_STD[0] + PIXEL_MEAN[0]) / 255
        red = nn.functional.avg_pool2d(red, 5, stride=1, padding=2, count_include_pad=True)
        distance = 1 - red
        return torch.cat([(red > 0.02).float(), distance, distance], dim=1)


def cones(shape, centres_and_radii) -> np.ndarray:
    """A uint8 image of cones, the brightest where they overlap."""
    rows, cols = np.indices(shape)
    image = np.zeros(shape)
    for row, col, radius in centres_and_radii:
        image = np.maximum(image, 1 - np.hypot(rows - row, cols - col) / radius)
    return np.rint(255 * image).astype(np.uint8)


def cone_maps(image: np.ndarray) -> np.ndarray:
    """What ConeDecoder gives for a whole plane at once (no tiles)."""
    model = make_tiny_model()
    x = torch.as_tensor(to_rgb_uint8(image)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return ConeDecoder()((x - model.pixel_mean) / model.pixel_std)[0].numpy()


def cone_segmenter(**kwargs) -> Segmenter:
    """The tiny model (64 px input) with the image as its embedding, and the cone decoder."""
    model = make_tiny_model()
    model.image_encoder = ImageAsEmbedding(model.img_size)
    return Segmenter(model, diameter=None, decoder=ConeDecoder(), **kwargs)


SEAM_CONES = [(30, 56, 14), (60, 20, 12), (64, 64, 16), (100, 120, 15), (110, 40, 11),
              (130, 150, 13)]


def test_an_object_across_a_tile_seam_comes_out_once_and_whole(one_thread):
    image = cones((150, 200), SEAM_CONES)
    segmenter = cone_segmenter()  # 64 px tiles, 8 px halo: cores of 38 x 40 px
    segmenter.set_image(image)
    labels = segmenter.segment_all("ais")
    assert labels.max() == len(SEAM_CONES)
    across = 0
    for row, col, radius in SEAM_CONES:
        disc = np.hypot(*(np.indices(image.shape) - np.reshape([row, col], (2, 1, 1)))) < radius - 3
        owners = {i for i, t in enumerate(segmenter.tiles)
                  if disc[t.core[0]:t.core[2], t.core[1]:t.core[3]].any()}
        across += len(owners) > 1
        assert labels[row, col] > 0 and (labels[disc] == labels[row, col]).mean() > 0.95
    assert across >= 4, "the test needs objects across seams"


def test_with_a_halo_wider_than_the_decoders_context_tiling_changes_nothing(one_thread):
    """The cone decoder sees 2 px of context and the halo is 8 px: the stitched maps are the
    maps of the whole plane (to float rounding) and the instances are the same (IoU >= 0.99)."""
    image = cones((150, 200), SEAM_CONES)
    segmenter = cone_segmenter()
    segmenter.set_image(image)
    whole = cone_maps(image)
    np.testing.assert_allclose(segmenter.instance_maps(), whole, atol=1e-5)
    assert_same_instances(segmenter.segment_all("ais"), labels_from_maps(*whole))


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_labels_come_back_in_the_planes_pixels_when_the_plane_is_resampled(one_thread, factor):
    """At twice (half) the model's diameter the plane is shrunk (enlarged) for the decoder; the
    labels come back at the plane's size, each cone once."""
    model_diameter = 30.0
    shape = (int(150 / factor), int(200 / factor))
    image = cones(shape, [(r / factor, c / factor, rad / factor) for r, c, rad in SEAM_CONES])
    model = make_tiny_model()
    model.image_encoder = ImageAsEmbedding(model.img_size)
    model.name = "nuclei_s"  # its preferred diameter: 30 px
    segmenter = Segmenter(model, diameter=model_diameter / factor, decoder=ConeDecoder())
    segmenter.set_image(image)
    assert segmenter.factor == pytest.approx(factor)
    labels = segmenter.segment_all("ais")
    assert labels.shape == shape and labels.dtype == np.uint32
    assert labels.max() == len(SEAM_CONES)
    for row, col, _ in SEAM_CONES:
        assert labels[int(row / factor), int(col / factor)] > 0


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.zeros((150, 200), np.uint8), id="empty"),
        pytest.param(np.full((150, 200), 1234, np.uint16), id="constant"),
        pytest.param(np.full((150, 200), np.nan, np.float32), id="nan"),
    ],
)
@pytest.mark.parametrize("mode", ["ais", "apg"])
def test_an_empty_constant_or_nan_plane_gives_no_objects_and_embeds_nothing(one_thread, image,
                                                                            mode):
    model = make_tiny_model()
    segmenter = Segmenter(model, diameter=None, decoder=build_instance_decoder(model).eval())
    segmenter.set_image(image)
    labels = segmenter.segment_all(mode)
    assert labels.shape == image.shape and labels.dtype == np.uint32 and not labels.any()
    assert not segmenter._tiled._embeddings


def test_tile_embeddings_come_from_the_store_the_second_time(one_thread, tmp_path):
    model = make_tiny_model()
    decoder = build_instance_decoder(model).eval()
    image, _ = synthetic_nuclei((100, 120), seed=0)
    store = EmbeddingStore(tmp_path / "store.zarr")
    results = []
    for _ in range(2):
        segmenter = Segmenter(model, diameter=None, store=store, decoder=decoder)
        segmenter.set_image(image)
        results.append(segmenter.segment_all("ais"))
    assert store.misses == store.hits == len(segmenter.tiles) > 1
    np.testing.assert_array_equal(*results)


def test_a_model_without_a_decoder_is_refused_naming_the_fix(one_thread):
    segmenter = Segmenter(make_tiny_model(), diameter=None)
    segmenter.set_image(np.zeros((40, 40), np.uint8))
    with pytest.raises(ValueError, match=r"need an instance decoder: .*no instance decoder.*"
                                         r"vit_t_lm.*decoder=napari_sam.load_decoder.*mode='amg'"):
        segmenter.segment_all("ais")


def test_the_registry_decoder_is_loaded_when_first_needed(one_thread, monkeypatch):
    from napari_sam.models import loading

    model = make_tiny_model()
    model.name = "vit_t_lm"
    calls, decoder = [], build_instance_decoder(model).eval()

    def fake_load_decoder(sam):
        calls.append(sam)
        return decoder

    monkeypatch.setattr(loading, "load_decoder", fake_load_decoder)
    segmenter = Segmenter(model, diameter=None)
    segmenter.set_image(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8))
    labels = segmenter.segment_all("ais")
    segmenter.segment_all("ais", min_size=5)
    assert calls == [model]
    image = segmenter.image
    np.testing.assert_array_equal(segment_all(image, model=model, diameter=None, mode="ais"), labels)
    assert calls == [model, model]  # one load per segmenter


@pytest.mark.parametrize(
    "mode, settings, error, message",
    [
        ("apd", {}, ValueError, "unknown automatic mode 'apd': choose one of amg, ais, apg"),
        ("ais", dict(sampler="grid"), TypeError, "unknown AIS settings sampler: choose from "
                                                 "center_distance_threshold"),
        ("ais", dict(min_size=-1), ValueError, "min_size is a number of pixels"),
        ("apg", dict(sampler="grid"), TypeError, "unknown APG settings sampler: choose from "
                                                 "min_size"),
        ("apg", dict(nms_threshold=2), ValueError, r"nms_threshold must be a number in \[0, 1\]"),
        ("apg", dict(mask_threshold="auto"), ValueError, "mask_threshold must be a finite number"),
    ],
)
def test_bad_modes_and_settings_are_refused_before_any_embedding(one_thread, mode, settings,
                                                                  error, message):
    model = make_tiny_model()
    segmenter = Segmenter(model, diameter=None, decoder=build_instance_decoder(model))
    segmenter.set_image(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8))
    with pytest.raises(error, match=message):
        segmenter.segment_all(mode, **settings)
    assert segmenter.tiles and not segmenter._tiled._embeddings


def test_the_generator_takes_an_image_or_its_embedding_and_gives_the_same_labels(one_thread):
    model = make_tiny_model()
    generator = InstanceGenerator(model, build_instance_decoder(model))
    image, _ = synthetic_nuclei((50, 90), seed=1)
    labels = generator.generate(image, min_size=3)
    embedding = generator.predictor.embedding
    np.testing.assert_array_equal(generator.generate(embedding=embedding, min_size=3), labels)
    np.testing.assert_array_equal(generator.maps(embedding=embedding),
                                  decoder_maps(model, generator.decoder, embedding))
    for arguments in ({}, dict(image=image, embedding=embedding)):
        with pytest.raises(ValueError, match="give either the image or its embedding"):
            generator.generate(**arguments)


# -- parity with micro-sam ------------------------------------------------------------------

@pytest.fixture(scope="module")
def references(one_thread, tmp_path_factory):
    """Random nuclei_s weights and a random decoder, loaded into micro-sam's side and ours."""
    pytest.importorskip("micro_sam", reason="micro-sam 1.8.14 (the reference) is not installed")
    from reference import random_state, reference_nuclei_s
    from test_instance_decoder_parity import micro_sam_checkpoint, micro_sam_segmentation

    folder = tmp_path_factory.mktemp("ais")
    torch.manual_seed(0)
    reference = reference_nuclei_s()
    torch.save(random_state(reference, 0), folder / "nuclei_s.pt")
    # MobileSAM caches TinyViT's attention biases in eval(): load first, then eval.
    reference.load_state_dict(torch.load(folder / "nuclei_s.pt", weights_only=True))
    reference.eval()
    micro_sam_checkpoint(reference.image_encoder, folder / "decoder.pt", transposed=False, seed=1)
    state = torch.load(folder / "decoder.pt", map_location="cpu", weights_only=True)["decoder_state"]
    theirs = micro_sam_segmentation.get_decoder(reference.image_encoder, state, device="cpu")
    ours = load_model(checkpoint=folder / "nuclei_s.pt", device="cpu")
    return dict(reference=reference, their_decoder=theirs, model=ours,
                decoder=load_instance_decoder(ours, state, source="test weights"),
                segmentation=micro_sam_segmentation)


def test_ais_of_one_image_equals_micro_sams(references):
    from segment_anything import SamPredictor

    image, _ = synthetic_nuclei((200, 300), seed=3)  # enlarged to 256 px, padded below
    rgb = to_rgb_uint8(image)
    theirs = references["segmentation"].InstanceSegmentationWithDecoder(
        SamPredictor(references["reference"]), references["their_decoder"])
    theirs.initialize(rgb)
    generator = InstanceGenerator(references["model"], references["decoder"])
    maps = generator.maps(rgb)
    state = theirs.get_state()
    expected = np.stack([state[k] for k in ("foreground", "center_distances", "boundary_distances")])
    assert np.abs(maps - expected).max() <= MAPS_TOL
    for settings in ({}, dict(min_size=50, foreground_threshold=0.55)):
        expected = theirs.generate(**settings)
        assert expected.max() >= MIN_OBJECTS, "too few objects for the comparison to prove much"
        assert_same_instances(generator.generate(embedding=generator.predictor.embedding,
                                                 **settings), expected)


@pytest.mark.slow
def test_tiled_ais_equals_micro_sams_on_the_same_tiles(references):
    """A 384 px plane in 2 x 2 tiles. micro-sam's tiles (tile_shape 192, halo 64) are inner
    blocks of 192 px seen with up to 64 px around them; our layout with 256 px tiles and a
    32 px halo has the same cores and, on this plane, the same boxes (each grows to the model
    input, 256 px), so both run the encoder and the decoder on the same pixels."""
    image, _ = synthetic_nuclei((384, 384), seed=5)
    grey = to_rgb_uint8(image)[..., 0]  # micro-sam would take an RGB plane for a 3D stack
    segmenter = Segmenter(references["model"], diameter=None, tile=256, halo=32,
                          decoder=references["decoder"], snap=False)  # micro-sam's outlines
    segmenter.set_image(grey)
    assert {t.box for t in segmenter.tiles} == {(r, c, r + 256, c + 256)
                                                for r in (0, 128) for c in (0, 128)}
    assert {t.core for t in segmenter.tiles} == {(r, c, r + 192, c + 192)
                                                 for r in (0, 192) for c in (0, 192)}
    from micro_sam.util import _to_image
    for tile in segmenter.tiles:  # micro-sam rescales each tile to 0-255: here it changes nothing
        np.testing.assert_array_equal(_to_image(grey[tile.slices]), segmenter.image[tile.slices])

    from segment_anything import SamPredictor
    predictor = SamPredictor(references["reference"])
    predictor.model_type = predictor.model_name = "nuclei_s"  # what micro-sam's loader records
    theirs = references["segmentation"].TiledInstanceSegmentationWithDecoder(
        predictor, references["their_decoder"])
    theirs.initialize(grey, tile_shape=(192, 192), halo=(64, 64))
    state = theirs.get_state()
    expected = np.stack([state[k] for k in ("foreground", "center_distances", "boundary_distances")])
    assert np.abs(segmenter.instance_maps() - expected).max() <= MAPS_TOL
    expected = theirs.generate()
    assert expected.max() >= MIN_OBJECTS
    assert_same_instances(segmenter.segment_all("ais"), expected)
