"""The fine-tuning widget in a real (headless, Xvfb) napari viewer: a short seeded run from
committed labels, cancel, and refused input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam import load_model  # noqa: E402
from napari_sam.plugin.finetune import FinetuneWidget  # noqa: E402
from napari_sam.plugin.session import Session  # noqa: E402
from napari_sam.synthetic import synthetic_nuclei  # noqa: E402

WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def viewer(make_napari_viewer):
    """About 70 nuclei, dark on a bright background (the shipped model was trained on bright
    nuclei, and does poorly on these), their labels committed; the shipped model on the CPU."""
    image, labels = synthetic_nuclei((256, 256), density=0.35, radius=(8, 12), seed=3, noise=0.5)
    viewer = make_napari_viewer()
    viewer.add_image(image.max() - image, name="nuclei")
    viewer.add_labels(labels, name="committed")
    Session.for_viewer(viewer).configure(device="cpu")
    return viewer


def panel(viewer, tmp_path, steps: int) -> FinetuneWidget:
    widget = FinetuneWidget(viewer)
    widget.image.choose(viewer.layers["nuclei"])
    widget.labels.choose(viewer.layers["committed"])
    widget.output.setText(str(tmp_path / "tuned"))
    widget.steps.setValue(steps)
    widget.validate_every.setValue(5)
    widget.lr.setValue(1e-3)
    widget.images_per_step.setValue(1)
    widget.correction_rounds.setValue(0)
    widget.loss_resolution.setCurrentText("low")
    widget.held_out.setValue(0.25)
    return widget


def validation_lines(widget) -> list[str]:
    return [line for line in widget.history.toPlainText().splitlines() if line]


def test_short_seeded_run_raises_validation_miou_and_becomes_the_sessions_model(
        viewer, qtbot, tmp_path):
    widget = panel(viewer, tmp_path, steps=15)
    worker = widget.run()
    qtbot.waitUntil(lambda: worker.ended, timeout=WAIT_MS)
    assert [line.split(":")[0] for line in validation_lines(widget)] == [
        "step 0", "step 5", "step 10", "step 15"]
    record = json.loads((tmp_path / "tuned" / "model.json").read_text())
    first, best = record["validation_history"][0], record["validation"]
    assert first["step"] == 0 and best["point"] > first["point"] + 0.05, (first, best)
    assert record["data"]["objects"] > 50 and len(record["data"]["held_out"]) > 10
    assert "it is the session's model now" in widget.status.text()
    session = Session.for_viewer(viewer)
    assert session.settings.checkpoint == str(tmp_path / "tuned" / "model.pt")
    kept = load_model(checkpoint=tmp_path / "tuned" / "model.pt", device="cpu")
    for key, value in kept.state_dict().items():
        assert torch.equal(session.model().state_dict()[key], value)


def test_cancel_keeps_the_best_checkpoint_so_far_and_it_loads(viewer, qtbot, tmp_path):
    widget = panel(viewer, tmp_path, steps=10_000)
    worker = widget.run()
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=WAIT_MS)
    widget.cancel.click()
    qtbot.waitUntil(lambda: worker.ended, timeout=WAIT_MS)
    assert widget.progress.value() < 10_000
    assert widget.status.text().startswith("cancelled: kept step")
    record = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert record["validation"]["point"] == max(
        entry["point"] for entry in record["validation_history"])
    model = load_model(checkpoint=tmp_path / "tuned" / "model.pt", device="cpu")
    assert model.img_size == 256
    assert Session.for_viewer(viewer).settings.checkpoint == str(tmp_path / "tuned" / "model.pt")


@pytest.mark.parametrize("problem", ["no objects", "other shape", "folder in use"])
def test_bad_input_is_refused_with_a_clear_message_and_nothing_written(
        viewer, qtbot, tmp_path, problem):
    widget = panel(viewer, tmp_path, steps=5)
    if problem == "no objects":
        viewer.layers["committed"].data = np.zeros_like(viewer.layers["committed"].data)
        expected = "hold no object"
    elif problem == "other shape":
        viewer.add_labels(np.ones((2, 64, 64), np.uint32), name="elsewhere")
        widget.labels.choose(viewer.layers["elsewhere"])
        expected = "choose the labels drawn on this image"
    else:
        (tmp_path / "tuned").mkdir()
        (tmp_path / "tuned" / "model.pt").write_bytes(b"earlier work")
        expected = "holds a checkpoint already"
    seen = []
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    worker = widget.run()
    if worker is not None:
        qtbot.waitUntil(lambda: worker.ended, timeout=WAIT_MS)
    assert any(expected in message for message in seen + [widget.status.text()]), seen
    if problem == "folder in use":
        assert (tmp_path / "tuned" / "model.pt").read_bytes() == b"earlier work"
    else:
        assert not (tmp_path / "tuned" / "model.pt").exists()
    assert Session.for_viewer(viewer).settings.checkpoint is None
