"""One decode, many encoders: ``vidprobe extract SRC -o OUT --encoder A --encoder B`` writes one ordinary store
per encoder, equal to separate runs, decoding each clip once for the stores that lack it.

Real parts throughout: real encoded videos (tests/media.py) with a corrupt one, the offline effnet-lite0
and a tiny open_clip ViT (random weights saved to a checkpoint) whose joint and ``#pre`` outputs come
from one forward, real HDF5 stores, a real ``vidprobe extract`` process killed mid-way and resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media import pattern_frames, write_video

import pipeline.extract.workers as workers
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.encoders import create_encoder, create_encoders, group_outputs
from pipeline.errors import ConfigError
from pipeline.extract.entry import extract
from pipeline.extract.targets import decode_views, store_name, store_paths
from pipeline.probe.benchmark import expand_stores, load_benchmark_config
from pipeline.store import create_or_open, open_store
from pipeline.store.tools import verify_store

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 48, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SETTINGS = ["sampling.num_frames=3", "extract.device=cpu", "extract.batch_size=8"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny open_clip spec with fixed random weights (a checkpoint file, so every build is the same model)."""
    d = tmp_path_factory.mktemp("tinyclip")
    cfg = d / "tiny-multi-vit.json"
    cfg.write_text(json.dumps(TINY))
    torch.manual_seed(0)
    model = create_encoder(f"openclip:{cfg}", device="cpu").model
    torch.save(model.state_dict(), d / "w.pt")
    return f"openclip:{cfg}@{d / 'w.pt'}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """2 classes x 3 real videos in mixed containers, plus a file that is not a video."""
    root = tmp_path_factory.mktemp("multivid")
    for j in range(6):
        write_video(
            root / f"c{j % 2}" / f"v{j}{('.mp4', '.webm', '.mkv')[j % 3]}",
            pattern_frames(24, height=48, width=80, kind=j % 2, seed=j),
            fps=12,
        )
    (root / "c0" / "broken.mp4").write_bytes(b"not a video\n" * 40)
    return root


def _cfg(*specs: str, extra: tuple[str, ...] = ()):
    cfg = load_config(None, [*SETTINGS, "extract.num_workers=0", *extra])
    cfg.encoder = specs[0] if len(specs) == 1 else tuple(specs)
    return cfg.validate()


@pytest.fixture(scope="module")
def separate(videos, tiny, tmp_path_factory) -> dict[str, Path]:
    """Each encoder in its own ordinary run: what a shared run must equal."""
    out = tmp_path_factory.mktemp("separate")
    stores = {}
    for spec in ("effnet-lite0", tiny, tiny + "#pre"):
        stores[spec] = out / store_name(spec)
        (summary,) = extract(load_manifest(str(videos)), stores[spec], _cfg(spec), progress=False)
        assert (summary.done, summary.failed) == (6, 1)
    return stores


def assert_same_store(got: Path, want: Path) -> None:
    a, b = open_store(got), open_store(want)
    assert sorted(a.keys()) == sorted(b.keys())
    order_a = {k: i for i, k in enumerate(a.keys())}
    for i, key in enumerate(b.keys()):
        np.testing.assert_allclose(a.frames(order_a[key]), b.frames(i), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(a.timestamps(order_a[key]), b.timestamps(i))
    same = ("encoder", "weights_id", "dim", "preprocess", "sampling", "dtype", "precision", "encoder_info")
    assert {k: a.provenance[k] for k in same} == {k: b.provenance[k] for k in same}
    assert sorted((f["path"], f["stage"]) for f in a.failures()) == sorted(
        (f["path"], f["stage"]) for f in b.failures()
    )
    assert verify_store(got).ok


def count_decodes(monkeypatch) -> list:
    """Record every task the (in-process) decoder runs."""
    calls: list = []
    real = workers.decode_task

    def counting(task, *args, **kwargs):
        calls.append(task)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(workers, "decode_task", counting)
    return calls


def test_two_encoders_in_one_pass_equal_two_separate_runs(videos, tiny, separate, tmp_path, capsys, monkeypatch):
    """effnet-lite0 + a tiny open_clip through the CLI: one decode per clip, two stores equal to two runs,
    the corrupt file recorded as failed in both; a re-run decodes nothing."""
    calls = count_decodes(monkeypatch)
    out = tmp_path / "both"
    argv = ["extract", str(videos), "-o", str(out), "--encoder", "effnet-lite0", "--encoder", tiny, "--json"]
    code = main([*argv, *SETTINGS, "extract.num_workers=0"])
    summaries = json.loads(capsys.readouterr().out)
    assert code == 3  # finished, one clip failed (in each store)
    assert len(calls) == 7  # every video decoded once, not once per encoder
    assert {c.views for c in calls} == {(0, 1)}  # effnet (224 crop of 256) and the ViT (64) resize differently
    assert [s["store"] for s in summaries] == [str(out / "effnet-lite0"), str(out / store_name(tiny))]
    for s in summaries:
        assert (s["done"], s["failed"]) == (6, 1) and "broken.mp4" in s["failures"][0][1]
    assert_same_store(out / "effnet-lite0", separate["effnet-lite0"])
    assert_same_store(out / store_name(tiny), separate[tiny])
    for store in (out / "effnet-lite0", out / store_name(tiny)):
        assert [f["path"] for f in open_store(store).failures()] == ["c0/broken.mp4"]

    calls.clear()
    assert main([*argv, *SETTINGS, "extract.num_workers=0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert calls == [] and [s["skipped"] for s in again] == [7, 7]


def test_joint_and_pre_come_from_one_forward_and_equal_separate_extractions(videos, tiny, separate, tmp_path):
    """openclip:M and openclip:M#pre named together: one model, one forward per batch, two stores."""
    groups, where = group_outputs(create_encoders([tiny, tiny + "#pre"], device="cpu"))
    assert len(groups) == 1 and sorted(where) == [(0, 0), (0, 1)]
    (group,) = groups
    joint = group.outputs[where[0][1]]
    assert joint.spec == create_encoder(tiny, device="cpu").spec and joint.dim == TINY["embed_dim"]
    forwards = []
    model = group.model.model
    handle = model.visual.register_forward_hook(lambda *a: forwards.append(1))
    frames = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    outs = group.encode(frames)
    handle.remove()
    assert len(forwards) == 1 and [o.shape for o in outs] == [(4, TINY["vision_cfg"]["width"]), (4, TINY["embed_dim"])]
    np.testing.assert_allclose(outs[1], create_encoder(tiny, device="cpu").encode(frames), rtol=1e-4, atol=1e-5)

    out = tmp_path / "pair"
    summaries = extract(load_manifest(str(videos)), out, _cfg(tiny, tiny + "#pre"), progress=False)
    assert [s.done for s in summaries] == [6, 6]
    assert_same_store(out / store_name(tiny), separate[tiny])
    assert_same_store(out / store_name(tiny + "#pre"), separate[tiny + "#pre"])
    assert open_store(out / store_name(tiny + "#pre")).provenance["encoder_info"]["features"] == "pre"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> str:
    """timm resnet18 with fixed random weights in a checkpoint file (no hub): levels 0..4 = stem, layer1..4."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet") / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return f"timm:resnet18@{path}"


def test_timm_levels_come_from_one_forward_and_equal_separate_extractions(videos, resnet, tmp_path):
    """timm:M, timm:M#block2 and timm:M#block3 named together: one model, one pass through the trunk per batch,
    three stores equal to three separate runs; a level is the spatial mean of that stage's output."""
    specs = [resnet, resnet + "#block2", resnet + "#block3"]
    groups, where = group_outputs(create_encoders(specs, device="cpu"))
    assert len(groups) == 1 and sorted(where) == [(0, 0), (0, 1), (0, 2)]
    (group,) = groups
    trunk = group.model.model
    seen: dict[str, list[torch.Tensor]] = {"conv1": [], "layer2": [], "layer3": []}
    hooks = [
        getattr(trunk, name).register_forward_hook(lambda m, i, o, name=name: seen[name].append(o)) for name in seen
    ]
    frames = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    outs = group.encode(frames)
    for h in hooks:
        h.remove()
    assert {name: len(calls) for name, calls in seen.items()} == {"conv1": 1, "layer2": 1, "layer3": 1}  # one pass
    np.testing.assert_allclose(outs[1], seen["layer2"][0].mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[2], seen["layer3"][0].mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    alone = [create_encoder(spec, device="cpu") for spec in specs]
    assert [o.dim for o in group.outputs] == [e.dim for e in alone] == [512, 128, 256]
    for o, e in zip(group.outputs, alone):
        assert o.provenance() == e.provenance()
        np.testing.assert_allclose(outs[group.outputs.index(o)], e.encode(frames), rtol=1e-4, atol=1e-5)

    out = tmp_path / "levels"
    manifest = load_manifest(str(videos))
    summaries = extract(manifest, out, _cfg(*specs), progress=False)
    assert [(s.done, s.failed) for s in summaries] == [(6, 1)] * 3
    for spec in specs:
        ref = tmp_path / "ref" / store_name(spec)
        extract(manifest, ref, _cfg(spec), progress=False)
        assert_same_store(out / store_name(spec), ref)
    assert open_store(out / store_name(specs[2])).provenance["encoder_info"]["features"] == "block3"
    with pytest.raises(ConfigError, match=r"#block9 is out of range; the levels are 0=act1"):
        create_encoder(resnet + "#block9", device="cpu")


def test_a_clip_stored_for_one_encoder_is_decoded_only_for_the_other(videos, tiny, separate, tmp_path, monkeypatch):
    """A store that has half the clips gets the rest; the other store gets all; a clip both have is not decoded."""
    out = tmp_path / "grow"
    half = [str(p.relative_to(videos)) for p in sorted(videos.rglob("v*.*"))[:3]]
    (tmp_path / "half.csv").write_text("path,label\n" + "".join(f"{p},{p.split('/')[0]}\n" for p in half))
    manifest = load_manifest(str(tmp_path / "half.csv"), root=videos)
    (first,) = extract(manifest, out / "effnet-lite0", _cfg("effnet-lite0"), progress=False)
    assert first.done == 3
    # an ordinary store grown by the shared run: same provenance, so it is accepted
    calls = count_decodes(monkeypatch)
    cfg = _cfg("effnet-lite0", tiny)
    a, b = extract(load_manifest(str(videos)), out, cfg, progress=False)
    assert (a.done, a.skipped, a.failed, b.done, b.skipped, b.failed) == (3, 3, 1, 6, 0, 1)
    assert len(calls) == 7
    only_b = [c for c in calls if Path(c.path).name in {Path(p).name for p in half}]
    assert len(only_b) == 3 and {c.views for c in only_b} == {(1,)}  # decoded and resized for the ViT alone
    assert_same_store(out / "effnet-lite0", separate["effnet-lite0"])
    assert_same_store(out / store_name(tiny), separate[tiny])


def test_windowed_stores_each_get_the_windows_they_lack(videos, tiny, tmp_path):
    """Sliding windows: a store missing some windows of a video (a killed run's lost shards) gets exactly
    those, the other store all of them, from one decode per video."""
    opts = ("sampling.strategy=sliding", "sampling.clip_length=1", "sampling.stride=0.5", "extract.shard_size=1")
    manifest = load_manifest(str(videos))
    ref = {spec: tmp_path / "ref" / store_name(spec) for spec in ("effnet-lite0", tiny)}
    for spec, store in ref.items():
        extract(manifest, store, _cfg(spec, extra=opts), progress=False)
    out = tmp_path / "both"
    shutil.copytree(ref["effnet-lite0"], out / "effnet-lite0")
    for shard in sorted((out / "effnet-lite0" / "shards").glob("*.h5"))[::2]:
        shard.unlink()
    lost = len(open_store(ref["effnet-lite0"])) - len(open_store(out / "effnet-lite0"))
    a, b = extract(manifest, out, _cfg("effnet-lite0", tiny, extra=opts), progress=False)
    assert lost > 0 and a.done == lost and b.done == len(open_store(ref[tiny]))
    assert_same_store(out / "effnet-lite0", ref["effnet-lite0"])
    assert_same_store(out / store_name(tiny), ref[tiny])


def test_same_input_encoders_share_one_resize():
    effnet_like = create_encoder("effnet-lite0", device="cpu").preprocess_cfg
    from dataclasses import replace

    other_norm = replace(effnet_like, mean=(0.1, 0.2, 0.3))  # normalisation is the encoder's, not the decoder's
    other_size = replace(effnet_like, resize_short=224)
    views, index = decode_views([effnet_like, other_norm, other_size])
    assert len(views) == 2 and index == [0, 0, 1]


def test_spec_lists_in_config_and_refusals(tmp_path, tiny):
    (tmp_path / "c.yaml").write_text(f"encoder: [effnet-lite0, '{tiny}']\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.encoders == ("effnet-lite0", tiny)
    assert store_paths(tmp_path / "o", cfg.encoders) == [
        tmp_path / "o" / "effnet-lite0",
        tmp_path / "o" / store_name(tiny),
    ]
    assert store_paths(tmp_path / "o", ["effnet-lite0"]) == [tmp_path / "o"]  # one encoder: the store is -o itself
    assert store_name("openclip:ViT-B-32@laion2b_s34b_b79k#pre") == "openclip-ViT-B-32-laion2b_s34b_b79k-pre"
    with pytest.raises(ConfigError, match="named twice"):
        create_encoders(["effnet-lite0", "default"])
    with pytest.raises(ConfigError, match="would both write"):
        store_paths(tmp_path, ["timm:resnet18@/a/w.pt", "timm:resnet18@/b/w.pt"])
    with pytest.raises(ConfigError, match="encoder"):
        load_config(None, ["encoder=[effnet-lite0, 3]"])
    # one entry for one encoder or several: what it refuses is an engine it lacks, or built encoders for Ray
    with pytest.raises(ConfigError, match="engine='spark'"):
        extract(load_manifest(str(tmp_path)), tmp_path / "s", cfg, engine="spark")
    with pytest.raises(ConfigError, match="Ray engine builds its encoders"):
        extract(load_manifest(str(tmp_path)), tmp_path / "s", cfg, engine="ray", encoders=[])


def test_cli_bad_spec_among_several_is_one_line(videos, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", str(videos), "-o", str(tmp_path / "o")]
        + ["--encoder", "effnet-lite0", "--encoder", "timm:no-such-model-xyz", *SETTINGS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no-such-model-xyz" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "effnet-lite0").exists()  # refused before any store was made


def test_no_store_is_made_inside_another_through_the_cli(tmp_path, videos, capsys):
    """docs/extraction.md: several encoders write FOLDER/<name>/, one encoder writes -o itself. An -o that
    would put a store inside an existing one (several encoders at a store, any -o inside a store), or one
    encoder's store over a folder of several, is refused in one line naming the store and what to pass
    instead, before any model is built; nothing is written."""
    prov = {"encoder": "effnet-lite0", "weights_id": "w", "dim": 2, "preprocess": {}, "sampling": {}}
    one, several = tmp_path / "one", tmp_path / "several"
    create_or_open(one, prov)
    create_or_open(several / "effnet-lite0", prov)
    create_or_open(several / "openclip-ViT-B-32-openai", {**prov, "encoder": "openclip:ViT-B-32@openai"})
    listing = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    two = ["--encoder", "effnet-lite0", "--encoder", "openclip:ViT-B-32@openai"]
    cases = [
        (
            one,
            two,
            f"-o {one}: is the feature store of effnet-lite0; with several encoders",
            "--encoder effnet-lite0 alone",
        ),
        (one / "sub", two, f"-o {one / 'sub'}: lies inside the feature store {one}", "pass a path outside it"),
        (one / "sub", two[:2], f"lies inside the feature store {one}", "outside"),
        (
            several,
            two[:2],
            f"-o {several}: holds the stores of a several-encoder run",
            f"-o {several / 'effnet-lite0'}",
        ),
    ]
    for out, encoders, needle, instead in cases:
        code = main(["extract", str(videos), "-o", str(out), *encoders, *SETTINGS])
        err = capsys.readouterr().err
        assert code == 1 and needle in err and instead in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == listing
    assert store_paths(several, ["effnet-lite0", "openclip:ViT-B-32@openai"])[0] == several / "effnet-lite0"


def test_benchmark_names_the_stores_of_a_shared_run(tmp_path, videos, tiny):
    out = tmp_path / "feats"
    extract(load_manifest(str(videos)), out, _cfg("effnet-lite0", tiny), progress=False)
    (tmp_path / "b.yaml").write_text(
        f"stores: [{{dataset: d, path: {out}}}, {{dataset: e, path: {out / 'effnet-lite0'}, encoder: E}}]\n"
        "poolings: [mean]\nheads: [knn]\n"
    )
    entries = expand_stores(load_benchmark_config(tmp_path / "b.yaml").stores)
    assert [(e.dataset, Path(e.path).name, e.encoder) for e in entries] == [
        ("d", "effnet-lite0", None),
        ("d", store_name(tiny), None),
        ("e", "effnet-lite0", "E"),
    ]


def _shards(store: Path) -> list[str]:
    d = store / "shards"
    return sorted(p.name for p in d.glob("*.h5")) if d.is_dir() else []


def test_killed_mid_way_then_rerun_completes_both_stores(videos, tiny, separate, tmp_path):
    """A real ``vidprobe extract`` with two encoders, SIGKILLed once a shard is on disk, then re-run: both
    stores end equal to separate uninterrupted runs (nothing lost, nothing twice)."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "pipeline", "extract", str(videos), "-o", str(out), "-q"]
    args += ["--encoder", "effnet-lite0", "--encoder", tiny, *SETTINGS, "extract.shard_size=2"]
    args += ["extract.num_workers=1", "extract.batch_size=3"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and not _shards(out / "effnet-lite0") and not _shards(out / store_name(tiny)):
            assert time.monotonic() < deadline, "extraction hung"
            time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    part = {store: len(open_store(store)) for store in (out / "effnet-lite0", out / store_name(tiny))}
    assert killed and sum(part.values()) < 12, f"not killed mid-way: {part}"

    rerun = subprocess.run([*args, "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode in (0, 3), rerun.stderr  # 3: the corrupt file failed in this run
    done = json.loads(rerun.stdout)
    assert [s["done"] + s["skipped"] + s["failed"] for s in done] == [7, 7]
    assert [s["done"] for s in done] == [6 - n for n in part.values()]  # each store got exactly what it lacked
    assert_same_store(out / "effnet-lite0", separate["effnet-lite0"])
    assert_same_store(out / store_name(tiny), separate[tiny])


@pytest.mark.slow
def test_ray_engine_one_decode_stage_feeding_two_models_equals_the_local_stores(videos, tiny, separate, tmp_path):
    """The Ray engine with effnet-lite0 + the tiny model's joint and #pre: two actor pools after one decode
    stage; the three stores equal the separate local runs, the corrupt file recorded in each."""
    pytest.importorskip("ray")
    import ray

    from pipeline.extract.ray_engine import init_ray

    started = init_ray(num_cpus=2)
    try:
        specs = ("effnet-lite0", tiny, tiny + "#pre")
        summaries = extract(load_manifest(str(videos)), tmp_path / "r", _cfg(*specs), engine="ray", progress=False)
    finally:
        if started:
            ray.shutdown()
    assert [(s.engine, s.done, s.failed) for s in summaries] == [("ray", 6, 1)] * 3
    for spec in specs:
        assert_same_store(tmp_path / "r" / store_name(spec), separate[spec])
