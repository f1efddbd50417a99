"""Tests of the synthetic fluorescence nuclei generator (napari_sam.synthetic)."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label, regionprops

from napari_sam.synthetic import SyntheticNuclei, synthetic_dataset, synthetic_nuclei


@pytest.fixture(scope="module")
def pair2d():
    return synthetic_nuclei((192, 160), seed=0)


@pytest.fixture(scope="module")
def pair3d():
    return synthetic_nuclei((12, 128, 128), seed=0)


def assert_partition(labels, *, connectivity=1):
    """Ids are 1..n without gaps and each id is one connected region."""
    n = int(labels.max())
    ids = np.unique(labels)
    assert np.array_equal(ids[ids > 0], np.arange(1, n + 1))
    for region in regionprops(labels):
        # region.image is the object's own mask in its bounding box
        assert label(region.image, connectivity=connectivity).max() == 1, region.label
    return n


# --------------------------------------------------------------------------- #
# dtype, shape, value range
# --------------------------------------------------------------------------- #
def test_2d_dtype_and_shape(pair2d):
    image, labels = pair2d
    assert image.shape == labels.shape == (192, 160)
    assert image.dtype == np.uint16
    assert labels.dtype == np.uint32
    assert labels.max() >= 10


def test_3d_dtype_and_shape(pair3d):
    image, labels = pair3d
    assert image.shape == labels.shape == (12, 128, 128)
    assert image.dtype == np.uint16
    assert labels.dtype == np.uint32
    assert labels.max() >= 10


def test_shape_accepts_lists_and_numpy_ints():
    image, labels = synthetic_nuclei([np.int64(40), 48], seed=1)
    assert image.shape == (40, 48)


def test_realistic_intensity_range(pair2d):
    image, labels = pair2d
    background = np.median(image[labels == 0])
    objects = np.median(image[labels > 0])
    assert 100 <= background <= 400
    assert 300 <= objects - background <= 5000
    assert image.max() < 65535  # nothing saturates with the defaults


# --------------------------------------------------------------------------- #
# determinism
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(96, 80), (6, 64, 64)])
def test_same_seed_is_bit_identical(shape):
    a = synthetic_nuclei(shape, seed=42)
    b = synthetic_nuclei(shape, seed=42)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("shape", [(96, 80), (6, 64, 64)])
def test_different_seed_differs(shape):
    a = synthetic_nuclei(shape, seed=1)
    b = synthetic_nuclei(shape, seed=2)
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


def test_generator_seed_is_accepted():
    a = synthetic_nuclei((64, 64), seed=np.random.default_rng(5))
    b = synthetic_nuclei((64, 64), seed=np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])


# --------------------------------------------------------------------------- #
# labels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "options",
    [
        {},
        # crowded, strongly overlapping, irregular: many occlusions to resolve
        dict(density=0.8, overlap=0.5, clustering=1.0, irregularity=0.3, elongation=(1.5, 2.5)),
        dict(radius=(3, 5), density=0.5),
    ],
)
def test_2d_labels_are_contiguous_connected_partition(seed, options):
    _, labels = synthetic_nuclei((128, 128), seed=seed, **options)
    n = assert_partition(labels)
    assert n >= 5


def test_touching_objects_exist():
    _, labels = synthetic_nuclei((192, 192), density=0.5, seed=3)
    # pixels whose right or lower neighbour belongs to a different nucleus
    right = (labels[:, :-1] > 0) & (labels[:, 1:] > 0) & (labels[:, :-1] != labels[:, 1:])
    down = (labels[:-1] > 0) & (labels[1:] > 0) & (labels[:-1] != labels[1:])
    assert right.sum() + down.sum() > 20


def test_3d_objects_are_connected_and_span_slices(pair3d):
    _, labels = pair3d
    n = assert_partition(labels)  # 6-connectivity in 3D
    spans = []
    for region in regionprops(labels):
        z = np.unique(np.nonzero(labels[region.slice] == region.label)[0]) + region.bbox[0]
        # consecutive slices (implied by 3D connectivity, checked explicitly)
        assert np.array_equal(z, np.arange(z[0], z[-1] + 1))
        spans.append(len(z))
    spans = np.array(spans)
    assert len(spans) == n
    assert np.mean(spans >= 2) >= 0.9
    assert np.median(spans) >= 4


def test_no_tiny_objects():
    for seed in range(3):
        _, labels = synthetic_nuclei((128, 128), density=0.6, overlap=0.4, seed=seed)
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes.min() >= 10
    _, labels = synthetic_nuclei((128, 128), seed=0, min_size=60)
    assert np.bincount(labels.ravel())[1:].min() >= 60


def test_labels_are_exactly_the_source_of_intensity():
    # no optics, no camera: the image is the clean signal, non-zero exactly on labels
    image, labels = synthetic_nuclei(
        (128, 128), seed=4, blur=0, noise=0, background=0, offset=0, illumination=0,
        brightness=1000, brightness_spread=0, density=0.5, overlap=0.3,
    )
    np.testing.assert_array_equal(image > 0, labels > 0)


def test_an_edge_adds_an_unlabelled_fringe_outside_the_outlines():
    """Real nuclei stay bright a pixel or two outside the outline a person draws."""
    clean = dict(blur=0, noise=0, background=0, offset=0, illumination=0, brightness=1000,
                 brightness_spread=0, texture=0, spots=0, nucleoli=False, seed=4)
    sharp, labels = synthetic_nuclei((128, 128), **clean)
    soft, same_labels = synthetic_nuclei((128, 128), edge=2.0, **clean)
    np.testing.assert_array_equal(same_labels, labels)  # the outlines do not move
    np.testing.assert_array_equal(soft[labels > 0], sharp[labels > 0])  # nor the nuclei
    outline = labels > 0
    ring = ndi.binary_dilation(outline) & ~outline
    far = ~ndi.binary_dilation(outline, iterations=8)
    assert (sharp[ring] == 0).all() and (soft[far] == 0).all()
    # just outside: about the rim's brightness (0.62 of 1000) times exp(-1 / 2)
    assert 250 < np.median(soft[ring]) < 500
    with pytest.raises(ValueError, match="edge"):
        synthetic_nuclei((32, 32), edge=-1)


def test_objects_brighter_than_background(pair2d, pair3d):
    for image, labels in (pair2d, pair3d):
        inside = image[labels > 0].astype(float).mean()
        outside = image[labels == 0].astype(float).mean()
        assert inside > outside + 300
        assert inside > 2 * outside


def test_density_increases_labelled_fraction():
    fractions = [
        np.mean([(synthetic_nuclei((128, 128), density=d, seed=s)[1] > 0).mean()
                 for s in range(2)])
        for d in (0.1, 0.3, 0.5)
    ]
    assert fractions[0] < fractions[1] < fractions[2]
    # density is roughly the covered fraction
    assert 0.05 < fractions[0] < 0.15
    assert 0.35 < fractions[2] < 0.6


def test_noise_parameter_scales_noise():
    options = dict(seed=7, density=0.2)
    clean, lab_clean = synthetic_nuclei((128, 128), noise=0, **options)
    residual = {}
    for noise in (0.5, 3.0):
        image, labels = synthetic_nuclei((128, 128), noise=noise, **options)
        np.testing.assert_array_equal(labels, lab_clean)  # noise does not move objects
        residual[noise] = (image.astype(float) - clean).std()
    assert residual[0.5] > 1
    assert 4 < residual[3.0] / residual[0.5] < 8  # noise std scales about linearly


def test_empty_image_is_fine():
    image, labels = synthetic_nuclei((5, 5), seed=0)
    assert image.shape == (5, 5) and labels.max() == 0


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "shape", [(256,), (2, 2, 2, 2), (0, 10), (10, 0), (4, 0, 8), (10, -1), 256, (10.5, 10), None]
)
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape"):
        synthetic_nuclei(shape)


@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), "0.3"])
def test_bad_density(density):
    with pytest.raises(ValueError, match="density"):
        synthetic_nuclei((32, 32), density=density)


@pytest.mark.parametrize("radius", [(10, 5), (0, 5), (-1, 3), (1, 2, 3)])
def test_bad_radius(radius):
    with pytest.raises(ValueError, match="radius"):
        synthetic_nuclei((32, 32), radius=radius)


def test_radius_min_above_max_message_says_how_to_fix():
    with pytest.raises(ValueError, match=r"radius minimum must not exceed its maximum.*swap"):
        synthetic_nuclei((32, 32), radius=(14, 6))


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(noise=-1), "noise"),
        (dict(elongation=(0.5, 2)), "elongation"),
        (dict(overlap=0.9), "overlap"),
        (dict(illumination=1.0), "illumination"),
        (dict(anisotropy=0), "anisotropy"),
        (dict(min_size=0), "min_size"),
    ],
)
def test_bad_options(options, name):
    with pytest.raises(ValueError, match=name):
        synthetic_nuclei((32, 32), **options)


# --------------------------------------------------------------------------- #
# dataset
# --------------------------------------------------------------------------- #
def test_dataset_yields_varied_valid_pairs():
    pairs = list(synthetic_dataset(4, (96, 96), seed=0))
    assert len(pairs) == 4
    for image, labels in pairs:
        assert image.dtype == np.uint16 and labels.dtype == np.uint32
        assert image.shape == labels.shape == (96, 96)
        assert_partition(labels)
    # parameters vary between images
    fractions = [(labels > 0).mean() for _, labels in pairs]
    backgrounds = [np.median(image[labels == 0]) for image, labels in pairs]
    assert np.ptp(fractions) > 0.02
    assert np.ptp(backgrounds) > 5


def test_dataset_is_deterministic_and_prefix_stable():
    a = list(synthetic_dataset(2, (64, 64), seed=3))
    b = list(synthetic_dataset(3, (64, 64), seed=3))
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    c = next(iter(synthetic_dataset(1, (64, 64), seed=4)))
    assert not np.array_equal(a[0][0], c[0])


def test_dataset_3d_and_fixed_options():
    pairs = list(synthetic_dataset(2, (6, 48, 48), seed=1, noise=(0, 0), offset=0,
                                   background=0, blur=(0, 0), illumination=0))
    for image, labels in pairs:
        assert image.shape == (6, 48, 48)
        np.testing.assert_array_equal(image > 0, labels > 0)


def test_dataset_edges_keep_the_images_of_the_same_seed_but_their_fringe():
    plain = list(synthetic_dataset(3, (64, 64), seed=2))
    soft = list(synthetic_dataset(3, (64, 64), seed=2, edge=(1.0, 3.0)))
    for (image, labels), (soft_image, soft_labels) in zip(plain, soft):
        np.testing.assert_array_equal(soft_labels, labels)
        outside = labels == 0
        assert soft_image[outside].mean() > image[outside].mean()


@pytest.mark.parametrize(
    "args, options, name",
    [
        ((-1,), {}, "n"),
        ((2, (8,)), {}, "shape"),
        ((2,), dict(density=(0.5, 0.1)), "density"),
        ((2,), dict(density=(0.1, 1.5)), "density"),
        ((2,), dict(radius=(10, 2)), "radius"),
        ((2,), dict(colour="red"), "colour"),
        ((2,), dict(edge=(3, 1)), "edge"),
    ],
)
def test_dataset_validation_is_eager(args, options, name):
    with pytest.raises(ValueError, match=name):
        synthetic_dataset(*args, **options)


def test_stream_validates_at_once_and_follows_the_rng():
    with pytest.raises(ValueError, match="radius"):
        SyntheticNuclei((64, 64), radius=(10, 2))
    data = SyntheticNuclei((64, 64), density=(0.2, 0.3))
    image, labels = data.sample(np.random.default_rng(0))
    again = data.sample(np.random.default_rng(0))
    assert image.shape == labels.shape == (64, 64)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(labels, again[1])
