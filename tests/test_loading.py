"""load_model: checkpoints, downloads, devices and precision."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_sam
from conftest import TINY_LOW_RES, make_tiny_model
from napari_sam import Predictor, load_model, resolve_device
from napari_sam.models import weights
from napari_sam.models.registry import MODELS
from napari_sam.models.sam import Sam

KNOWN = "nuclei_s, vit_b, vit_l, vit_h, vit_t"
ARCHITECTURES = KNOWN + ", sam2.1_hiera_tiny, sam2.1_hiera_small, sam2.1_hiera_base_plus, sam2.1_hiera_large"

pytestmark = pytest.mark.usefixtures("one_thread")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- #
# local checkpoints
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def vit_t_loaded(one_thread, vit_t_checkpoint):
    return load_model(checkpoint=vit_t_checkpoint, device="cpu")


def test_checkpoint_is_recognised_without_a_name(vit_t_loaded, vit_t_checkpoint):
    model = vit_t_loaded
    assert isinstance(model, Sam)
    assert not model.training
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert type(model.image_encoder).__name__ == "TinyViT"
    saved = torch.load(vit_t_checkpoint, weights_only=True)
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_checkpoint_with_its_name_on_the_auto_device(vit_t_checkpoint):
    model = load_model("vit_t", vit_t_checkpoint)  # device="auto"
    assert model.device == resolve_device("auto")
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(model.state_dict()[key].cpu(), torch.load(vit_t_checkpoint)[key])


def test_checkpoint_wrapped_under_model_key(tmp_path, vit_t_checkpoint):
    """Training scripts often save {"model": state_dict, "epoch": ...}."""
    state = torch.load(vit_t_checkpoint, weights_only=True)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": state, "epoch": 3}, path)
    assert weights.read_state_dict(path).keys() == state.keys()
    assert weights.identify(weights.read_state_dict(path)) == "vit_t"


def test_wrong_name_names_the_right_model(monkeypatch, vit_t_checkpoint):
    # vit_b is built on the meta device here: load_model builds the named architecture before it
    # compares shapes, and a real vit_b is 91M parameters.
    spec = MODELS["vit_b"]

    def build_on_meta():
        with torch.device("meta"):
            return spec.build()

    monkeypatch.setitem(MODELS, "vit_b", dataclasses.replace(spec, build=build_on_meta))
    with pytest.raises(ValueError, match=r"is a 'vit_t' checkpoint, not 'vit_b': pass name='vit_t'"):
        load_model("vit_b", vit_t_checkpoint, device="cpu")


def test_identify_recognises_full_size_shapes():
    """The official layouts, from shapes only (no memory): each is told apart from the others."""
    for name in weights.architectures():
        fake = {k: torch.empty(shape, device="meta") for k, shape in weights.expected_shapes(name).items()}
        assert weights.identify(fake) == name
    # micro-sam's models are fine-tuned Meta and MobileSAM models: their weights name those
    assert weights.architectures() == ["nuclei_s", "vit_b", "vit_l", "vit_h", "vit_t",
                                       "sam2.1_hiera_tiny", "sam2.1_hiera_small",
                                       "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]
    assert weights.expected_shapes("vit_b_lm") == weights.expected_shapes("vit_b")
    assert weights.expected_shapes("vit_b")["image_encoder.patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert weights.expected_shapes("vit_h")["image_encoder.pos_embed"] == (1, 64, 64, 1280)


def test_load_weights_explains_a_damaged_state_dict(vit_t_checkpoint):
    state = torch.load(vit_t_checkpoint, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 7)
    state["extra.weight"] = torch.zeros(1)
    with torch.device("meta"):
        model = MODELS["vit_t"].build()
    with pytest.raises(ValueError) as error:
        weights.load_weights(model, state, name="vit_t", source="my file")
    message = str(error.value)
    assert "my file does not fit the 'vit_t' architecture" in message
    assert "missing: mask_decoder.iou_token.weight" in message
    assert "unexpected: extra.weight" in message
    assert "other shape: mask_decoder.mask_tokens.weight" in message
    assert KNOWN in message


def test_damaged_checkpoint_without_a_name(tmp_path, vit_t_checkpoint):
    state = torch.load(vit_t_checkpoint, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"matches none of the known architectures \({ARCHITECTURES}\)"):
        load_model(checkpoint=path, device="cpu")


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(5000), b"this is a text file, not weights\n", b""],
    ids=["random bytes", "text", "empty"],
)
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "sam.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"is not a readable PyTorch checkpoint"):
        load_model(checkpoint=path, device="cpu")


def test_truncated_checkpoint(tmp_path, vit_t_checkpoint):
    data = Path(vit_t_checkpoint).read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"not a readable PyTorch checkpoint \(is it truncated"):
        load_model(checkpoint=path, device="cpu")


@pytest.mark.parametrize(
    "obj, kind",
    [([1, 2, 3], "list"), ({"a": 1, "b": "x"}, "dict"), (torch.zeros(3), "Tensor")],
)
def test_not_a_state_dict(tmp_path, obj, kind):
    path = tmp_path / "thing.pt"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=rf"holds a {kind}, not a state dict of tensors"):
        load_model(checkpoint=path, device="cpu")


class _OpensAFile:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _OpensAFile(marker)}, path)
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_model(checkpoint=path, device="cpu")
    assert not marker.exists()


def test_unknown_architecture(tmp_path):
    path = tmp_path / "foo.pt"
    torch.save({"foo": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=rf"matches none of the known architectures \({ARCHITECTURES}\)"):
        load_model(checkpoint=path, device="cpu")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_model(checkpoint=tmp_path / "nowhere.pth", device="cpu")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_model(checkpoint=tmp_path, device="cpu")  # a folder is not a checkpoint


def test_unknown_name():
    with pytest.raises(ValueError, match=rf"unknown model 'vit_x': choose one of {KNOWN}"):
        load_model("vit_x")


def test_no_name_and_no_checkpoint_loads_the_shipped_default():
    model = load_model(device="cpu")  # offline: the weights are inside the package
    assert model.img_size == 256
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == weights.expected_shapes("nuclei_s")
    assert model.mask_decoder.iou_token.weight.dtype == torch.float32  # shipped as float16


@pytest.mark.parametrize("precision", ["float64", "fp16", "half", None])
def test_bad_precision(vit_t_checkpoint, precision):
    with pytest.raises(ValueError, match=r"precision=.* is not one of float32, bfloat16, float16"):
        load_model(checkpoint=vit_t_checkpoint, device="cpu", precision=precision)


# --------------------------------------------------------------------------- #
# devices and precision
# --------------------------------------------------------------------------- #
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # named devices are taken as given
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("auto picks an accelerator on this machine")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_auto_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_load_model_precision(vit_t_checkpoint):
    model = load_model(checkpoint=vit_t_checkpoint, device="cpu", precision="bfloat16")
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training
    saved = torch.load(vit_t_checkpoint, weights_only=True)["mask_decoder.iou_token.weight"]
    np.testing.assert_allclose(model.mask_decoder.iou_token.weight.detach().float(), saved, rtol=1e-2)


def _skip_if_unsupported(error: RuntimeError, dtype: torch.dtype):
    if "not implemented for" in str(error):
        pytest.skip(f"{dtype} is not supported on this CPU build: {error}")
    raise error


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_predictor(nuclei_image, dtype):
    """Weights in bfloat16/float16, answers still in float32 and bool, close to float32's."""
    reference = Predictor(make_tiny_model())
    reference.set_image(nuclei_image)
    predictor = Predictor(make_tiny_model().to(dtype))
    try:
        embedding = predictor.set_image(nuclei_image)
        single = predictor.predict(points=[[10, 20], [30, 40]], labels=[1, 0], box=[0, 0, 40, 80])
        batch = predictor.predict_batch(points=[[[10, 20]], [[30, 60]]], multimask=False)
        refined = predictor.predict(points=[[10, 20]], mask_input=single[2][0])
    except RuntimeError as error:
        _skip_if_unsupported(error, dtype)
    assert embedding.features.dtype == dtype
    masks, scores, logits = single
    assert masks.shape == (3, 50, 90) and masks.dtype == bool
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert logits.shape == (3, *TINY_LOW_RES) and logits.dtype == np.float32
    assert batch[0].shape == (2, 1, 50, 90) and batch[0].dtype == bool
    assert batch[1].dtype == batch[2].dtype == np.float32
    assert refined[1].dtype == np.float32 and refined[0].shape == (3, 50, 90)
    expected = reference.predict(points=[[10, 20], [30, 40]], labels=[1, 0], box=[0, 0, 40, 80])
    np.testing.assert_allclose(scores, expected[1], atol=0.05)
    assert (masks == expected[0]).mean() > 0.8


# --------------------------------------------------------------------------- #
# downloads
# --------------------------------------------------------------------------- #
class _Server:
    """A local HTTP server for the files of a folder, counting the requests it answers."""

    def __init__(self, folder: Path):
        requests = self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    folder = tmp_path / "served"
    folder.mkdir()
    server = _Server(folder)
    server.folder = folder
    yield server
    server.stop()


@pytest.fixture
def served_file(server):
    data = np.random.default_rng(0).bytes(10_000)
    (server.folder / "weights.bin").write_bytes(data)
    return f"{server.url}/weights.bin", f"sha256:{hashlib.sha256(data).hexdigest()}", data


def test_fetch_downloads_then_uses_the_cache(tmp_path, server, served_file):
    url, digest, data = served_file
    cache = tmp_path / "cache"
    path = weights.fetch(url, digest, folder=cache)
    assert path == cache / "weights.bin"
    assert path.read_bytes() == data
    assert server.requests == ["/weights.bin"]
    server.stop()
    assert weights.fetch(url, digest, folder=cache) == path  # no network: the server is gone
    assert server.requests == ["/weights.bin"]


def test_fetch_with_a_wrong_hash_keeps_nothing(tmp_path, server, served_file):
    url, _, _ = served_file
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"(?i)hash"):
        weights.fetch(url, "sha256:" + "0" * 64, folder=cache)
    assert server.requests == ["/weights.bin"]
    assert not (cache / "weights.bin").exists()
    assert not cache.exists() or not any(cache.iterdir())


def test_fetch_replaces_a_corrupted_cached_file(tmp_path, server, served_file):
    url, digest, data = served_file
    cache = tmp_path / "cache"
    path = weights.fetch(url, digest, folder=cache)
    path.write_bytes(data[:100])  # e.g. an interrupted copy
    assert weights.fetch(url, digest, folder=cache).read_bytes() == data
    assert len(server.requests) == 2


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "mine"))
    assert weights.CACHE_ENV == "NAPARI_SAM_CACHE"
    assert weights.cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("NAPARI_SAM_CACHE", "~/sam-weights")
    assert weights.cache_dir() == Path.home() / "sam-weights"
    monkeypatch.delenv("NAPARI_SAM_CACHE")
    default = weights.cache_dir()
    assert default.name == "checkpoints" and "napari-sam" in str(default)


def test_fetch_defaults_to_the_cache_dir(tmp_path, monkeypatch, served_file):
    url, digest, _ = served_file
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "env-cache"))
    assert weights.fetch(url, digest) == tmp_path / "env-cache" / "weights.bin"


def test_load_model_by_name_downloads_once(tmp_path, monkeypatch, server, vit_t_checkpoint):
    (server.folder / "mobile_sam.pt").write_bytes(Path(vit_t_checkpoint).read_bytes())
    spec = dataclasses.replace(
        MODELS["vit_t"], url=f"{server.url}/mobile_sam.pt", known_hash=f"sha256:{sha256(vit_t_checkpoint)}"
    )
    monkeypatch.setitem(MODELS, "vit_t", spec)
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    model = napari_sam.load_model("vit_t", device="cpu")
    assert (tmp_path / "cache" / "mobile_sam.pt").is_file()
    assert server.requests == ["/mobile_sam.pt"]
    key = "mask_decoder.output_upscaling.0.weight"
    assert torch.equal(model.state_dict()[key], torch.load(vit_t_checkpoint, weights_only=True)[key])
    server.stop()
    load_model("vit_t", device="cpu")  # from the cache, without the server
    assert server.requests == ["/mobile_sam.pt"]


def test_load_model_refuses_a_download_with_the_wrong_hash(tmp_path, monkeypatch, server, vit_t_checkpoint):
    (server.folder / "mobile_sam.pt").write_bytes(b"not the weights")
    spec = dataclasses.replace(
        MODELS["vit_t"], url=f"{server.url}/mobile_sam.pt", known_hash=f"sha256:{sha256(vit_t_checkpoint)}"
    )
    monkeypatch.setitem(MODELS, "vit_t", spec)
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError):
        load_model("vit_t", device="cpu")
    assert not (tmp_path / "cache" / "mobile_sam.pt").exists()


def test_engine_never_imports_torch_dynamo():
    """torch._dynamo imports triton, whose LLVM crashes a process holding a Mesa OpenGL context
    (napari's canvas): loading, prompting and automatic segmentation must not import it."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np, napari_sam\n"
        "from napari_sam.models.weights import expected_shapes\n"
        "for name in napari_sam.MODELS: expected_shapes(name)\n"
        "model = napari_sam.load_model()\n"
        "image = np.random.default_rng(0).integers(0, 255, (96, 96), np.uint8)\n"
        "predictor = napari_sam.Predictor(model); predictor.set_image(image)\n"
        "predictor.predict(points=[[40, 40]])\n"
        "for sampler in ('grid', 'boxes', 'adaptive'):\n"
        "    napari_sam.AutomaticMaskGenerator(model, points_per_side=4, sampler=sampler,\n"
        "        pred_iou_thresh=0, stability_score_thresh=0).generate(image)\n"
        "print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def xxh128(path: Path) -> str:
    import xxhash

    return f"xxh128:{xxhash.xxh128(Path(path).read_bytes()).hexdigest()}"


@pytest.fixture
def vit_t_decoder_state(vit_t_loaded):
    """Random weights of the instance decoder of a vit_t model, in micro-sam's layout."""
    from napari_sam.models.registry import build_instance_decoder

    torch.manual_seed(3)
    return build_instance_decoder(vit_t_loaded).state_dict()


def test_micro_sams_model_and_its_decoder_download_once_each(
        tmp_path, monkeypatch, server, vit_t_checkpoint, vit_t_decoder_state):
    """Both of micro-sam's files are checked against its xxh128 hashes; each is cached under the
    model's name (micro-sam calls the files of all its vit_t models vit_t.pt)."""
    (server.folder / "vit_t.pt").write_bytes(Path(vit_t_checkpoint).read_bytes())
    torch.save(vit_t_decoder_state, server.folder / "vit_t_decoder.pt")
    spec = dataclasses.replace(
        MODELS["vit_t_lm"], url=f"{server.url}/vit_t.pt", known_hash=xxh128(vit_t_checkpoint),
        decoder_url=f"{server.url}/vit_t_decoder.pt",
        decoder_hash=xxh128(server.folder / "vit_t_decoder.pt"),
    )
    monkeypatch.setitem(MODELS, "vit_t_lm", spec)
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    model = napari_sam.load_model("vit_t_lm", device="cpu")
    decoder = napari_sam.load_decoder(model)
    assert model.name == "vit_t_lm"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["vit_t_lm.pt", "vit_t_lm_decoder.pt"]
    assert all(torch.equal(decoder.state_dict()[k], v) for k, v in vit_t_decoder_state.items())
    server.stop()
    napari_sam.load_decoder(napari_sam.load_model("vit_t_lm", device="cpu"))  # from the cache
    assert server.requests == ["/vit_t.pt", "/vit_t_decoder.pt"]


def test_micro_sams_training_checkpoint_gives_the_model_and_its_decoder(
        tmp_path, vit_t_checkpoint, vit_t_decoder_state):
    """torch-em's format: the model under "model_state" with "sam." keys, the decoder beside."""
    sam_state = torch.load(vit_t_checkpoint, weights_only=True)
    path = tmp_path / "best.pt"
    torch.save({"model_state": {f"sam.{k}": v for k, v in sam_state.items()},
                "decoder_state": vit_t_decoder_state, "iteration": 100}, path)
    model = load_model(checkpoint=path, device="cpu")
    assert model.name == "vit_t"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sam_state.items())
    decoder = napari_sam.load_decoder(model, path)
    assert all(torch.equal(decoder.state_dict()[k], v) for k, v in vit_t_decoder_state.items())


def test_a_model_without_a_decoder_names_those_with_one(vit_t_loaded, vit_t_checkpoint):
    with pytest.raises(ValueError, match=r"'vit_t' has no instance decoder: .*vit_b_lm"):
        napari_sam.load_decoder(vit_t_loaded)
    with pytest.raises(ValueError, match=r"is a 'vit_t' SAM checkpoint, not an instance decoder"):
        napari_sam.load_decoder(vit_t_loaded, vit_t_checkpoint)
