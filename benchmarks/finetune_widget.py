"""Fine-tuning from the plugin on the real DSB nuclei image, as a user would: its human labels
as the committed objects, the "Fine-tune on your labels" widget with its defaults, the shipped
model. Prints the widget's validation lines (point and box mIoU on the held-back objects) and
its final status.

    xvfb-run -a python benchmarks/finetune_widget.py [--output /tmp/finetuned-dsb]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication
from real_nuclei import dsb_nuclei

from napari_sam.plugin.finetune import FinetuneWidget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("/tmp/finetuned-dsb"))
    args = parser.parse_args()
    shutil.rmtree(args.output, ignore_errors=True)
    image, labels = dsb_nuclei(Path.home() / ".cache" / "napari-sam" / "dsb2018")
    viewer = napari.Viewer(show=False)
    viewer.add_image(image, name="dsb")
    viewer.add_labels(labels.astype("uint32"), name="human labels")
    widget = FinetuneWidget(viewer)
    widget.image.choose(viewer.layers["dsb"])
    widget.labels.choose(viewer.layers["human labels"])
    widget.output.setText(str(args.output))
    start = time.perf_counter()
    worker = widget.run()
    while not worker.ended:
        QApplication.processEvents()
        time.sleep(0.2)
    print(f"{widget.steps.value()} steps in {time.perf_counter() - start:.0f} s")
    print(widget.history.toPlainText())
    print(widget.status.text())


if __name__ == "__main__":
    main()
