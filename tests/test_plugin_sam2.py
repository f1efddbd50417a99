"""The interactive widget's propagation through z with a SAM 2.1 model (its memory), in a real
(headless, Xvfb) napari viewer, on random weights: what is checked is the plugin's part (which
propagation runs, in which directions, what it writes, where it stops, cancel), not the masks.

``python tests/test_plugin_sam2.py PATH.png`` (under a display) saves a screenshot of the viewer
after such a propagation (docs/propagate_sam2.png).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam.models.registry import build_sam2_1  # noqa: E402
from napari_sam.plugin import interactive, memory  # noqa: E402
from napari_sam.plugin.interactive import Answer, InteractiveWidget  # noqa: E402
from napari_sam.plugin.memory import MEMORY_TEXT, REPROMPT_TEXT  # noqa: E402
from napari_sam.plugin.session import Session  # noqa: E402

WAIT_MS = 60_000
PLANES, SIDE = 6, 64


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def disc_stack(planes: int = PLANES) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc through every plane of a noisy stack, and its mask."""
    rows, cols = np.mgrid[:SIDE, :SIDE]
    disc = (rows - 32) ** 2 + (cols - 30) ** 2 < 12**2
    noise = np.random.default_rng(0).normal(20, 5, (planes, SIDE, SIDE))
    return (noise + 200 * disc).astype(np.float32), disc


def sam2_model(present: bool) -> torch.nn.Module:
    """A random SAM 2.1 tiny at 256 px whose object score says the object is always present
    (or always absent), so that where the propagation goes does not depend on the weights."""
    torch.manual_seed(0)
    model = build_sam2_1("tiny", img_size=256).eval()
    model.name = "sam2.1_hiera_tiny"
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0 if present else -10.0)
    return model


def use_model(viewer, model) -> Session:
    """Make ``model`` the session's loaded model, as the model panel would after loading it."""
    session = Session.for_viewer(viewer)
    session.configure(model=model.name, device="cpu")
    session._model, session._model_key = model, (model.name, None, "cpu")
    return session


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(disc_stack()[0], name="discs")
    return viewer


def commit_disc(widget: InteractiveWidget, viewer, z: int) -> int:
    """Commit the disc on slice ``z`` through the widget's commit (as if the decoder had
    answered it), into the chosen labels layer."""
    viewer.dims.set_current_step(0, z)
    widget.answer = Answer((z,), disc_stack()[1][None], np.array([0.9]), 0)
    return widget.commit()


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.worker is None or widget.worker.ended, timeout=WAIT_MS)


def with_id(labels: np.ndarray, value: int) -> list[int]:
    return [p for p in range(len(labels)) if (labels[p] == value).any()]


@pytest.fixture
def no_reprompting(monkeypatch):
    """Fail if the SAM propagation (each slice prompted with the previous mask) runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("the SAM propagation ran with a SAM 2.1 model")
    monkeypatch.setattr(interactive, "propagate", refuse)


def test_settings_follow_the_model(viewer):
    """With a SAM model the stop settings apply; with SAM 2.1 they are off and the panel says
    that its memory is used."""
    widget = InteractiveWidget(viewer)
    assert widget.show_method() is False  # the default model, not loaded: from the registry
    assert widget.min_score.isEnabled() and widget.method.text() == REPROMPT_TEXT
    Session.for_viewer(viewer).configure(model="sam2.1_hiera_small")
    assert widget.show_method() is True
    assert not any(s.isEnabled() for s in (widget.min_score, widget.min_overlap,
                                           widget.min_contrast))
    assert widget.method.text() == MEMORY_TEXT
    Session.for_viewer(viewer).configure(model="vit_t", checkpoint="/nowhere/weights.pt")
    assert widget.show_method() is None  # only loading the file tells


def test_up_writes_only_above(viewer, qtbot, no_reprompting):
    use_model(viewer, sam2_model(present=True))
    widget = InteractiveWidget(viewer)
    z = 2
    value = commit_disc(widget, viewer, z)
    labels = viewer.layers["SAM labels"].data
    committed = labels[z].copy()
    widget.direction.setCurrentText("up")
    widget.propagate()
    assert "SAM 2.1 memory" in widget.status.text()
    wait_idle(qtbot, widget)
    assert with_id(labels, value) == [2, 3, 4, 5]
    assert not labels[:z].any(), "the slices below are untouched"
    np.testing.assert_array_equal(labels[z], committed)  # the committed slice stays
    assert "SAM 2.1 memory to 3 more slice(s)" in widget.status.text()
    assert "up: to slice 5" in widget.status.text()
    assert widget.propagate_button.isEnabled()


def test_both_directions_never_paint_over_other_labels(viewer, qtbot, monkeypatch,
                                                       no_reprompting):
    use_model(viewer, sam2_model(present=True))
    kept = []
    free = interactive.free_pixels

    def counting(layer, index, mask, value):
        allowed = free(layer, index, mask, value)
        kept.append(int((mask & ~allowed).sum()))
        return allowed

    monkeypatch.setattr(interactive, "free_pixels", counting)
    other = viewer.add_labels(np.zeros((PLANES, SIDE, SIDE), np.uint32), name="mine")
    other.data[1, :, :40] = 7  # another object over most of the disc, below and above
    other.data[4, 20:, :] = 7
    before = other.data.copy()
    widget = InteractiveWidget(viewer)
    widget.target.choose(other)
    z = 3
    value = commit_disc(widget, viewer, z)
    assert value == 8
    widget.direction.setCurrentText("both")
    widget.propagate()
    wait_idle(qtbot, widget)
    labels = other.data
    assert with_id(labels, value) == list(range(PLANES))
    assert sum(kept) > 0, "the masks did reach the other object"
    np.testing.assert_array_equal(labels[before == 7], 7)  # which kept every pixel
    assert set(np.unique(labels[before == 0])) <= {0, value}
    status = widget.status.text()
    assert "up: to slice 5" in status and "down: to slice 0" in status


def test_propagation_stops_where_the_object_ends(viewer, qtbot, monkeypatch, no_reprompting):
    """The model says the object is absent from the next slices: it is followed no further
    (2 slices up), nothing is written, and the status says so."""
    use_model(viewer, sam2_model(present=False))
    embedded = []
    features = memory.plane_features

    def counting(*args, **kwargs):
        inner = features(*args, **kwargs)
        return lambda plane: embedded.append(plane) or inner(plane)

    monkeypatch.setattr(memory, "plane_features", counting)
    widget = InteractiveWidget(viewer)
    value = commit_disc(widget, viewer, 1)
    widget.direction.setCurrentText("up")
    widget.propagate()
    wait_idle(qtbot, widget)
    assert sorted(set(embedded)) == [1, 2, 3]  # slices 4 and 5 were never looked at
    assert with_id(viewer.layers["SAM labels"].data, value) == [1]
    assert "up: absent beyond slice 1" in widget.status.text()


def test_cancel_keeps_the_slices_written(viewer, qtbot, no_reprompting):
    use_model(viewer, sam2_model(present=True))
    widget = InteractiveWidget(viewer)
    value = commit_disc(widget, viewer, 0)
    widget.direction.setCurrentText("up")
    worker = widget.propagate()
    worker.yielded.connect(lambda _: widget.cancel.click())  # cancel once slice 1 is done
    wait_idle(qtbot, widget)
    written = with_id(viewer.layers["SAM labels"].data, value)
    assert written[:2] == [0, 1] and len(written) <= 3, written  # the job stops at its next check
    assert written == list(range(len(written)))  # slices written so far are kept
    assert "(cancelled)" in widget.status.text()
    assert widget.propagate_button.isEnabled()


def screenshot(path: str) -> None:
    """The viewer after a SAM 2.1 propagation on the synthetic stack (random weights)."""
    import time

    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    torch.set_num_threads(1)
    viewer = napari.Viewer()
    viewer.add_image(disc_stack()[0], name="discs")
    use_model(viewer, sam2_model(present=True))
    widget = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Interactive segmentation", area="right")
    commit_disc(widget, viewer, 2)
    viewer.dims.set_current_step(0, 4)  # show a propagated slice
    for _ in range(20):
        QApplication.processEvents()
    widget.direction.setCurrentText("both")
    widget.propagate()
    while not widget.worker.ended:
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.window._qt_window.resize(1400, 900)
    for _ in range(20):
        QApplication.processEvents()
    imsave(path, viewer.screenshot(canvas_only=False), check_contrast=False)
    viewer.close()


if __name__ == "__main__":
    import sys

    screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/propagate_sam2.png")
