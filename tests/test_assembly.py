"""3D assembly of per-plane fragments: one id per nucleus through z, two for nuclei stacked in
z, nothing from out-of-focus light, the same labels after a stop while writing.

The fragments are drawn here as a slice-by-slice segmenter gives them (ids unique in the
volume, plane ``z`` numbered from ``z * 1000 + 1``), over an image whose nuclei are bright discs.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.volume.assembly import assemble_objects, expected_planes
from napari_sam.volume.linking import link_slices

SHAPE = (12, 64, 64)


def disc(radius: float, centre=(32, 32), shape=SHAPE[1:]) -> np.ndarray:
    y, x = np.indices(shape)
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def stack(objects, shape=SHAPE, blur_planes=()) -> tuple[np.ndarray, np.ndarray]:
    """Fragments and image for ``objects``: lists of ``(z, mask)`` cross-sections, each drawn
    with its own id; planes in ``blur_planes`` are blurred in the image."""
    fragments = np.zeros(shape, np.uint32)
    image = np.full(shape, 100.0)
    count = np.zeros(shape[0], int)
    for sections in objects:
        for z, mask in sections:
            count[z] += 1
            fragments[z][mask] = z * 1000 + count[z]
            image[z][mask] = 1000.0
    for z in blur_planes:
        image[z] = ndi.gaussian_filter(image[z], 4)
    rng = np.random.default_rng(0)
    return fragments, image + rng.normal(0, 10, shape)


def nucleus(z0: int, radii, centre=(32, 32)):
    return [(z0 + k, disc(r, centre)) for k, r in enumerate(radii)]


def objects_in(labels: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(labels) if i]


def test_a_nucleus_in_pieces_over_six_planes_comes_out_as_one_id():
    # caps far smaller than the middle (IoU 0.2 with their neighbour) and one plane cut in two
    sections = nucleus(3, [3, 7, 9, 9, 7, 3])
    left = disc(9) & (np.indices(SHAPE[1:])[1] < 32)
    sections[3] = (6, left)
    pieces = [(6, disc(9) & ~left)]
    fragments, image = stack([sections, pieces])
    linked = fragments.copy()
    link_slices(linked)
    assert len(objects_in(linked)) > 1  # what linking by IoU alone makes of it

    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0), snap=False)
    assert objects_in(fragments) == [3001]  # the id of its first fragment
    assert (fragments[3:9] > 0).sum() == sum(m.sum() for _, m in sections + pieces)
    assert summary.objects == 1 and summary.merged == 1


def test_two_nuclei_stacked_in_z_stay_two():
    top = nucleus(1, [6, 8, 9, 8, 6])
    bottom = nucleus(6, [6, 8, 9, 8, 6], centre=(33, 31))  # touching it, a pixel aside
    fragments, image = stack([top, bottom])
    linked = fragments.copy()
    link_slices(linked)
    assert len(objects_in(linked)) == 1  # linking by IoU merges them

    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0))
    assert summary.split == 1
    ids = [np.unique(fragments[z][fragments[z] > 0]) for z in range(1, 11)]
    assert all(len(i) == 1 for i in ids)
    assert len({int(i[0]) for i in ids[:5]}) == 1 and len({int(i[0]) for i in ids[5:]}) == 1
    assert ids[0][0] != ids[5][0]


def test_a_nucleus_longer_in_z_than_wide_stays_one_and_a_dip_in_contrast_splits_two():
    # one nucleus of 7 planes where its width says 4.6 (a diameter of 14 px, a z step of
    # 3 px), evenly bright: no neck, no dip, it is one object
    long = nucleus(2, [4, 7, 7, 7, 7, 7, 4])
    fragments, image = stack([long])
    summary = assemble_objects(fragments, image, voxel_size=(3.0, 1.0, 1.0))
    assert objects_in(fragments) == [2001] and summary.split == 0

    # two nuclei in one column, no neck, a dimmer plane between them where the light of both
    # mixes: two objects, though the column is shorter than one and a half objects
    column = nucleus(2, [4, 6, 6, 6, 6, 6, 6, 4])
    fragments, image = stack([column])
    image[5] = np.where(fragments[5] > 0, 500.0, 100.0) + image[5] - np.where(
        fragments[5] > 0, 1000.0, 100.0)
    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0), snap=False)
    assert summary.split == 1
    assert len(objects_in(fragments)) == 2


def test_dim_light_at_the_end_of_a_nucleus_does_not_make_it_long_enough_to_cut():
    # a bright nucleus, a neck, then a dimmer nucleus of 6 planes whose first two planes hold
    # only the haze between the two: cut from the bright one at the neck, the dim one is 8
    # planes long with its haze, 6 without, and an object of this diameter spans 4
    bright = nucleus(0, [6, 9, 10, 9, 6])
    neck = nucleus(5, [3])
    dim = nucleus(6, [7, 7, 8, 8, 8, 8, 8, 8])
    fragments, image = stack([bright + neck + dim], shape=(16, 64, 64))
    level = np.full(16, 1000.0)
    level[5], level[6:8], level[8:14] = 300.0, 250.0, 700.0
    image = np.where(fragments > 0, image - 1000.0 + level[:, None, None], image)
    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0), diameter=8,
                               snap=False)
    assert summary.objects == 2 and objects_in(fragments) == [1, 8001]
    assert (fragments[:5] == 1).sum() == sum(m.sum() for _, m in bright)
    assert (fragments[8:14] == 8001).sum() == sum(m.sum() for _, m in dim[2:])
    assert not fragments[5:8].any()


def test_a_dim_nucleus_under_a_bright_one_without_a_dip_is_cut_at_the_bright_ones_edge():
    # a bright nucleus on a dimmer one (0.39 of its contrast), no dip between them: the column
    # is longer than 1.6 objects (an object of this diameter spans 6 planes), so it is cut, and
    # where the bright one's light falls under half, not in the middle of the dim one
    bright = nucleus(0, [6, 8, 9, 9, 9, 9])  # no neck between the two
    dim = nucleus(6, [9, 9, 9, 8, 6])
    fragments, image = stack([bright + dim], shape=(14, 64, 64))
    contrast = np.array([400.0, 900, 900, 900, 900, 400, 350, 350, 350, 350, 350, 0, 0, 0])
    image = np.where(fragments > 0, image - 900.0 + contrast[:, None, None], image)
    summary = assemble_objects(fragments, image, voxel_size=(3.0, 1.0, 1.0), diameter=18,
                               snap=False)
    assert summary.split == 1
    assert objects_in(fragments) == [1, 6001]
    assert (fragments[:6] == 1).sum() == sum(m.sum() for _, m in bright)
    assert (fragments[6:11] == 6001).sum() == sum(m.sum() for _, m in dim)


def test_a_nucleus_cut_into_a_large_and_a_thin_piece_plane_after_plane_comes_out_as_one():
    # a segmenter outlines the nucleus whole in its first plane, then cuts a sliver off its
    # side in every plane: the sliver's chain is as long as the nucleus but far thinner
    sections = nucleus(2, [9, 9, 9, 9, 9, 7])
    sliver = np.indices(SHAPE[1:])[1] >= 38
    main = [sections[0]] + [(z, m & ~sliver) for z, m in sections[1:]]
    side = [(z, m & sliver) for z, m in sections[1:]]
    fragments, image = stack([main, side])
    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0), diameter=18,
                               snap=False)
    assert objects_in(fragments) == [2001]
    assert (fragments == 2001).sum() == sum(m.sum() for _, m in sections)
    assert summary.objects == 1 and summary.merged == len(side)


def test_a_small_nucleus_under_a_large_one_is_not_joined_to_it_as_a_sliver():
    # a small nucleus (thin beside the large one's cross-section) under the large one, cut
    # from it where the contrast dips: it lies below the large one, not beside it in its
    # planes, so it stays an object of its own
    large = nucleus(1, [9, 9, 9, 9, 9])
    small = nucleus(6, [4, 4, 4, 4], centre=(32, 36))
    fragments, image = stack([large + small])
    contrast = np.array([0.0, 900, 900, 900, 900, 900, 300, 600, 600, 600, 0, 0])
    image = np.where(fragments > 0, image - 900.0 + contrast[:, None, None], image)
    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0), diameter=18,
                               snap=False)
    assert summary.split == 1 and summary.objects == 2
    assert objects_in(fragments) == [1001, 6001]
    assert (fragments[1:6] == 1001).sum() == sum(m.sum() for _, m in large)
    assert (fragments[7:10] == 6001).sum() == sum(m.sum() for _, m in small[1:])


def test_blurred_top_planes_add_no_object():
    sharp = nucleus(4, [4, 8, 9, 9, 8, 4])
    # the planes above hold the nucleus's blurred light, found as wider dim blobs
    halo = [(2, disc(11)), (3, disc(12))]
    stray = [(0, disc(6, centre=(12, 50)))]  # light from outside the stack, in a blurred plane
    fragments, image = stack([sharp, stray])
    for z, mask in halo:
        fragments[z][mask] = z * 1000 + 1
        image[z][mask] = 300.0
    image[:4] = ndi.gaussian_filter(image[:4], (0, 4, 4))

    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0), min_planes=1)
    assert objects_in(fragments) == [4001]
    assert not fragments[:4].any()  # neither the halo above it nor the stray blob
    assert summary.trimmed == 2 and summary.dropped == 1


def test_outlines_drawn_wide_around_a_blurred_nucleus_are_snapped_to_its_edge():
    truth = nucleus(3, [7, 8, 9, 9, 8, 7])
    wide = [(z, ndi.binary_dilation(mask, iterations=4)) for z, mask in truth]
    fragments, image = stack([wide])
    image[:] = 100.0
    for z, mask in truth:
        image[z][mask] = 1000.0
    image = ndi.gaussian_filter(image, (0, 2, 2))
    inside = np.zeros(SHAPE, bool)
    for z, mask in truth:
        inside[z] = mask

    def iou(labels):
        return (inside & (labels > 0)).sum() / (inside | (labels > 0)).sum()

    loose = np.zeros_like(fragments)
    assemble_objects(fragments, image, out=loose, snap=False)
    assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0))
    assert iou(loose) < 0.6 and iou(fragments) > 0.85
    assert objects_in(fragments) == [3001]


def test_outlines_drawn_inside_a_nucleus_grow_to_its_edge_and_not_into_its_neighbour():
    left, right = nucleus(3, [8, 9, 9, 8], centre=(32, 18)), nucleus(3, [8, 9, 9, 8], (32, 40))
    inner = [[(z, ndi.binary_erosion(mask, iterations=2)) for z, mask in cells]
             for cells in (left, right)]
    fragments, image = stack(inner)
    image[:] = 100.0
    for z, mask in left + right:
        image[z][mask] = 1000.0
    inside, neighbour = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    for (z, mask), (_, other) in zip(left, right):
        inside[z], neighbour[z] = mask, other

    loose = np.zeros_like(fragments)
    assemble_objects(fragments, image, out=loose, voxel_size=(2.0, 1.0, 1.0), snap=False)
    assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0))
    first = fragments == 3001

    def iou(found):
        return (found & inside).sum() / (found | inside).sum()

    assert iou(loose == 3001) < 0.75 and iou(first) > 0.9  # grown back to the edge
    assert len(objects_in(fragments)) == 2 and not (first & neighbour).any()


def test_pieces_in_fewer_planes_than_min_planes_are_dropped():
    fragments, image = stack([nucleus(2, [5, 9, 9, 5]), nucleus(5, [6], centre=(10, 10))])
    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0), min_planes=2)
    assert objects_in(fragments) == [2001] and summary.dropped == 1


def test_default_min_planes_comes_from_the_voxel_size_and_diameter():
    assert expected_planes(20, (2.0, 0.5, 0.5)) == 5.0
    fragments, image = stack([nucleus(0, [5, 9, 9, 5])])
    assert assemble_objects(fragments.copy(), image, voxel_size=(0.5, 1.0, 1.0),
                            diameter=30).min_planes == 20
    assert assemble_objects(fragments.copy(), image, voxel_size=(3.0, 1.0, 1.0),
                            diameter=18).min_planes == 2


def test_specks_of_noise_in_empty_planes_do_not_set_the_diameter():
    # a segmenter finds specks in the noise of empty planes, in the same places plane after
    # plane: many short chains, far smaller than the nuclei
    nuclei = [nucleus(4, [5, 9, 9, 9, 9, 5], centre=(16 + 32 * (k // 2), 16 + 32 * (k % 2)))
              for k in range(4)]
    fragments, image = stack(nuclei)
    without = assemble_objects(fragments.copy(), image, voxel_size=(2.0, 1.0, 1.0))
    specks = [[(z, disc(2, centre=(4 + 8 * (k // 8), 4 + 8 * (k % 8)))) for z in (0, 1)]
              for k in range(40)]
    fragments, image = stack(specks + nuclei)
    image[:2] -= np.where(fragments[:2] > 0, 900.0, 0.0)  # the specks are noise: no contrast
    summary = assemble_objects(fragments, image, voxel_size=(2.0, 1.0, 1.0))
    assert summary.min_planes == without.min_planes == 3
    assert len(objects_in(fragments)) == 4 and not fragments[:2].any()


def test_writing_into_another_array_leaves_the_fragments_and_can_be_redone():
    fragments, image = stack([nucleus(1, [4, 8, 9, 8, 4]), nucleus(6, [4, 8, 9, 8, 4], (33, 31)),
                              nucleus(2, [3, 6, 6, 3], centre=(10, 50))])
    whole = np.zeros_like(fragments)
    assemble_objects(fragments, image, out=whole, voxel_size=(2.0, 1.0, 1.0))
    original = fragments.copy()

    class StopsAfter:
        """An output that stops the run after some planes, like a kill while writing."""

        def __init__(self, planes: int) -> None:
            self.data, self.left = np.zeros_like(fragments), planes
            self.shape, self.dtype = self.data.shape, self.data.dtype

        def __setitem__(self, z, plane):
            if self.left == 0:
                raise KeyboardInterrupt
            self.left -= 1
            self.data[z] = plane

    out = StopsAfter(4)
    with pytest.raises(KeyboardInterrupt):
        assemble_objects(fragments, image, out=out, voxel_size=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(fragments, original)
    out.left = -1  # no more stops: assemble again into the same array
    assemble_objects(fragments, image, out=out, voxel_size=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(out.data, whole)
    assert len(objects_in(whole)) == 3


def test_bad_input_is_refused_with_the_fix():
    fragments, image = stack([nucleus(0, [5, 9, 5])])
    twice = fragments.copy()
    twice[5][disc(4)] = 1  # the id of plane 0's object again
    with pytest.raises(ValueError, match="more than one plane.*link=False"):
        assemble_objects(twice, image)
    with pytest.raises(ValueError, match="do not match"):
        assemble_objects(fragments, image[:5])
    with pytest.raises(ValueError, match="integer label volume"):
        assemble_objects(fragments.astype(float), image)
    with pytest.raises(ValueError, match="voxel_size"):
        assemble_objects(fragments, image, voxel_size=(0, 1, 1))
    with pytest.raises(ValueError, match="min_planes"):
        assemble_objects(fragments, image, min_planes=0)


def test_command_line_takes_the_voxel_size_and_the_minimum_extent(tmp_path, capsys):
    import tifffile

    from napari_sam.cli import main
    from napari_sam.volume.io import open_zarr_array

    rng = np.random.default_rng(0)
    image = rng.normal(40, 8, (4, 64, 64))
    for z in range(4):  # a disc through all planes, and one in plane 1 only
        image[z][disc(7, centre=(20, 20), shape=(64, 64))] += 150
    image[1][disc(7, centre=(44, 44), shape=(64, 64))] += 150
    source = tmp_path / "stack.tif"  # planes 3 µm apart, pixels of 1 µm
    tifffile.imwrite(source, np.clip(image, 0, 255).astype(np.uint8), imagej=True,
                     resolution=(1.0, 1.0), metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})

    def objects_3d(name, *options) -> str:
        # AMG labels each plane alone: a disc 14 px wide in one plane 3 µm thick is no nucleus
        # the voxel size allows, and APG's z context would not find it in the first place
        assert main(["segment-stack", str(source), str(tmp_path / name), "--diameter", "14",
                     "--mode", "amg", *options]) == 0
        return capsys.readouterr().out

    # a 14 px object spans 14 / 3 planes: at least 2 by default, so the one-plane disc goes
    assert "1 objects in 3D" in objects_3d("file.zarr")
    labels = open_zarr_array(tmp_path / "file.zarr")[:]
    assert not labels[1][disc(7, centre=(44, 44), shape=(64, 64))].any()
    assert len(np.unique(labels[:, 20, 20])) == 1 and labels[0, 20, 20] > 0
    assert "2 objects in 3D" in objects_3d("one.zarr", "--min-planes", "1")
    # planes 1 µm apart (given): the 4-plane disc is too short to be an object of 14 µm
    assert "0 objects in 3D" in objects_3d("thin.zarr", "--voxel-size", "1,1,1")

    assert main(["segment-stack", str(source), str(tmp_path / "bad.zarr"),
                 "--voxel-size", "0,1,1"]) == 2
    assert "voxel_size" in capsys.readouterr().err
    assert not (tmp_path / "bad.zarr").exists()


def test_a_flat_bright_object_is_kept_and_a_nan_image_gives_no_object():
    fragments = np.zeros((3, 16, 16), np.uint32)
    fragments[1, 4:8, 4:8] = 1001
    image = np.zeros((3, 16, 16))
    image[1, 4:8, 4:8] = 100.0  # noise-free: every pixel at the mean
    kept = fragments.copy()
    assert assemble_objects(kept, image).objects == 1
    assert (kept == 1001).sum() >= 12  # all but the corners, which smoothing takes below half
    with np.errstate(invalid="ignore"):
        summary = assemble_objects(fragments, np.full(image.shape, np.nan))
    assert summary.objects == 0 and not fragments.any()
