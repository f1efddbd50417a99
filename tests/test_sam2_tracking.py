"""Following objects through a stack with SAM 2.1: bad input, bounded memory, objects that end,
the label volume and the command line. (Equality with Meta's sam2: test_sam2_parity.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.cli import main
from napari_sam.engine.tracking import PlaneTracker, fill_holes
from napari_sam.models.loading import load_model
from napari_sam.models.registry import build_sam2_1
from napari_sam.models.sam2.model import PlaneFeatures, Sam2
from napari_sam.volume.io import open_volume
from napari_sam.volume.tracking import Seed, track_stack


@pytest.fixture(scope="module")
def model() -> Sam2:
    """A random SAM 2.1 tiny at a 256 px input (fast), whose objects are always present."""
    torch.manual_seed(0)
    model = build_sam2_1("tiny", img_size=256).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    return model


def random_features(model: Sam2, shape=(1, 256, 16, 16)):
    """``features_for`` giving random features of the right shapes (no encoder: fast)."""
    def features_for(plane: int) -> PlaneFeatures:
        generator = torch.Generator().manual_seed(plane)
        b, c, h, w = shape
        return PlaneFeatures(torch.randn(shape, generator=generator),
                             (torch.randn((b, c // 8, 4 * h, 4 * w), generator=generator),
                              torch.randn((b, c // 4, 2 * h, 2 * w), generator=generator)))
    return features_for


def tracker(model, n_planes=8, **options) -> PlaneTracker:
    return PlaneTracker(model, n_planes=n_planes, plane_shape=(64, 64),
                        features_for=random_features(model), **options)


def test_prompts_outside_the_stack_or_malformed_are_refused(model):
    t = tracker(model)
    for plane in (-1, 8, 2.5, True):
        with pytest.raises(ValueError, match="outside the stack"):
            t.add_prompt(plane, 1, points=[[10, 10]])
    with pytest.raises(ValueError, match="positive integer"):
        t.add_prompt(0, 0, points=[[10, 10]])
    with pytest.raises(ValueError, match="one kind of prompt"):
        t.add_prompt(0, 1, points=[[10, 10]], mask=np.ones((64, 64), bool))
    with pytest.raises(ValueError, match="shape"):
        t.add_prompt(0, 1, mask=np.ones((32, 32), bool))
    with pytest.raises(ValueError, match="labels"):
        t.add_prompt(0, 1, points=[[10, 10]], labels=[2])
    with pytest.raises(RuntimeError, match="no prompts"):
        next(t.propagate())
    assert t.object_ids == []


def test_sam_models_and_checkpoints_are_refused_by_the_sam2_path(tmp_path):
    sam = load_model(device="cpu")  # the shipped SAM (nuclei_s)
    with pytest.raises(TypeError, match="SAM 2.1"):
        PlaneTracker(sam, n_planes=4, plane_shape=(32, 32), features_for=lambda p: None)
    checkpoint = tmp_path / "nuclei_s.pt"
    torch.save(sam.state_dict(), checkpoint)
    with pytest.raises(ValueError, match="is a 'nuclei_s' checkpoint, not 'sam2.1_hiera_tiny'"):
        load_model("sam2.1_hiera_tiny", checkpoint=checkpoint, device="cpu")


def test_a_sam2_checkpoint_is_recognised_from_its_content(tmp_path):
    torch.manual_seed(1)
    built = build_sam2_1("tiny")
    checkpoint = tmp_path / "anything.pt"
    torch.save({"model": built.state_dict()}, checkpoint)  # Meta's layout
    loaded = load_model(checkpoint=checkpoint, device="cpu")
    assert isinstance(loaded, Sam2) and loaded.name == "sam2.1_hiera_tiny"
    assert torch.equal(loaded.no_mem_embed, built.no_mem_embed)


@pytest.mark.slow
def test_memory_is_bounded_whatever_the_number_of_planes(model):
    kept = {}
    for planes in (40, 64):
        t = tracker(model, n_planes=planes, end_after=None)
        t.add_prompt(0, 1, points=[[30, 30]])
        assert len(list(t.propagate())) == planes
        obj = t._objects[1]
        kept[planes] = len(obj.tracked)
        assert max(obj.tracked) == planes - 1  # the latest planes are the ones kept
    assert kept[40] == kept[64] == 15 + 16  # near the prompted plane, and the last 16


def test_an_object_that_ends_is_no_longer_followed(model):
    t = tracker(model, n_planes=10, end_after=2)
    t.add_prompt(3, 1, points=[[30, 30]])
    with torch.no_grad():  # from now on the model sees no object on any plane
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-100.0)
    try:
        planes = [p.plane for p in t.propagate()]
        assert planes == [3, 4, 5]  # its own plane, then two planes without it
        followed = tracker(model, n_planes=10, end_after=None)
        followed.add_prompt(3, 1, points=[[30, 30]])
        everything = list(followed.propagate())
        assert [p.plane for p in everything] == list(range(3, 10))
        assert not everything[-1].masks.any() and everything[-1].object_scores[0] < 0
    finally:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)


def test_an_object_prompted_higher_up_is_not_ended_before_its_plane(model):
    t = tracker(model, n_planes=10, end_after=1)
    t.add_prompt(1, 1, points=[[20, 20]])
    t.add_prompt(7, 2, points=[[40, 40]])
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-100.0)
    try:
        seen = {p.plane: p.object_ids for p in t.propagate()}
    finally:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    assert seen[7] == [2]  # object 1 ended at plane 2; object 2 is followed up to its plane
    assert seen[2] == [1, 2] and 1 not in seen[3]


def test_small_holes_are_filled_and_large_ones_kept():
    logits = torch.full((1, 1, 12, 12), 5.0)
    logits[0, 0, 2:4, 2:4] = -3  # 4 px hole
    logits[0, 0, 6:10, 6:10] = -3  # 16 px hole
    filled = fill_holes(logits, 8)
    assert (filled[0, 0, 2:4, 2:4] > 0).all()
    assert (filled[0, 0, 6:10, 6:10] < 0).all()
    assert torch.equal(fill_holes(torch.full((2, 1, 5, 5), 3.0), 8), torch.full((2, 1, 5, 5), 3.0))


def disc_stack(planes=6, size=64):
    yy, xx = np.mgrid[:size, :size]
    stack = np.zeros((planes, size, size), np.uint16)
    for z in range(planes):
        stack[z][((yy - 32) ** 2 + (xx - 30) ** 2) < (12 - abs(z - 3)) ** 2] = 3000
    return stack + 100


def test_track_stack_writes_the_seeds_ids_through_the_planes(model, tmp_path):
    stack = disc_stack()
    seeds = np.zeros_like(stack, np.uint32)
    seeds[3][(np.mgrid[:64, :64][0] - 32) ** 2 + (np.mgrid[:64, :64][1] - 30) ** 2 < 64] = 9
    summary = track_stack(stack, seeds, tmp_path / "labels.zarr", model=model)
    labels = np.asarray(open_volume(tmp_path / "labels.zarr").data)
    assert labels.shape == stack.shape and labels.dtype == np.uint32
    assert summary.objects == 1 and summary.planes == 6 and summary.ids == [9]
    assert set(np.unique(labels)) <= {0, 9} and (labels[3] == 9).any()


def test_bad_seeds_write_nothing(model, tmp_path):
    stack = disc_stack()
    output = tmp_path / "labels.zarr"
    with pytest.raises(ValueError, match="outside the volume"):
        track_stack(stack, np.array([[2, 10, 70]]), output, model=model)
    with pytest.raises(ValueError, match="say which plane"):
        track_stack(stack, np.ones((64, 64), np.uint8), output, model=model)
    with pytest.raises(ValueError, match="no object"):
        track_stack(stack, np.zeros((64, 64), np.uint8), output, model=model, plane=2)
    with pytest.raises(ValueError, match="given twice on plane 2"):
        track_stack(stack, [Seed(2, 1, points=np.array([[30.0, 30.0]])),
                            Seed(2, 1, points=np.array([[31.0, 31.0]]))], output, model=model)
    with pytest.raises(TypeError, match="SAM 2.1"):
        track_stack(stack, np.array([[2, 30, 30]]), output, model="nuclei_s", device="cpu")
    assert not output.exists() and list(tmp_path.iterdir()) == []
    output.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        track_stack(stack, np.array([[2, 30, 30]]), output, model=model)


@pytest.mark.slow
def test_propagate_command_from_points(tmp_path, capsys):
    torch.manual_seed(2)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_sam2_1("tiny").state_dict()}, checkpoint)
    tifffile.imwrite(tmp_path / "stack.tif", disc_stack(planes=4), metadata={"axes": "ZYX"})
    (tmp_path / "seeds.csv").write_text("index,axis-0,axis-1,axis-2\n0,1,32,30\n1,2,10,10\n")
    code = main(["propagate", str(tmp_path / "stack.tif"), str(tmp_path / "seeds.csv"), "-o",
                 str(tmp_path / "labels.zarr"), "--checkpoint", str(checkpoint),
                 "--device", "cpu", "--follow-absent"])
    assert code == 0
    assert "2 objects followed through 4 planes" in capsys.readouterr().out
    labels = np.asarray(open_volume(tmp_path / "labels.zarr").data)
    assert labels.shape == (4, 64, 64) and set(np.unique(labels)) <= {0, 1, 2}
    code = main(["propagate", str(tmp_path / "stack.tif"), str(tmp_path / "seeds.csv"), "-o",
                 str(tmp_path / "labels.zarr"), "--checkpoint", str(checkpoint)])
    assert code == 2 and "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_key_planes_segmented_then_followed_through_z(model, tmp_path):
    from napari_sam.volume.tracking import segment_and_track

    stack = disc_stack()
    summary = segment_and_track(stack, tmp_path / "labels.zarr", model=model, key_planes=[3, 1],
                                key_model="nuclei_s", device="cpu")
    labels = np.asarray(open_volume(tmp_path / "labels.zarr").data)
    disc = stack[3] > 1000
    assert summary.objects >= 1 and summary.ids == list(range(1, summary.objects + 1))
    # The key plane's object is its own mask prompt there: it is written as it was found.
    assert (labels[1][stack[1] > 1000] == 1).mean() > 0.5
    assert labels[3][disc].max() >= 1 and set(np.unique(labels)) <= {0, *summary.ids}


def test_segment_stack_propagate_refuses_options_of_other_modes(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "stack.tif", disc_stack(), metadata={"axes": "ZYX"})
    code = main(["segment-stack", str(tmp_path / "stack.tif"), str(tmp_path / "out.zarr"),
                 "--mode", "propagate", "--resume", "--points-per-side", "8"])
    assert code == 2
    assert "--resume, --points-per-side: not options of --mode propagate" in capsys.readouterr().err
    code = main(["segment-stack", str(tmp_path / "stack.tif"), str(tmp_path / "out.zarr"),
                 "--key-planes", "1,2"])
    assert code == 2 and "options of --mode propagate" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_track_stack_into_an_ome_zarr_image_writes_its_labels_with_levels_and_seed_planes(
        model, tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from test_ome_zarr import levels, nearest, ome, ome_image

    image = ome_image(tmp_path / "discs.ome.zarr", disc_stack())
    seeds = [Seed(3, 5, points=np.array([[32.0, 30.0]]))]
    summary = track_stack(str(image), seeds, model=model)  # no output: the image's labels
    assert summary.output == image / "labels" / "napari-sam"
    finest, *lower = levels(summary.output)
    for level in lower:
        np.testing.assert_array_equal(level, nearest(finest, level.shape))
    assert len(lower) == 2 and (finest[3] == 5).any()
    (entry,) = ome(summary.output)["image-label"]["properties"]
    assert 0 < entry.pop("predicted_iou") <= 1  # SAM 2's sigmoid IoU, averaged over planes
    assert entry == {"label-value": 5, "area": int((finest == 5).sum()), "plane": 3}
    nodes = list(Reader(parse_url(str(summary.output)))())
    assert any(node.load(Label) for node in nodes)
