"""The demo set must be real, decodable H.264 with sound manifests, and its motion pairs exact time-reversals."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from skimage.registration import phase_cross_correlation
from skimage.transform import rotate

from pipeline.demo.videos import (
    DEMO_PHOTOS,
    MOTIONS,
    MotionParams,
    build_demo_videos,
    build_time,
    load_photo,
    render_motion,
    sample_motion_params,
)
from pipeline.errors import ConfigError

SIZE, FRAMES, PER_CLASS = 96, 16, 3  # 3 per class is the fewest that gives every label all three splits


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_videos(out, per_class=PER_CLASS, size=SIZE, num_frames=FRAMES, fps=12, progress=False)


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_manifests_list_decodable_h264_videos(demo: tuple[Path, dict[str, Path]]) -> None:
    out, csvs = demo
    assert set(csvs) == {"what", "how"}
    for task, labels in (("what", DEMO_PHOTOS), ("how", MOTIONS)):
        rows = _rows(csvs[task])
        assert csvs[task].parent == out and list(rows[0]) == ["path", "label", "split"]
        assert len(rows) == PER_CLASS * len(labels)
        splits: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            splits[row["label"]].add(row["split"])
            with av.open(str(csvs[task].parent / row["path"])) as container:
                stream = container.streams.video[0]
                assert stream.codec_context.name == "h264"
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            assert len(frames) == FRAMES
            assert all(f.shape == (SIZE, SIZE, 3) for f in frames)
        assert set(splits) == set(labels)
        assert all(s == {"train", "val", "test"} for s in splits.values())


def test_second_call_is_a_no_op(demo: tuple[Path, dict[str, Path]]) -> None:
    out, csvs = demo
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    built = build_time(out)
    again = build_demo_videos(out, per_class=PER_CLASS, size=SIZE, num_frames=FRAMES, fps=12, progress=False)
    assert again == csvs and build_time(out) == built is not None  # nothing rendered: the features stay valid
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_a_seed_gives_the_same_videos_every_build(demo: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    out, _ = demo
    again = build_demo_videos(tmp_path, per_class=PER_CLASS, size=SIZE, num_frames=FRAMES, fps=12, progress=False)
    for row in _rows(again["how"]) + _rows(again["what"]):
        assert np.array_equal(_decoded(tmp_path / row["path"]), _decoded(out / row["path"])), row["path"]


def test_changed_parameters_rebuild(tmp_path: Path) -> None:
    assert build_time(tmp_path) is None
    build_demo_videos(tmp_path, per_class=1, size=32, num_frames=4, fps=12, progress=False)
    first = build_time(tmp_path)
    build_demo_videos(tmp_path, per_class=1, size=32, num_frames=6, fps=12, progress=False)
    assert build_time(tmp_path) != first  # rendered again: callers drop the old videos' features
    assert json.loads((tmp_path / "demo_stamp.json").read_text())["num_frames"] == 6
    with av.open(str(tmp_path / _rows(tmp_path / "how.csv")[0]["path"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_bad_size_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="even"):
        build_demo_videos(tmp_path, size=95, progress=False)


@pytest.mark.parametrize(
    "forward,backward", [("pan_right", "pan_left"), ("zoom_in", "zoom_out"), ("rotate_cw", "rotate_ccw")]
)
def test_direction_pairs_are_exact_time_reversals(forward: str, backward: str) -> None:
    photo = load_photo("chelsea", SIZE)
    params = sample_motion_params(np.random.default_rng(7), forward.split("_")[0])
    clip = render_motion(photo, forward, params, size=SIZE, num_frames=FRAMES)
    assert clip.shape == (FRAMES, SIZE, SIZE, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(render_motion(photo, backward, params, size=SIZE, num_frames=FRAMES), clip[::-1])


def test_motion_family_must_match_params() -> None:
    with pytest.raises(ConfigError, match="zoom"):
        render_motion(load_photo("coffee", SIZE), "zoom_in", sample_motion_params(np.random.default_rng(0), "pan"))


def test_pan_right_is_visible_and_moves_content_left() -> None:
    clip = render_motion(
        load_photo("astronaut", SIZE),
        "pan_right",
        sample_motion_params(np.random.default_rng(1), "pan"),
        size=SIZE,
        num_frames=FRAMES,
    )
    gray = clip.astype(np.float64).mean(axis=-1)
    assert np.abs(gray[0] - gray[-1]).mean() > 20.0  # far beyond noise/compression levels
    (dy, dx), *_ = phase_cross_correlation(gray[0], gray[1])
    assert dx > 0 and abs(dy) < 1  # frame 1 must be shifted right to match frame 0: content slid left


def test_rotate_cw_turns_the_picture_clockwise() -> None:
    params = sample_motion_params(np.random.default_rng(2), "rotate")
    clip = render_motion(load_photo("astronaut", SIZE), "rotate_cw", params, size=SIZE, num_frames=FRAMES)
    first, second = (clip[i].astype(np.float64).mean(axis=-1) / 255 for i in (0, 1))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (0.35 * SIZE) ** 2  # ignore corners rotated in/out
    step = params.amount / (FRAMES - 1)
    err = {sign: np.abs(rotate(first, sign * step, order=3) - second)[disc].mean() for sign in (1, -1)}
    assert err[-1] < err[1] / 2  # skimage's positive angle is counter-clockwise


@pytest.mark.parametrize("family", ["pan", "zoom", "rotate"])
def test_windows_stay_inside_the_photo(family: str) -> None:
    # Extreme draws on a flat grey photo: any pixel from outside the photo would show as black.
    photo = np.full((120, 200, 3), 200, dtype=np.uint8)
    extremes = {"pan": (0.55, 0.65), "zoom": (0.95, 2.0), "rotate": (0.6, 45.0)}
    side, amount = extremes[family]
    for u in (0.0, 1.0):
        for tilt in (-3.0, 3.0):
            params = MotionParams(family, side, amount, u, 1.0 - u, tilt if family == "rotate" else 0.0)
            for motion in [m for m in MOTIONS if m.startswith(family)]:
                assert render_motion(photo, motion, params, size=32, num_frames=5).min() >= 195
