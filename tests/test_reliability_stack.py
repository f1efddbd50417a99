"""Stacks and volumes that go wrong (issue 16): nothing overwritten, nothing mixed, nothing stale.

Each test is a user's report: a resume from other data, workers left behind by a killed run, a
failed start that blocks the next one, nonsense accepted in silence, messages that mislead,
caches written into images, a second copy of the model. See docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_sam.engine.embeddings import model_fingerprint
from napari_sam.models.loading import load_model
from napari_sam.volume.io import guess_axes, open_volume, open_zarr_array
from napari_sam.volume.stack import RECORD, embed_stack, segment_stack

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = dict(diameter=None)  # planes at their own pixels: one tile of a 64 px plane


def small_stack(planes=4, dtype=np.uint8, seed=0) -> np.ndarray:
    """Bright discs on a noisy background, a few planes of 64 x 64."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((64, 64))
    stack = rng.normal(40, 8, (planes, 64, 64))
    for plane in range(planes):
        for _ in range(3):
            row, col = rng.integers(12, 52, 2)
            stack[plane][(rows - row) ** 2 + (cols - col) ** 2 <= 36] += 150
    scale = 1 if dtype == np.uint8 else 100
    return np.clip(stack * scale, 0, np.iinfo(dtype).max).astype(dtype)


def run_record(output: Path) -> dict:
    return json.loads((output / RECORD / "run.json").read_text())


def python(script: str, *args) -> subprocess.Popen:
    """Run ``script`` in a new interpreter with this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env)


def only(tmp_path: Path, *names: str) -> None:
    """``tmp_path`` holds exactly ``names``: no output and no half-made sibling."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# --------------------------------------------------------------------------- #
# 2. a resume reads the source it was started from
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_resume_from_another_source_of_the_same_shape_is_refused_naming_both(
        one_thread, tmp_path, dtype):
    a, b = tmp_path / "A.npy", tmp_path / "B.npy"
    np.save(a, small_stack(dtype=dtype, seed=0))
    np.save(b, small_stack(dtype=dtype, seed=1))
    out = tmp_path / "out.zarr"
    segment_stack(a, out, z=slice(0, 1), **FAST)
    before = open_zarr_array(str(out))[:]
    with pytest.raises(FileExistsError, match="source differs") as error:
        segment_stack(b, out, resume=True, **FAST)
    assert "A.npy" in str(error.value) and "B.npy" in str(error.value)
    assert "limits" not in str(error.value)
    np.testing.assert_array_equal(open_zarr_array(str(out))[:], before)


def test_run_record_identifies_the_source_by_path_shape_type_and_content(one_thread, tmp_path):
    np.save(tmp_path / "A.npy", small_stack())
    segment_stack(tmp_path / "A.npy", tmp_path / "out.zarr", z=slice(0, 1), **FAST)
    source = run_record(tmp_path / "out.zarr")["source"]
    assert source["path"] == str(tmp_path / "A.npy")
    assert source["shape"] == [4, 64, 64] and np.dtype(source["dtype"]) == np.uint8
    assert len(source["fingerprint"]) >= 16


def test_moved_source_with_the_same_content_resumes(one_thread, tmp_path):
    np.save(tmp_path / "A.npy", small_stack())
    out = tmp_path / "out.zarr"
    segment_stack(tmp_path / "A.npy", out, z=slice(0, 1), **FAST)
    moved = tmp_path / "elsewhere" / "renamed.npy"
    moved.parent.mkdir()
    os.replace(tmp_path / "A.npy", moved)
    again = segment_stack(moved, out, resume=True, z=slice(0, 2), **FAST)
    assert (again.skipped, again.segmented) == (1, 1)


# --------------------------------------------------------------------------- #
# 5. workers end with their parent
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_workers_end_when_the_parent_is_killed(tmp_path):
    psutil = pytest.importorskip("psutil")
    np.save(tmp_path / "volume.npy", small_stack(planes=16))
    out = tmp_path / "out.zarr"
    script = (
        "import sys, time, torch; torch.set_num_threads(1)\n"
        "from napari_sam.volume.stack import segment_stack\n"
        "slow = lambda done, total: time.sleep(1.0)\n"
        "segment_stack(sys.argv[1], sys.argv[2], workers=2, progress=slow, diameter=None)\n"
    )
    process = python(script, tmp_path / "volume.npy", out)
    done = out / RECORD / "done"
    deadline = time.monotonic() + 120
    while not (done.is_dir() and any(done.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended too early"
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 2
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    def running(child) -> bool:  # a zombie has ended, whoever reaps it
        try:
            return child.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 15
    while any(map(running, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [child for child in children if running(child)]
    for child in left:  # do not leave them behind when the test fails
        child.kill()
    assert left == [], f"{len(left)} of {len(children)} child processes outlived their parent"


def test_without_prctl_a_worker_ends_within_seconds_of_its_parent(tmp_path):
    """Elsewhere than on Linux a thread in the worker watches its parent id."""
    psutil = pytest.importorskip("psutil")
    worker = ("import sys, time\n"
              "import napari_sam.volume.stack as stack\n"
              "sys.platform = 'darwin'  # no prctl: the watching thread\n"
              "stack.end_with_parent(int(sys.argv[1]))\n"
              "print('ready', flush=True)\n"
              "time.sleep(120)\n")
    parent = ("import os, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen([sys.executable, "-c", parent, worker], env=env,
                               stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(process.stdout.readline()))
    assert process.stdout.readline().strip() == "ready"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    try:
        child.wait(timeout=5)
    except psutil.TimeoutExpired:
        child.kill()
        pytest.fail("the worker outlived its parent by 5 s")


# --------------------------------------------------------------------------- #
# 6. a failed or killed start leaves no output
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(workers=-1), "workers must be"),
        (dict(workers=0), "workers must be"),
        (dict(points_per_side=0), "points_per_side"),
        (dict(axes="zyxc"), "axes"),
        (dict(tile=32, halo=16), "halo"),
        (dict(z=slice(20, 30)), "selects no plane"),
    ],
)
def test_a_start_refused_for_a_bad_setting_creates_nothing(one_thread, tmp_path, settings,
                                                           message):
    np.save(tmp_path / "volume.npy", small_stack())
    with pytest.raises(ValueError, match=message):
        segment_stack(tmp_path / "volume.npy", tmp_path / "out.zarr", **{**FAST, **settings})
    only(tmp_path, "volume.npy")


def test_scheduler_without_distributed_is_refused_before_anything_is_created(
        one_thread, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    with pytest.raises(ValueError, match="distributed"):
        segment_stack(small_stack(), tmp_path / "out.zarr", scheduler="tcp://127.0.0.1:8786",
                      **FAST)
    only(tmp_path)


def test_unreachable_scheduler_creates_nothing(one_thread, tmp_path):
    pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(OSError):
            segment_stack(small_stack(), tmp_path / "out.zarr", scheduler="tcp://127.0.0.1:9",
                          **FAST)
    only(tmp_path)


def test_cache_at_the_output_path_is_refused_before_anything_is_created(one_thread, tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match="cache.*output"):
        segment_stack(small_stack(), out, cache=out, **FAST)
    only(tmp_path)


def test_start_killed_between_array_and_record_leaves_no_output(one_thread, tmp_path):
    np.save(tmp_path / "volume.npy", small_stack(planes=2))
    out = tmp_path / "out.zarr"
    script = (
        "import os, signal, sys\n"
        "import napari_sam.volume.stack as stack\n"
        "stack._write_json = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
        "stack.segment_stack(sys.argv[1], sys.argv[2], diameter=None)\n"
    )
    process = python(script, tmp_path / "volume.npy", out)
    assert process.wait(timeout=120) == -signal.SIGKILL
    assert not out.exists()
    summary = segment_stack(tmp_path / "volume.npy", out, link=False, **FAST)  # no --resume needed
    assert summary.segmented == 2 and run_record(out)["source"]["shape"] == [2, 64, 64]


# --------------------------------------------------------------------------- #
# 8. nonsense is refused
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("z", [slice(20, 30), range(20, 30)])
def test_plane_range_beyond_the_stack_is_refused_naming_range_and_planes(one_thread, tmp_path, z):
    with pytest.raises(ValueError, match=r"20:30.*8 planes"):
        segment_stack(small_stack(planes=8), tmp_path / "out.zarr", z=z, **FAST)
    only(tmp_path)


# --------------------------------------------------------------------------- #
# 9. messages that say what is wrong
# --------------------------------------------------------------------------- #
def test_rgb_z_stack_is_read_as_z_planes_of_colour(tmp_path):
    stack = np.zeros((10, 64, 64, 3), np.uint8)
    assert guess_axes(stack.shape) == "zyxc"
    assert open_volume(stack).axes == "zyxc"
    tifffile.imwrite(tmp_path / "rgb.tif", stack)
    volume = open_volume(tmp_path / "rgb.tif")
    assert (volume.axes, volume.planes, volume.channels) == ("zyxc", (10,), 3)


def test_directory_of_tiffs_is_called_a_directory_and_a_file_is_suggested(tmp_path):
    folder = tmp_path / "planes"
    folder.mkdir()
    for name in ("z001.tif", "z000.tif"):
        tifffile.imwrite(folder / name, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="is a directory but not a zarr store") as error:
        open_volume(folder)
    assert "does not exist" not in str(error.value)
    assert "2 tiff file(s)" in str(error.value) and str(folder / "z000.tif") in str(error.value)


def test_ome_zarr_with_a_missing_dataset_names_the_dataset(tmp_path):
    group = zarr.open_group(tmp_path / "image.ome.zarr", mode="w")
    group.attrs["multiscales"] = [{"version": "0.4", "axes": ["z", "y", "x"],
                                   "datasets": [{"path": "0"}]}]
    with pytest.raises(FileNotFoundError, match="'0'") as error:
        open_volume(tmp_path / "image.ome.zarr")
    assert str(tmp_path / "image.ome.zarr" / "0") in str(error.value)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_damaged_zarr_metadata_names_the_file(tmp_path, zarr_format):
    path = tmp_path / "stack.zarr"
    zarr.create_array(path, data=small_stack(), zarr_format=zarr_format)
    metadata = path / ("zarr.json" if zarr_format == 3 else ".zarray")
    metadata.write_text('{"zarr_format": ')
    with pytest.raises(ValueError, match="not valid JSON") as error:
        open_volume(path)
    assert str(metadata) in str(error.value) and "restore" in str(error.value)


def test_damaged_run_record_names_the_file_and_what_to_do(one_thread, tmp_path):
    out = tmp_path / "out.zarr"
    image = small_stack()
    segment_stack(image, out, z=slice(0, 1), **FAST)
    (out / RECORD / "run.json").write_text('{"shape": [4, 64')
    with pytest.raises(ValueError, match="run.json") as error:
        segment_stack(image, out, resume=True, **FAST)
    assert str(out / RECORD / "run.json") in str(error.value)
    assert "delete the output" in str(error.value)


def test_damaged_output_metadata_on_resume_names_the_file(one_thread, tmp_path):
    out = tmp_path / "out.zarr"
    image = small_stack()
    segment_stack(image, out, z=slice(0, 1), **FAST)
    (out / "zarr.json").write_text("{")
    with pytest.raises(ValueError, match="zarr.json") as error:
        segment_stack(image, out, resume=True, **FAST)
    assert str(out / "zarr.json") in str(error.value)


# --------------------------------------------------------------------------- #
# 10. a cache is never written into an image or an output
# --------------------------------------------------------------------------- #
def write_ome_zarr(path: Path, image: np.ndarray) -> None:
    group = zarr.open_group(path, mode="w")
    group.create_array("0", data=image, chunks=(1, *image.shape[1:]))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": ["z", "y", "x"],
                                   "datasets": [{"path": "0"}]}]


@pytest.mark.parametrize("where", [".", "embeddings", ".."])
def test_embedding_cache_at_in_or_around_the_source_is_refused(one_thread, tmp_path, where):
    source = tmp_path / "src" / "image.ome.zarr"
    write_ome_zarr(source, small_stack(planes=2))
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="cache.*source"):
        embed_stack(source, (source / where).resolve(), **FAST)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("output", "cache", "message"),
    [
        ("src/image.ome.zarr/labels", None, "output.*source"),
        ("src/image.ome.zarr", None, "output.*source"),
        ("out.zarr", "src/image.ome.zarr/cache", "cache.*source"),
        ("out.zarr", "out.zarr/cache", "cache.*output"),
        ("out.zarr", ".", "cache.*output"),
    ],
)
def test_stack_output_or_cache_overlapping_the_source_or_output_is_refused(
        one_thread, tmp_path, output, cache, message):
    source = tmp_path / "src" / "image.ome.zarr"
    write_ome_zarr(source, small_stack(planes=2))
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=message):
        segment_stack(source, tmp_path / output, cache=cache and tmp_path / cache, **FAST)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- #
# 11. one model, fresh outputs, fresh weights
# --------------------------------------------------------------------------- #
def test_a_loaded_model_is_used_as_it_is_and_recorded_by_its_weights(one_thread, tmp_path,
                                                                     monkeypatch):
    import napari_sam.volume.stack as stack

    model = load_model(device="cpu")
    image = small_stack(planes=2)
    by_name = segment_stack(image, tmp_path / "by_name.zarr", link=False, **FAST)

    def second_copy(*args, **kwargs):
        raise AssertionError("segment_stack loaded a second copy of the model")

    monkeypatch.setattr(stack, "load_model", second_copy)
    stack._loaded_model.cache_clear()
    given = segment_stack(image, tmp_path / "given.zarr", model=model, link=False, **FAST)
    assert given.objects == by_name.objects
    np.testing.assert_array_equal(open_zarr_array(str(tmp_path / "given.zarr"))[:],
                                  open_zarr_array(str(tmp_path / "by_name.zarr"))[:])
    record = run_record(tmp_path / "given.zarr")
    assert record["model"] == model.name and record["checkpoint"] is None
    assert record["weights"] == model_fingerprint(model)
    with pytest.raises(ValueError, match="loaded model"):
        segment_stack(image, tmp_path / "parallel.zarr", model=model, workers=2, **FAST)


def test_second_run_into_a_deleted_and_recreated_output_in_one_process(one_thread, tmp_path):
    import shutil

    out = tmp_path / "out.zarr"
    image = small_stack(planes=2)
    first = segment_stack(image, out, link=False, **FAST)
    labels = open_zarr_array(str(out))[:]
    shutil.rmtree(out)
    second = segment_stack(image, out, link=False, **FAST)
    assert second.segmented == 2 and second.objects == first.objects
    np.testing.assert_array_equal(open_zarr_array(str(out))[:], labels)


def test_checkpoint_rewritten_at_the_same_path_is_reloaded(one_thread, tmp_path):
    checkpoint = tmp_path / "weights.pt"
    model = load_model(device="cpu")
    torch.save(model.state_dict(), checkpoint)
    image = small_stack(planes=1)
    segment_stack(image, tmp_path / "a.zarr", checkpoint=checkpoint, **FAST)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.5)
    time.sleep(0.01)  # a later modification time, as any real rewrite has
    torch.save(model.state_dict(), checkpoint)
    segment_stack(image, tmp_path / "b.zarr", checkpoint=checkpoint, **FAST)
    first, second = run_record(tmp_path / "a.zarr"), run_record(tmp_path / "b.zarr")
    assert first["weights"] != second["weights"] == model_fingerprint(model)
    with pytest.raises(FileExistsError, match="weights"):  # other weights never mix in
        segment_stack(image, tmp_path / "a.zarr", checkpoint=checkpoint, resume=True, **FAST)


# Qt aborts the whole run when it finds no display: these tests run under xvfb-run, as in CI.
needs_display = pytest.mark.skipif(
    sys.platform.startswith("linux") and not any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")),
    reason="needs a display: run under xvfb-run -a",
)


@needs_display
def test_plugin_stack_uses_the_session_model(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    pytest.importorskip("pytestqt")
    import napari_sam.volume.stack as stack
    from napari_sam.plugin.automatic import AutomaticWidget
    from napari_sam.plugin.session import Session

    def second_copy(*args, **kwargs):
        raise AssertionError("the stack job loaded a second copy of the model")

    viewer = make_napari_viewer()
    viewer.add_image(small_stack(planes=2), name="cells")
    widget = AutomaticWidget(viewer)
    session = Session.for_viewer(viewer)
    session.configure(diameter=None, device="cpu")
    model = session.model()
    monkeypatch.setattr(stack, "load_model", second_copy)
    stack._loaded_model.cache_clear()
    widget.output.setText(str(tmp_path / "labels.zarr"))
    widget.segment_stack()
    qtbot.waitUntil(lambda: widget.worker is None or widget.worker.ended, timeout=60_000)
    assert "segmented" in widget.status.text(), widget.status.text()
    assert run_record(tmp_path / "labels.zarr")["weights"] == model_fingerprint(model)
