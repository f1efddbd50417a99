"""Make the user guide's screenshots: drive a real napari viewer with the plugin's widgets on the
sample data, as a user would, and save what the window shows.

Run it under a display (on a headless machine: ``xvfb-run -a python docs/make_screenshots.py``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from scipy import ndimage
from skimage.io import imsave

from napari_sam.plugin.automatic import AutomaticWidget
from napari_sam.plugin.interactive import InteractiveWidget
from napari_sam.plugin.model_widget import ModelWidget

HERE = Path(__file__).parent / "images"


def wait(worker_owner, attribute: str = "worker", timeout: float = 300) -> None:
    """Process Qt events until the owner's last worker has ended."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        QApplication.processEvents()
        worker = getattr(worker_owner, attribute)
        if worker is None or worker.ended:
            break
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()


def save(viewer, name: str) -> None:
    viewer.window._qt_window.resize(1400, 900)
    for _ in range(10):
        QApplication.processEvents()
    imsave(HERE / name, viewer.screenshot(canvas_only=False), check_contrast=False)
    print("wrote", HERE / name)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    return np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(mask))), mask.shape)


def main() -> None:
    HERE.mkdir(exist_ok=True)
    viewer = napari.Viewer()
    viewer.open_sample("napari-sam", "nuclei_3d")
    truth = viewer.layers["nuclei 3D (truth)"].data
    z = 12
    viewer.dims.set_current_step(0, z)

    model = ModelWidget(viewer)
    viewer.window.add_dock_widget(model, name="Model and embeddings", area="right")
    model.embedder.start()
    wait(model.embedder)
    save(viewer, "model_panel.png")

    interactive = InteractiveWidget(viewer)
    dock = viewer.window.add_dock_widget(interactive, name="Interactive segmentation",
                                         area="right")
    ids, counts = np.unique(truth[z][truth[z] > 0], return_counts=True)
    for object_id in ids[np.argsort(counts)[::-1][:3]]:
        row, col = interior_point(truth[z] == object_id)
        interactive.points.add([[z, row, col]])
        wait(interactive)
        if object_id == ids[np.argsort(counts)[::-1][2]]:
            save(viewer, "interactive_preview.png")
        interactive.commit()
    interactive.propagate()
    wait(interactive)
    viewer.dims.set_current_step(0, z + 3)
    save(viewer, "interactive_propagated.png")
    viewer.window.remove_dock_widget(dock)

    automatic = AutomaticWidget(viewer)
    viewer.window.add_dock_widget(automatic, name="Automatic segmentation", area="right")
    with tempfile.TemporaryDirectory() as folder:
        automatic.output.setText(str(Path(folder) / "nuclei.zarr"))
        automatic.segment_stack()
        wait(automatic)
        for name in ("SAM labels", "SAM preview", "SAM prompts", "SAM box"):
            viewer.layers[name].visible = False
        viewer.dims.set_current_step(0, z)
        save(viewer, "automatic_stack.png")
    viewer.close()


if __name__ == "__main__":
    main()
