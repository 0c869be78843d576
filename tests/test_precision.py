"""precision=auto per machine: bf16 weights and inputs on a CPU with native bf16, fp32 elsewhere; the
precision used is store identity. The CPU's verdict is forced both ways, so this runs on any CPU."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from media import pattern_frames, write_video
from test_encoders import TINY_VIT
from test_store import PROV

from pipeline.encoders import base, create_encoder
from pipeline.errors import ConfigError, StoreError
from pipeline.store import create_or_open


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("prec") / "tiny-vit-prec.json"
    path.write_text(json.dumps(TINY_VIT))
    return path


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpus_bf16_verdict(native, monkeypatch):
    monkeypatch.setenv(base.BF16_ENV, "1" if native else "0")
    assert base.cpu_has_native_bf16() is native
    assert base.resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert base.resolve_precision("auto", torch.device("cuda")) == "fp16"  # CUDA: autocast as before
    assert base.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert base.cpu_has_native_bf16(override=not native) is (not native)
    with pytest.raises(ConfigError, match="fp16"):
        base.resolve_precision("fp16", torch.device("cpu"))


def test_detection_reads_cpu_flags_without_torch():
    found = base.cpu_bf16_support()
    assert set(found) <= set(base.BF16_CPU_FLAGS)
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert bool(found) == any(x in flags for x in base.BF16_CPU_FLAGS)


def test_forced_bf16_on_a_cpu_without_it_warns_once(monkeypatch):
    monkeypatch.setenv(base.BF16_ENV, "0")
    monkeypatch.setattr(base, "_warned_slow_bf16", False)
    with pytest.warns(UserWarning, match="slower"):
        assert base.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base.resolve_precision("bf16", torch.device("cpu"))


def test_bf16_encoder_runs_bf16_and_stays_close_to_fp32(tiny_json, monkeypatch):
    torch.manual_seed(0)
    fp32 = create_encoder(f"openclip:{tiny_json}", device="cpu", precision="fp32")
    monkeypatch.setenv(base.BF16_ENV, "1")
    torch.manual_seed(0)
    bf16 = create_encoder(f"openclip:{tiny_json}", device="cpu")  # auto on a "native bf16" CPU
    assert bf16.precision == "bf16" and bf16.provenance()["runtime"]["precision"] == "bf16"
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    seen = []
    hook = bf16.model.visual.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    frames = pattern_frames(6, height=224, width=224, seed=3)
    a, b = fp32.encode(frames), bf16.encode(frames)
    hook.remove()
    assert seen == [torch.bfloat16]  # inputs converted too (not autocast)
    assert b.dtype == np.float32 and b.shape == a.shape
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99, cos
    assert bf16.encode_text(["a cat"]).dtype == np.float32


def test_store_precision_is_identity_and_old_stores_read_fp32(tmp_path):
    store = create_or_open(tmp_path / "s", {**PROV, "precision": "fp32"})
    assert store.provenance["precision"] == "fp32"
    with pytest.raises(StoreError, match='precision: store has "fp32", this job has "bf16"'):
        create_or_open(tmp_path / "s", {**PROV, "precision": "bf16"})
    prov = json.loads((tmp_path / "s" / "store.json").read_text())
    del prov["precision"]  # a store written before precision was recorded
    (tmp_path / "s" / "store.json").write_text(json.dumps(prov))
    create_or_open(tmp_path / "s", {**PROV, "precision": "fp32"})
    with pytest.raises(StoreError, match="precision"):
        create_or_open(tmp_path / "s", {**PROV, "precision": "bf16"})
    # an old CUDA store recorded its autocast precision only in encoder_info: it stays fp16
    cuda = {**PROV, "encoder_info": {"runtime": {"device": "cuda", "precision": "fp16"}}}
    create_or_open(tmp_path / "c", cuda)
    prov = json.loads((tmp_path / "c" / "store.json").read_text())
    del prov["precision"]
    (tmp_path / "c" / "store.json").write_text(json.dumps(prov))
    create_or_open(tmp_path / "c", {**cuda, "precision": "fp16"})


def test_extraction_records_the_precision_used_and_info_shows_it(tiny_json, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main
    from pipeline.config import load_config
    from pipeline.data.manifest import load_manifest
    from pipeline.extract.entry import extract

    write_video(tmp_path / "v" / "a" / "x.mp4", pattern_frames(12, seed=1), fps=12)
    manifest = load_manifest(tmp_path / "v")
    monkeypatch.setenv(base.BF16_ENV, "1")
    cfg = load_config(None, [f"encoder=openclip:{tiny_json}", "sampling.num_frames=2", "extract.device=cpu"])
    torch.manual_seed(0)
    extract(manifest, tmp_path / "s", cfg, progress=False)
    assert json.loads((tmp_path / "s" / "store.json").read_text())["precision"] == "bf16"
    assert main(["info", str(tmp_path / "s")]) == 0
    assert "dim 32, bf16)" in capsys.readouterr().out
    monkeypatch.setenv(base.BF16_ENV, "0")  # the same settings on a CPU without bf16 resolve to fp32: refused
    with pytest.raises(StoreError, match="precision"):
        extract(manifest, tmp_path / "s", cfg, progress=False)
