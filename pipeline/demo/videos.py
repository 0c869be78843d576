"""Build the labeled demo video set for `vidprobe demo` from photos that ship inside scikit-image.

No download is possible, so a virtual camera moves over a real photo and every frame is encoded as H.264
MP4, like a user's footage. Tasks ``what`` (which photo) and ``how`` (which camera motion), each with its
own CSV manifest: docs/benchmarks.md#the-demo. Everything but the label is random; in ``how`` one draw of
a trajectory is played forwards for one class and backwards for its pair, so the *set* of frames says
nothing about direction.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError

__all__ = [
    "build_time",
    "DEMO_PHOTOS",
    "MOTIONS",
    "MOTION_FAMILIES",
    "MotionParams",
    "build_demo_videos",
    "load_photo",
    "render_motion",
    "sample_motion_params",
]

# Colour photos whose files are inside the scikit-image wheel (no pooch download), of distinct objects.
DEMO_PHOTOS: list[str] = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field"]

MOTIONS: list[str] = ["pan_left", "pan_right", "zoom_in", "zoom_out", "rotate_cw", "rotate_ccw"]

MOTION_FAMILIES: tuple[str, ...] = ("pan", "zoom", "rotate")

# motion -> (family, played backwards). The forward member of each pair defines the trajectory;
# its partner is the very same trajectory reversed in time.
_MOTION_SPEC: dict[str, tuple[str, bool]] = {
    "pan_right": ("pan", False),
    "pan_left": ("pan", True),
    "zoom_in": ("zoom", False),
    "zoom_out": ("zoom", True),
    "rotate_cw": ("rotate", False),
    "rotate_ccw": ("rotate", True),
}

# Photos are pre-scaled (antialiased) so their short side is this multiple of the clip size: the rotating
# warp, which does not antialias, then never shrinks the photo, and a full zoom-in magnifies it under 2x.
_PHOTO_SCALE = 1.6

_STAMP_NAME = "demo_stamp.json"
_STAMP_VERSION = 2  # bump when rendering changes, so old builds are redone


@dataclass(frozen=True)
class MotionParams:
    """One camera trajectory, in units relative to the photo so a draw fits any photo.

    side: window side as a fraction of the photo's short side (for zoom: the widest window).
    amount: pan: fraction of the photo width travelled; zoom: magnification factor; rotate: degrees turned.
    u, v: where the move sits within the room the photo leaves free, each in [0, 1].
    tilt: roll of the window in degrees at the level end of a rotation.
    """

    family: str
    side: float
    amount: float
    u: float
    v: float
    tilt: float = 0.0


def sample_motion_params(rng: np.random.Generator, motion_family: str) -> MotionParams:
    """Draw a trajectory for a motion family; magnitudes are large enough to be plainly visible."""
    u, v = rng.uniform(0.0, 1.0, size=2)
    if motion_family == "pan":
        return MotionParams("pan", float(rng.uniform(0.4, 0.55)), float(rng.uniform(0.45, 0.65)), float(u), float(v))
    if motion_family == "zoom":
        return MotionParams("zoom", float(rng.uniform(0.7, 0.95)), float(rng.uniform(1.6, 2.0)), float(u), float(v))
    if motion_family == "rotate":
        return MotionParams(
            "rotate",
            float(rng.uniform(0.45, 0.6)),
            float(rng.uniform(30.0, 45.0)),
            float(u),
            float(v),
            tilt=float(rng.uniform(-3.0, 3.0)),
        )
    raise ConfigError(f"unknown motion family {motion_family!r}; expected one of {', '.join(MOTION_FAMILIES)}")


def _motion_spec(motion: str) -> tuple[str, bool]:
    try:
        return _MOTION_SPEC[motion]
    except KeyError:
        raise ConfigError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}") from None


def _trajectory(width: int, height: int, params: MotionParams, num_frames: int) -> np.ndarray:
    """Forward camera states (cx, cy, window side, angle in degrees) in photo pixels, one row per frame.
    Every window, rotated or not, stays inside the photo, so no border fill can leak into a frame."""
    t = np.linspace(0.0, 1.0, num_frames)
    short = min(width, height)
    side = params.side * short
    states = np.empty((num_frames, 4))
    if params.family == "pan":  # camera moves right: content slides left
        travel = min(params.amount * width, width - side)
        states[:, 0] = side / 2 + params.u * (width - side - travel) + t * travel
        states[:, 1] = side / 2 + params.v * (height - side)
        states[:, 2] = side
        states[:, 3] = 0.0
    elif params.family == "zoom":  # window shrinks geometrically: constant perceived zoom speed
        states[:, 0] = side / 2 + params.u * (width - side)
        states[:, 1] = side / 2 + params.v * (height - side)
        states[:, 2] = side * params.amount ** (-t)
        states[:, 3] = 0.0
    elif params.family == "rotate":
        # Window angle falls, so the picture turns clockwise on screen, from level to tilted: which half
        # is level tells the direction, whereas a move centred on level would hinge on the sign of a tilt,
        # which pooled CNN features barely encode.
        angles = params.tilt - t * params.amount
        rad = np.deg2rad(angles)
        half = side / 2 * float(np.max(np.abs(np.cos(rad)) + np.abs(np.sin(rad))))
        if 2 * half > short:
            raise ConfigError(f"rotating window of side {params.side} does not fit inside the photo")
        states[:, 0] = half + params.u * (width - 2 * half)
        states[:, 1] = half + params.v * (height - 2 * half)
        states[:, 2] = side
        states[:, 3] = angles
    else:
        raise ConfigError(f"unknown motion family {params.family!r}; expected one of {', '.join(MOTION_FAMILIES)}")
    return states


def render_motion(
    photo: Image.Image | np.ndarray, motion: str, params: MotionParams, *, size: int = 224, num_frames: int = 48
) -> np.ndarray:
    """Render the clip (T, size, size, 3) uint8 of `motion` along `params` over `photo`; e.g.
    ``render_motion(p, "zoom_out", q)`` equals ``render_motion(p, "zoom_in", q)[::-1]`` exactly."""
    family, backwards = _motion_spec(motion)
    if params.family != family:
        raise ConfigError(f"motion {motion!r} needs {family!r} parameters, got {params.family!r}")
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo, dtype=np.uint8))
    image = image.convert("RGB")
    states = _trajectory(image.width, image.height, params, num_frames)
    if backwards:
        states = states[::-1]
    view = _rotated_view if family == "rotate" else _upright_view
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for i, (cx, cy, side, angle) in enumerate(states):
        frames[i] = np.asarray(view(image, cx, cy, side, angle, size))
    return frames


def _upright_view(image: Image.Image, cx: float, cy: float, side: float, angle: float, size: int) -> Image.Image:
    """Unrotated window by crop-and-resize: separable and antialiased, twice as fast as the general warp."""
    box = (
        max(cx - side / 2, 0.0),
        max(cy - side / 2, 0.0),
        min(cx + side / 2, image.width),
        min(cy + side / 2, image.height),
    )
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _rotated_view(image: Image.Image, cx: float, cy: float, side: float, angle: float, size: int) -> Image.Image:
    """Window turned by `angle` degrees, by an affine warp mapping output pixels back into the photo."""
    # photo point = centre + scale * R(angle) @ (output point - size / 2)
    scale, rad, half = side / size, math.radians(angle), size / 2
    a, b = scale * math.cos(rad), -scale * math.sin(rad)
    d, e = scale * math.sin(rad), scale * math.cos(rad)
    coeffs = (a, b, cx - (a + b) * half, d, e, cy - (d + e) * half)
    return image.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data  # lazy: skimage import is slow and only the demo needs it

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    if name not in DEMO_PHOTOS:
        raise ConfigError(f"unknown demo photo {name!r}; expected one of {', '.join(DEMO_PHOTOS)}")
    return getattr(data, name)()


@lru_cache(maxsize=32)
def load_photo(name: str, size: int) -> Image.Image:
    """A demo photo as RGB, resized so its short side is `_PHOTO_SCALE` times the clip size."""
    image = Image.fromarray(_skimage_photo(name)).convert("RGB")
    ratio = _PHOTO_SCALE * size / min(image.size)
    return image.resize((round(image.width * ratio), round(image.height * ratio)), Image.Resampling.LANCZOS)


def _jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-clip brightness/contrast and per-frame Gaussian noise: time-symmetric, so no direction cue."""
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(-15.0, 15.0)
    sigma = rng.uniform(2.0, 5.0)
    # Luma-only noise: a third of the random draws of per-channel noise, which dominated build time.
    shift = rng.standard_normal((*frames.shape[:3], 1), dtype=np.float32)
    shift *= np.float32(sigma)
    shift += np.float32(128.0 + brightness)
    out = frames.astype(np.float32)
    out -= np.float32(128.0)
    out *= np.float32(contrast)
    out += shift
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def _encode_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Write H.264/yuv420p MP4 via a temp file, so an interrupted build never leaves a truncated video."""
    tmp = path.with_name(path.name + ".partial")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        # mbtree=0: x264's macroblock-tree rate control encodes the same frames differently run to run
        options = {"crf": "23", "preset": "veryfast", "x264-params": "mbtree=0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))  # flush delayed frames
    os.replace(tmp, path)


def _split_names(n: int, rng: np.random.Generator) -> list[str]:
    """Roughly 60/20/20 train/val/test for one label, with every split present once n >= 3."""
    n_val = max(1, round(0.2 * n)) if n >= 3 else 0
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    names = ["val"] * n_val + ["test"] * n_test
    names += ["train"] * (n - len(names))
    return [names[i] for i in rng.permutation(n)]


class _Video(NamedTuple):
    rel: str  # path relative to the CSV folder
    label: str
    split: str
    task: str
    seed_index: int  # task-local; seeds this video's own generator (not `index`: that is tuple.index)


_TASKS: dict[str, list[str]] = {"what": DEMO_PHOTOS, "how": MOTIONS}


# direction is subtler than identity, and the attn/gru heads need clips for a fair comparison
DEFAULT_PER_CLASS: dict[str, int] = {"what": 12, "how": 60}


def _per_task(per_class: int | Mapping[str, int] | None) -> dict[str, int]:
    if per_class is None:
        counts = dict(DEFAULT_PER_CLASS)
    elif isinstance(per_class, Mapping):
        counts = {**DEFAULT_PER_CLASS, **per_class}
    else:
        counts = {task: int(per_class) for task in _TASKS}
    for task, n in counts.items():
        if task not in _TASKS:
            raise ConfigError(f"per_class: unknown task {task!r}; tasks are {', '.join(_TASKS)}")
        if n < 1:
            raise ConfigError(f"per_class must be at least 1, got {n} for task {task!r}")
    return counts


def _plan(per_class: dict[str, int], seed: int) -> dict[str, list[_Video]]:
    """Every video of every task, with its split, fixed by the seed."""
    plan: dict[str, list[_Video]] = {}
    for task_id, (task, labels) in enumerate(_TASKS.items()):
        plan[task] = []
        n = per_class[task]
        for label_id, label in enumerate(labels):
            splits = _split_names(n, np.random.default_rng([seed, task_id, label_id]))
            for i, split in enumerate(splits):
                rel = f"videos/{task}/{label}/{label}_{i:03d}.mp4"
                plan[task].append(_Video(rel, label, split, task, label_id * n + i))
    return plan


def _render_and_write(args: tuple[_Video, int, int, int, int, str]) -> None:
    video, seed, size, num_frames, fps, out = args
    path = Path(out) / video.rel
    path.parent.mkdir(parents=True, exist_ok=True)
    _encode_mp4(_render_video(video, seed, size, num_frames), path, fps)


def _render_video(video: _Video, seed: int, size: int, num_frames: int) -> np.ndarray:
    """Frames of one demo video; its own generator makes every video reproducible on its own."""
    rng = np.random.default_rng([seed, list(_TASKS).index(video.task), video.seed_index, 1])
    if video.task == "what":
        photo, motion = video.label, MOTIONS[rng.integers(len(MOTIONS))]
    else:
        photo, motion = DEMO_PHOTOS[rng.integers(len(DEMO_PHOTOS))], video.label
    params = sample_motion_params(rng, _motion_spec(motion)[0])
    frames = render_motion(load_photo(photo, size), motion, params, size=size, num_frames=num_frames)
    return _jitter(frames, rng)


def _write_csv(path: Path, videos: list[_Video]) -> None:
    lines = ["path,label,split"] + [f"{v.rel},{v.label},{v.split}" for v in videos]
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def build_demo_videos(
    out_dir: str | Path,
    *,
    per_class: int | Mapping[str, int] | None = None,
    seed: int = 0,
    size: int = 224,
    num_frames: int = 48,
    fps: int = 24,
    progress: bool = True,
) -> dict[str, Path]:
    """Write the demo videos and `what.csv` / `how.csv` under `out_dir`; return {task: csv path}. A stamp
    of the parameters is written last; when it matches and every file exists the call returns at once."""
    counts = _per_task(per_class)
    if size < 16 or size % 2:
        raise ConfigError(f"size must be an even number >= 16 (H.264 4:2:0 needs even sides), got {size}")
    if num_frames < 2:
        raise ConfigError(f"num_frames must be at least 2 for a motion to exist, got {num_frames}")
    if fps < 1:
        raise ConfigError(f"fps must be positive, got {fps}")

    out = Path(out_dir)
    csvs = {task: out / f"{task}.csv" for task in _TASKS}
    stamp_path = out / _STAMP_NAME
    stamp = {
        "version": _STAMP_VERSION,
        "per_class": counts,
        "seed": seed,
        "size": size,
        "num_frames": num_frames,
        "fps": fps,
    }
    plan = _plan(counts, seed)

    if _is_built(stamp_path, stamp, csvs, out, plan):
        return csvs

    out.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)  # a half-finished rebuild must not look complete
    videos = [v for task_videos in plan.values() for v in task_videos]
    jobs = [(v, seed, size, num_frames, fps, str(out)) for v in videos]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    bar = tqdm(total=len(jobs), desc="demo videos", unit="video", disable=not progress)
    if workers == 1:
        for job in jobs:
            _render_and_write(job)
            bar.update(1)
    else:  # rendering + x264 is CPU-bound per video: one process per core
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_and_write, jobs, chunksize=4):
                bar.update(1)
    bar.close()
    for task, task_videos in plan.items():
        _write_csv(csvs[task], task_videos)
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return csvs


def build_time(out_dir: str | Path) -> int | None:
    """When the demo set under ``out_dir`` was last (re)built (its stamp's mtime, ns; None: never). A caller
    that compares it before and after ``build_demo_videos`` learns whether the videos were rendered again,
    so features extracted from the previous videos (same paths, other pixels) are not reused."""
    try:
        return (Path(out_dir) / _STAMP_NAME).stat().st_mtime_ns
    except OSError:
        return None


def _is_built(stamp_path: Path, stamp: dict, csvs: dict[str, Path], out: Path, plan: dict[str, list[_Video]]) -> bool:
    """True when a finished build with the same parameters is on disk."""
    try:
        if json.loads(stamp_path.read_text(encoding="utf-8")) != stamp:
            return False
    except (OSError, ValueError):
        return False
    videos = (out / v.rel for task_videos in plan.values() for v in task_videos)
    return all(p.is_file() for p in csvs.values()) and all(p.is_file() for p in videos)
