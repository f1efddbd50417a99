"""Shared fixtures: a tiny SAM with seeded random weights, a small image, a vit_t checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# torch's optimisers import torch._dynamo, and with it triton, whose LLVM crashes the process
# once a napari viewer's OpenGL (Mesa) has loaded its own: imported before any test, so that
# training tests may run after viewer tests in one session, in any order.
import torch._dynamo

from napari_sam.models.registry import MODELS, build_sam_vit
from napari_sam.synthetic import synthetic_nuclei

# A SAM small enough to run in milliseconds: 64 px input, 8x8 embedding grid, 32x32 low-res masks.
TINY = dict(
    embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=64, patch_size=8,
    window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)
TINY_INPUT = 64
TINY_LOW_RES = (32, 32)


def make_tiny_model(seed: int = 0):
    """The tiny SAM with random weights drawn from ``seed``, in evaluation mode."""
    torch.manual_seed(seed)
    return build_sam_vit(**TINY).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread. The tiny model gains nothing from threads, and on a shared CPU
    (another process busy) every op waiting for a descheduled second thread made these tests
    10-20 times slower. Results do not depend on it: compare runs made with the same setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model():
    """A fresh tiny model per test (tests may wrap its methods or change its dtype)."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def nuclei_image() -> np.ndarray:
    """A 50x90 uint16 fluorescence image: neither square nor the model input size. Read-only, so
    that a function writing into its input fails loudly."""
    image, _ = synthetic_nuclei((50, 90), seed=0)
    image.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def vit_t_checkpoint(tmp_path_factory):
    """A MobileSAM (vit_t) state dict with seeded random weights, saved like the official file."""
    torch.manual_seed(1)
    model = MODELS["vit_t"].build()
    path = tmp_path_factory.mktemp("checkpoints") / "mobile_sam.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def tiny_load_model(monkeypatch):
    """Make ``napari_sam.load_model`` (what the command line calls) return the tiny model;
    records the calls ``(name, checkpoint, device)``."""
    import napari_sam

    calls = []

    def fake_load_model(name=None, checkpoint=None, device="auto", **kwargs):
        calls.append((name, checkpoint, device))
        return make_tiny_model()

    monkeypatch.setattr(napari_sam, "load_model", fake_load_model)
    return calls


@pytest.fixture
def image_file(tmp_path):
    """A 48x80 uint16 tif (neither square nor a model's input size) and its pixels."""
    import tifffile

    image, _ = synthetic_nuclei((48, 80), seed=2)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, image)
    return path, image
