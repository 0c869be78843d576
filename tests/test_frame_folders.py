"""Frame folders (``root/<label>/<video>/<frames>.jpg|png``) as a source: the frames of real encoded videos
dumped with PyAV, extracted, and compared with the extraction of the videos themselves."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from media import pattern_frames, write_video

from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.extract.entry import extract
from pipeline.store import open_store

FPS = 12
OPTS = ("sampling.num_frames=4", "extract.num_workers=0", f"sampling.frame_rate={FPS}")


def dump_frames(video: Path, folder: Path, ext: str) -> int:
    """Every frame of ``video`` as ``folder/img_00001.<ext>`` (PNG: the exact RGB decoded; JPEG: FFmpeg's mjpeg at
    its best quality, qscale 1), numbered from 1 without padding past 5 digits."""
    folder.mkdir(parents=True)
    n = 0
    with av.open(str(video)) as src:
        for frame in src.decode(video=0):
            n += 1
            codec, pix = ("png", "rgb24") if ext == "png" else ("mjpeg", "yuvj420p")
            with av.open(str(folder / f"img_{n:05d}.{ext}"), "w", format="image2") as out:
                stream = out.add_stream(codec, options={"qmin": "1", "qmax": "1"} if codec == "mjpeg" else {})
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, pix
                img = frame.reformat(format=pix)
                img.pts = None
                for packet in stream.encode(img):
                    out.mux(packet)
                for packet in stream.encode(None):
                    out.mux(packet)
    return n


def grey_frames(n: int, kind: int, seed: int) -> np.ndarray:
    """The test pattern in grey levels. Why not its colours: a video holds chroma at half resolution
    (4:2:0), and a frame dump's RGB upsamples it by FFmpeg's unscaled converter while the video path
    interpolates it as it resizes; on the pattern's 6-pixel saturated red/cyan stripes that alone moves
    pixels by up to ~130 levels (mean ~13) -- a property of 4:2:0 at sharp colour edges, not of either
    reader. In grey levels both readers resize the same luma and differ by rounding (mean ~1 level)."""
    frames = pattern_frames(n, kind=kind, seed=seed)
    return np.repeat(frames.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The same 4 videos as files, as PNG frame folders and as JPEG frame folders."""
    base = tmp_path_factory.mktemp("frames")
    out = {k: base / k for k in ("videos", "png", "jpg")}
    for kind, label in enumerate(["stripes_h", "stripes_v"]):
        for j in range(2):
            video = write_video(out["videos"] / label / f"clip{j}.mp4", grey_frames(30, kind, j), fps=FPS)
            for ext in ("png", "jpg"):
                assert dump_frames(video, out[ext] / label / f"clip{j}", ext) == 30
    return out


def _run(source: Path, store: Path, effnet, *opts: str):
    (summary,) = extract(
        load_manifest(source), store, load_config(None, [*OPTS, *opts]), encoders=[effnet], progress=False
    )
    return summary


def _by_video(store: Path) -> dict[tuple, tuple[np.ndarray, np.ndarray, str]]:
    """(video without its suffix, start, end) -> (frame embeddings, timestamps, label)."""
    s = open_store(store)
    labels = s.labels
    return {
        (video.removesuffix(".mp4"), start, end): (s.frames(i), s.timestamps(i), labels[i])
        for i, (video, start, end) in enumerate(s.keys())
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(
    "ext, least",
    [
        # PNG keeps the decoded RGB exactly; the only difference left is where swscale converts to RGB (the
        # video path converts YUV and resizes in one pass, the folder path resizes the RGB image): rounding.
        ("png", 0.999),
        # JPEG re-quantises every 8x8 block: at FFmpeg's best quality (qscale 1) the pattern's per-pixel
        # noise moves by ~1 grey level on average (at most ~7), and a 128x96 frame upscaled to 224 px is
        # the hard case for an ImageNet encoder; 0.98 still tells the two classes apart (asserted below).
        ("jpg", 0.98),
    ],
)
def test_frame_folders_embed_like_the_videos_they_were_dumped_from(sources, tmp_path, effnet, ext, least):
    videos = _run(sources["videos"], tmp_path / "videos", effnet)
    frames = _run(sources[ext], tmp_path / ext, effnet)
    assert videos.done == frames.done == 4 and frames.failed == 0
    want, got = _by_video(tmp_path / "videos"), _by_video(tmp_path / ext)
    assert (
        sorted(got)
        == sorted(want)
        == [(f"{lab}/clip{j}", -1.0, -1.0) for lab in ("stripes_h", "stripes_v") for j in (0, 1)]
    )
    for key, (emb, stamps, label) in got.items():
        np.testing.assert_allclose(stamps, want[key][1], atol=1e-6)  # frame i at i / frame_rate: the video's times
        assert label == want[key][2] == key[0].split("/")[0]
        cos = _cosines(emb.astype(np.float64), want[key][0].astype(np.float64))
        assert cos.min() >= least, (key, cos)
        other = [v[0] for k, v in want.items() if k[0].split("/")[0] != key[0].split("/")[0]][0]
        assert (
            _cosines(emb.astype(np.float64), other.astype(np.float64)).max() < least
        )  # the tolerance tells videos apart


@pytest.mark.parametrize(
    "opts",
    [
        ("sampling.strategy=fps", "sampling.fps=3"),
        ("sampling.strategy=multiclip", "sampling.num_clips=2"),
        ("sampling.strategy=sliding", "sampling.clip_length=1.0", "sampling.stride=0.5"),
        ("sampling.strategy=every_n", "sampling.every_n=7"),
    ],
)
def test_every_sampling_strategy_plans_a_frame_folder_like_its_video(sources, tmp_path, effnet, opts):
    _run(sources["videos"], tmp_path / "videos", effnet, *opts)
    _run(sources["png"], tmp_path / "png", effnet, *opts)
    want, got = _by_video(tmp_path / "videos"), _by_video(tmp_path / "png")
    assert sorted(got) == sorted(want) and len(got) >= 4
    for key, (emb, stamps, _) in got.items():
        np.testing.assert_allclose(stamps, want[key][1], atol=1e-6)
        assert emb.shape == want[key][0].shape


def test_a_frame_folder_is_skipped_when_stored_and_extracted_again_when_a_frame_changes(sources, tmp_path, effnet):
    root = tmp_path / "png"
    for folder in sorted(sources["png"].glob("*/*")):
        (root / folder.parent.name / folder.name).mkdir(parents=True)
        for f in folder.iterdir():
            os.link(f, root / folder.parent.name / folder.name / f.name)
    store = tmp_path / "store"
    assert _run(root, store, effnet).done == 4
    again = _run(root, store, effnet)
    assert again.done == 0 and again.skipped == 4
    frame = root / "stripes_v" / "clip1" / "img_00003.png"
    data = frame.read_bytes()
    frame.unlink()
    frame.write_bytes(data)  # rewritten: another file (its time), the same frame
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 5_000_000_000))
    third = _run(root, store, effnet)
    assert third.changed == ["stripes_v/clip1"] and third.done == 1


def test_a_frame_folder_with_an_unreadable_frame_is_a_failure_naming_it_and_the_rest_are_stored(
    sources, tmp_path, effnet
):
    root = tmp_path / "png"
    for folder in sorted(sources["png"].glob("*/*")):
        target = root / folder.parent.name / folder.name
        target.mkdir(parents=True)
        for f in folder.iterdir():
            os.link(f, target / f.name)
    bad = root / "stripes_h" / "clip0"
    for f in bad.iterdir():
        f.unlink()
        f.write_bytes(b"not a png")
    summary = _run(root, tmp_path / "store", effnet)
    assert summary.done == 3 and summary.failed == 1
    (failure,) = open_store(tmp_path / "store").failures()
    assert failure["path"] == "stripes_h/clip0" and "img_00001.png" in failure["error"]


def test_a_folder_source_finds_frame_folders_and_a_manifest_may_name_them(sources, tmp_path, effnet):
    root = tmp_path / "mixed"
    for folder in sorted(sources["jpg"].glob("*/*")):
        target = root / folder.parent.name / folder.name
        target.mkdir(parents=True)
        for f in folder.iterdir():
            os.link(f, target / f.name)
    (root / "stripes_h" / "cover.jpg").write_bytes(b"x")  # an image beside the videos of a class: not a video
    (root / "stripes_v" / "nested" / "deeper").mkdir(parents=True)  # a folder with a folder: not a leaf
    (root / "stripes_v" / "nested" / "a.png").write_bytes(b"x")
    m = load_manifest(root)
    assert [(it.path, it.label) for it in m.items] == [
        ("stripes_h/clip0", "stripes_h"),
        ("stripes_h/clip1", "stripes_h"),
        ("stripes_v/clip0", "stripes_v"),
        ("stripes_v/clip1", "stripes_v"),
    ]
    assert sorted(m.ignored) == ["stripes_h/cover.jpg", "stripes_v/nested/a.png"]
    (alone,) = load_manifest(root / "stripes_v" / "clip1").items  # a frame folder named by itself
    assert (alone.path, alone.label, alone.abspath) == ("clip1", "", root / "stripes_v" / "clip1")

    csv = root / "list.csv"
    csv.write_text("path,label,split\nstripes_h/clip1,h,train\nstripes_v/clip0,v,test\n")
    store = tmp_path / "store"
    (summary,) = extract(load_manifest(csv), store, load_config(None, list(OPTS)), encoders=[effnet], progress=False)
    assert summary.done == 2 and summary.failed == 0
    assert sorted(open_store(store).keys()) == [("stripes_h/clip1", -1.0, -1.0), ("stripes_v/clip0", -1.0, -1.0)]


@pytest.mark.slow
def test_the_ray_engine_extracts_frame_folders_like_the_local_engine(sources, tmp_path, effnet):
    pytest.importorskip("ray")
    import ray

    from pipeline.extract.ray_engine import init_ray

    local = _run(sources["png"], tmp_path / "local", effnet)
    assert init_ray(num_cpus=2)
    try:
        cfg = load_config(None, list(OPTS))
        (summary,) = extract(load_manifest(sources["png"]), tmp_path / "ray", cfg, engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert (summary.engine, summary.done, local.done) == ("ray", 4, 4)
    want, got = _by_video(tmp_path / "local"), _by_video(tmp_path / "ray")
    assert sorted(got) == sorted(want)
    for key, (emb, stamps, label) in got.items():
        np.testing.assert_array_equal(stamps, want[key][1])  # frame_rate reaches the Ray workers
        np.testing.assert_allclose(emb, want[key][0], rtol=1e-4, atol=1e-4)
        assert label == want[key][2]
