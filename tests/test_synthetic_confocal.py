"""Tests of the synthetic confocal stack (napari_sam.synthetic.confocal_stack): what makes it a
hard 3D test case is there, and its labels are exact."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.synthetic import confocal_stack

SHAPE = (40, 192, 192)


@pytest.fixture(scope="module")
def stack():
    return confocal_stack(SHAPE, seed=0)


@pytest.fixture(scope="module")
def clean():
    """Noise-free and evenly lit, so that differences come from the optics alone."""
    return confocal_stack(SHAPE, seed=0, noise=0.0, illumination=0.0)


def stacked_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of labels in contact along z (voxels one above the other) whose centres are less
    than 8 pixels apart in xy: one nucleus on top of the other."""
    upper, lower = labels[:-1], labels[1:]
    contact = (upper > 0) & (lower > 0) & (upper != lower)
    pairs = {tuple(sorted(p)) for p in zip(upper[contact].tolist(), lower[contact].tolist())}
    centres = np.array(ndi.center_of_mass(labels > 0, labels, range(1, int(labels.max()) + 1)))
    return {(i, j) for i, j in pairs if np.hypot(*(centres[i - 1, 1:] - centres[j - 1, 1:])) < 8}


def test_types_and_a_plausible_number_of_nuclei(stack):
    image, labels = stack
    assert image.shape == labels.shape == SHAPE
    assert image.dtype == np.uint16 and labels.dtype == np.uint32
    assert 15 <= labels.max() <= 40


def test_same_seed_is_bit_identical_and_another_differs(stack):
    image, labels = confocal_stack(SHAPE, seed=0)
    np.testing.assert_array_equal(image, stack[0])
    np.testing.assert_array_equal(labels, stack[1])
    other_image, other_labels = confocal_stack(SHAPE, seed=1)
    assert not np.array_equal(other_image, image) and not np.array_equal(other_labels, labels)


def test_each_label_is_one_connected_region(stack):
    labels = stack[1]
    n = int(labels.max())
    assert np.array_equal(np.unique(labels), np.arange(n + 1))
    for i, box in enumerate(ndi.find_objects(labels), 1):
        assert ndi.label(labels[box] == i)[1] == 1, i  # face connectivity


def test_nuclei_span_planes_as_spheres_sampled_anisotropically(stack):
    labels = stack[1]
    boxes = ndi.find_objects(labels)
    planes = np.median([b[0].stop - b[0].start for b in boxes])
    rows = np.median([b[1].stop - b[1].start for b in boxes])
    # radius 8-12 pixels, 3 pixels per plane, somewhat flattened: about 5-7 planes, 20 rows
    assert 4 <= planes <= 8 and 16 <= rows <= 26


def test_empty_planes_have_no_nuclei_but_their_light(stack, clean):
    image, labels = stack
    assert not labels[:3].any() and not labels[-3:].any()
    assert labels[3].any() and labels[-4].any()
    for data in (image, clean[0]):
        data = data.astype(float)
        for empty, sample in ((2, 3), (-3, -4)):
            under = labels[sample] > 0
            far = ~ndi.binary_dilation(labels.any(axis=0), iterations=10)
            # the light of the nuclei cut by the end of the sample, well above the noise
            excess = data[empty][under].mean() - np.median(data[empty][far])
            assert excess > 10 * data[empty][far].std() + 20, (empty, excess)


def test_the_empty_planes_are_those_asked_for():
    labels = confocal_stack(SHAPE, seed=0, empty_planes=(0, 7))[1]
    assert labels[0].any() and not labels[-7:].any() and labels[-8].any()
    with pytest.raises(ValueError, match="no plane"):
        confocal_stack((6, 32, 32), empty_planes=3)
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        confocal_stack((32, 32))


def test_some_nuclei_lie_on_top_of_one_another(stack):
    pairs = stacked_pairs(stack[1])
    assert len(pairs) >= 4
    # they come from stacking, not from chance contacts of the clustered layout
    assert len(stacked_pairs(confocal_stack(SHAPE, seed=0, stacked=0.0)[1])) < len(pairs) / 2


def test_nuclei_get_dimmer_with_depth(clean):
    image, labels = clean
    flat = confocal_stack(SHAPE, seed=0, noise=0.0, illumination=0.0, depth_fade=0.0)[0]
    ids = np.arange(1, int(labels.max()) + 1)
    depth = np.array(ndi.center_of_mass(labels > 0, labels, ids))[:, 0]
    ratio = (ndi.mean(image.astype(float) - 140.0, labels, ids)
             / ndi.mean(flat.astype(float) - 140.0, labels, ids))  # above the background
    order = np.argsort(depth)
    assert np.all(np.diff(ratio[order]) < 0.02)  # falls with depth (up to light from neighbours)
    assert ratio[order[0]] > 0.85 and ratio[order[-1]] < 0.65


def test_blurred_signal_reaches_beyond_the_nuclei_along_z(clean):
    image, labels = clean
    background = np.median(image)

    def extra_planes(image):
        """For each nucleus alone in its column: planes where its light is above a fifth of its
        peak, minus the planes of its label."""
        extra = []
        for i in range(1, int(labels.max()) + 1):
            mask = labels == i
            column = mask.any(axis=0)
            if ((labels > 0) & ~mask)[:, column].any():
                continue
            profile = image[:, column].mean(axis=1) - background
            extra.append(int((profile > 0.2 * profile.max()).sum()) - int(mask.any(axis=(1, 2)).sum()))
        return np.array(extra)

    confocal = extra_planes(image.astype(float))
    assert len(confocal) >= 5 and np.all(confocal >= 1) and np.mean(confocal) >= 1.5
    # a PSF as long along z as across it (in physical units) barely smears over planes
    isotropic = confocal_stack(SHAPE, seed=0, noise=0.0, illumination=0.0, axial_blur=1.0)[0]
    assert np.mean(extra_planes(isotropic.astype(float))) < 0.5
