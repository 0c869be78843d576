"""Zero-shot heads and pre-projection features with a tiny open_clip model (random weights saved to a
checkpoint, so the text tower rebuilt from the store's spec is the one that embedded the frames).

Random weights say nothing about accuracy — no pretrained CLIP can be loaded offline — so these tests
check the plumbing: shapes, normalisation, prediction = argmax of cosine, provenance, refusals.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media import pattern_frames, write_video

from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.encoders import create_encoder
from pipeline.errors import ConfigError, HeadError
from pipeline.extract.entry import extract
from pipeline.probe.heads.zeroshot import DEFAULT_TEMPLATES, label_to_text
from pipeline.probe.train import train_head
from pipeline.store import ShardWriter, create_or_open, open_store

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 48, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
LABELS = ["ApplyEyeMakeup", "brush_hair", "air drumming"]


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("zs")
    cfg = d / "tiny-zs-vit.json"
    cfg.write_text(json.dumps(TINY))
    torch.manual_seed(0)
    model = create_encoder(f"openclip:{cfg}", device="cpu").model
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return f"openclip:{cfg}@{ckpt}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zsvid")
    rows = ["path,label,split"]
    for k, label in enumerate(LABELS):
        for j in range(3):
            rel = f"{k}/{j}.mp4"
            write_video(root / rel, pattern_frames(12, height=48, width=64, kind=k, seed=j), fps=12)
            rows.append(f"{rel},{label},{'test' if j == 2 else 'train'}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def _extract(spec: str, manifest: Path, out: Path) -> Path:
    cfg = load_config(None, [f"encoder={spec}", "sampling.num_frames=3", "extract.num_workers=0", "extract.device=cpu"])
    (summary,) = extract(load_manifest(manifest), out, cfg, progress=False)
    assert summary.failed == 0 and summary.done == 9
    return out


@pytest.fixture(scope="module")
def joint_store(tiny_spec, videos, tmp_path_factory) -> Path:
    return _extract(tiny_spec, videos, tmp_path_factory.mktemp("zsstore") / "joint")


def test_zeroshot_head_is_argmax_cosine_to_prompt_embeddings(joint_store: Path, tiny_spec: str, tmp_path: Path) -> None:
    head = tmp_path / "zs.skops"
    out = train_head(joint_store, head, head="zeroshot", pool="mean")
    assert out["n_train"] == 0 and out["classes"] == sorted(LABELS)
    assert out["hparams"]["templates"] == list(DEFAULT_TEMPLATES)
    assert out["hparams"]["example_prompt"] == "a video of a person apply eye makeup."

    # Recompute independently: the store encoder's text tower, the store's mean-pooled frames.
    enc = create_encoder(tiny_spec, device="cpu")
    prompts = [f"a video of a person {label_to_text(c)}." for c in out["classes"]]
    text = enc.encode_text(prompts)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)  # text embeddings are unit vectors
    store = open_store(joint_store)
    images = store.pooled(lambda x: x.mean(axis=0))
    assert images.shape == (9, TINY["embed_dim"])
    cos = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ text.T

    from pipeline.probe.heads.files import load_head

    loaded = load_head(head)
    normalizer, linear = loaded.estimator.steps[0][1], loaded.estimator.steps[-1][1]
    np.testing.assert_allclose(
        np.linalg.norm(normalizer.transform(images), axis=1), 1.0, atol=1e-6
    )  # images normalised
    np.testing.assert_allclose(linear.coef_ / enc.logit_scale, text, atol=1e-5)
    proba = loaded.predict_proba(images)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(proba.argmax(axis=1), cos.argmax(axis=1))
    expected = np.exp(enc.logit_scale * cos)
    np.testing.assert_allclose(proba, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)

    # and it reproduces its recorded metrics in a fresh process
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", str(joint_store), str(head), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(head.with_suffix(".json").read_text())["metrics"]["test"]
    fresh = json.loads(proc.stdout)
    assert {k: fresh[k] for k in ("top1", "top5", "confusion")} == {
        k: recorded[k] for k in ("top1", "top5", "confusion")
    }


def test_prompt_ensemble(joint_store: Path, tmp_path: Path) -> None:
    from pipeline.probe.heads.settings import HeadConfig

    out = train_head(
        joint_store,
        tmp_path / "e.skops",
        head=HeadConfig(kind="zeroshot", templates=("a video of {label}.", "a photo of a person {label}.")),
    )
    assert len(out["hparams"]["templates"]) == 2


def test_pre_projection_features(tiny_spec: str, videos: Path, joint_store: Path, tmp_path: Path) -> None:
    """#pre stores the image tower's output before the projection: a second store, and pre @ proj = joint."""
    pre = create_encoder(tiny_spec + "#pre", device="cpu")
    joint = create_encoder(tiny_spec, device="cpu")
    assert pre.dim == TINY["vision_cfg"]["width"] and joint.dim == TINY["embed_dim"]
    assert pre.spec.endswith("#pre") and pre.weights_id == joint.weights_id
    assert pre.provenance()["features"] == "pre" and joint.provenance()["features"] == "joint"
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(pre.encode(frames) @ pre.projection.numpy(), joint.encode(frames), atol=1e-5)

    store = _extract(tiny_spec + "#pre", videos, tmp_path / "pre")
    prov = open_store(store).provenance
    assert prov["encoder"].endswith("#pre") and prov["dim"] == TINY["vision_cfg"]["width"]
    with pytest.raises(Exception, match="encoder"):  # the joint store refuses pre-projection features
        _extract(tiny_spec + "#pre", videos, joint_store)
    assert train_head(store, tmp_path / "lin.skops", head="logreg")["n_test"] == 3  # probes train on #pre stores
    with pytest.raises(HeadError, match="pre-projection"):
        train_head(store, tmp_path / "zs.skops", head="zeroshot")


def test_zeroshot_refusals(joint_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mean, max or center"):
        train_head(joint_store, tmp_path / "a.skops", head="zeroshot", pool="seg2")
    for encoder, weights, needle in (
        ("effnet-lite0", "abc", "no text tower"),
        ("openclip:ViT-B-32", "random-init", "randomly initialised"),
    ):
        s = create_or_open(
            tmp_path / encoder.replace(":", "_"),
            {"encoder": encoder, "weights_id": weights, "dim": 4, "preprocess": {}, "sampling": {}},
        )
        with ShardWriter(s) as w:
            for i in range(4):
                w.add(f"v{i}.mp4", None, None, f"l{i % 2}", "test", np.ones((2, 4), np.float32), np.zeros(2))
        with pytest.raises(HeadError, match=needle):
            train_head(s.path, tmp_path / "b.skops", head="zeroshot")


def test_spec_option_parsing() -> None:
    from pipeline.encoders import canonical_spec, parse_spec, spec_options

    assert spec_options("openclip:ViT-B-32@openai#pre") == ("openclip:ViT-B-32@openai", frozenset({"pre"}))
    assert parse_spec("openclip:ViT-B-32@openai#pre") == ("openclip", "ViT-B-32", "openai")
    assert parse_spec("openclip:ViT-B-32@/ckpts/run#3/model.pt") == ("openclip", "ViT-B-32", "/ckpts/run#3/model.pt")
    assert canonical_spec("OpenCLIP:ViT-B-32@openai#PRE") == "openclip:ViT-B-32@openai#pre"
    for spec in ("effnet-lite0#pre", "timm:resnet18#pre"):
        with pytest.raises(ConfigError, match="#pre"):
            parse_spec(spec)
    assert spec_options("timm:resnet18@/w/r#1.pth#BLOCK02") == ("timm:resnet18@/w/r#1.pth", frozenset({"block2"}))
    assert canonical_spec("timm:resnet18@/w/r.pth#block02") == "timm:resnet18@/w/r.pth#block2"
    for spec, needle in (("effnet-lite0#block1", "only for timm"), ("timm:resnet18#block1#block2", "one #blockK")):
        with pytest.raises(ConfigError, match=needle):
            parse_spec(spec)


def test_cli_zeroshot_with_prompts(joint_store: Path, tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    head = tmp_path / "z.skops"
    code = main(
        [
            "train",
            str(joint_store),
            "-o",
            str(head),
            "--head",
            "zeroshot",
            "--prompt",
            "a clip of {label}.",
            "--prompt",
            "{label}",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hparams"]["templates"] == ["a clip of {label}.", "{label}"] and out["n_test"] == 3
