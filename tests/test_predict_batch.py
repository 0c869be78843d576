"""``vidprobe predict`` at scale: extract's sources, failure rows, a resumable CSV/JSONL file, per-clip rows."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import Config
from pipeline.data.manifest import load_manifest
from pipeline.extract.entry import extract
from pipeline.probe.predictions import PredictionFile
from pipeline.probe.train import train_head

CLASSES = ("stripes_h", "stripes_v")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head(labeled_folder, effnet, tmp_path_factory) -> Path:
    """A logreg head on a real store of the labeled videos, two clip windows of two frames each per video."""
    work = tmp_path_factory.mktemp("predict_batch")
    cfg = Config()
    cfg.sampling.strategy, cfg.sampling.num_clips, cfg.sampling.num_frames = "multiclip", 2, 2
    extract(load_manifest(labeled_folder), work / "store", cfg, encoders=[effnet], progress=False)
    train_head(work / "store", work / "h.npz")
    return work / "h.npz"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """30 files: 27 tiny videos in two class folders, a text file named .mp4, a truncated mp4 and a PNG."""
    root = tmp_path_factory.mktemp("to_label")
    for i in range(27):
        kind = i % 2
        write_video(root / CLASSES[kind] / f"v{i:02d}.mp4", pattern_frames(6, 32, 32, kind=kind, seed=i), fps=6)
    (root / "stripes_h" / "text.mp4").write_text("not a video, only named like one\n" * 10)
    whole = (root / "stripes_h" / "v00.mp4").read_bytes()
    (root / "stripes_v" / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    _png(root / "still.png")
    return root


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(pattern_frames(1, 32, 32)[0]).save(path, format="PNG")


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_to_csv_records_failures_and_resumes(head, folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["predict", str(head), str(folder), "-o", str(out), "-q", "-k", "2"]) == 3
    rows = _csv(out)
    assert len(rows) == 30 and len({r["path"] for r in rows}) == 30
    failed = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(failed) == {"text.mp4", "cut.mp4", "still.png"}
    assert "cannot open as a video" in failed["text.mp4"] and "cannot open as a video" in failed["cut.mp4"]
    assert "not a video by its extension (.png)" in failed["still.png"]
    good = [r for r in rows if not r["error"]]
    assert all(r["windows"] == "2" and r["label_1"] in CLASSES and r["label_2"] in CLASSES for r in good)
    assert all(abs(float(r["prob_1"]) + float(r["prob_2"]) - 1) < 1e-6 for r in good)
    right = sum(r["label_1"] == Path(r["path"]).parent.name for r in good)
    assert right >= 24, right  # stripes are easy: the rows belong to their videos
    err = capsys.readouterr()
    assert "27 predicted, 3 failed, 0 skipped" in err.out and err.err.count("vidprobe predict: error:") == 3

    before, started = out.read_bytes(), time.perf_counter()
    assert main(["predict", str(head), str(folder), "-o", str(out), "-q", "-k", "2", "--json"]) == 0
    seconds = time.perf_counter() - started
    assert out.read_bytes() == before
    run = json.loads(capsys.readouterr().out)
    assert (run["predicted"], run["failed"], run["skipped"]) == (0, 0, 30)
    assert seconds < 5, seconds  # nothing decoded, no model built


def test_a_killed_run_resumes_where_it_stopped(head, folder, tmp_path, capsys):
    """A torn last row (a kill mid-write) is cut off and that video predicted again; the rest are kept."""
    out = tmp_path / "preds.jsonl"
    videos = sorted(str(p) for p in folder.rglob("v0*.mp4"))
    assert main(["predict", str(head), *videos[:4], "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]) + lines[3][:20])  # killed while writing the fourth row
    assert main(["predict", str(head), *videos, "-o", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows[:3]] == [json.loads(x)["path"] for x in lines[:3]]
    assert sorted(r["path"] for r in rows) == videos and all("error" not in r for r in rows)
    assert f"{len(videos) - 3} predicted, 0 failed, 3 skipped" in capsys.readouterr().out


def test_an_output_inside_the_source_folder_is_no_input(head, folder, tmp_path, capsys):
    inside = tmp_path / "videos"
    for name in ("v00.mp4", "v02.mp4"):
        inside.mkdir(exist_ok=True)
        (inside / name).write_bytes((folder / "stripes_h" / name).read_bytes())
    out = inside / "preds.csv"
    for _ in range(2):
        assert main(["predict", str(head), str(inside), "-o", str(out), "-q"]) == 0
    assert sorted(Path(r["path"]).name for r in _csv(out)) == ["v00.mp4", "v02.mp4"]
    assert "0 predicted, 0 failed, 2 skipped" in capsys.readouterr().out


def test_quoted_glob_and_jsonl_output(head, folder, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(head), str(folder / "stripes_v" / "v*.mp4"), "-o", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == [f"v{i:02d}.mp4" for i in range(1, 27, 2)]
    assert all(r["windows"] == 2 and len(r["top"]) == 2 and "error" not in r for r in rows)


def test_manifest_source_per_clip_rows(head, folder, tmp_path, capsys):
    manifest = tmp_path / "todo.csv"
    manifest.write_text(f"path\n{folder}/stripes_h/v00.mp4\n{folder}/stripes_v/v01.mp4\n{folder}/gone.mp4\n")
    out = tmp_path / "clips.csv"
    code = main(["predict", str(head), str(manifest), "--root", str(folder), "-o", str(out), "-q", "--per-clip"])
    assert code == 3
    rows = _csv(out)
    clips = [r for r in rows if not r["error"]]
    names = [(Path(r["path"]).name, r["clip"]) for r in clips]  # a video's rows together, in window order
    assert sorted(names) == names or names[2:] + names[:2] == sorted(names)
    assert sorted(names) == [("v00.mp4", "0"), ("v00.mp4", "1"), ("v01.mp4", "0"), ("v01.mp4", "1")]
    assert all(float(r["start"]) < float(r["end"]) and r["windows"] == "2" for r in clips)
    assert {r["start"] for r in clips if r["path"].endswith("v00.mp4")} == {"0.0", "0.5"}
    (gone,) = [r for r in rows if r["error"]]
    assert gone["path"].endswith("gone.mp4") and "not found" in gone["error"]
    capsys.readouterr()
    assert main(["predict", str(head), str(manifest), "--root", str(folder), "--per-clip", "--json", "-q"]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert [r.get("clip") for r in printed] == [0, 1, 0, 1, None]


def test_a_still_image_named_like_a_video_is_no_prediction(head, folder, tmp_path, capsys):
    disguised = tmp_path / "photo.mp4"
    _png(disguised)
    assert main(["predict", str(head), str(disguised), "--json", "-q"]) == 3
    (row,) = json.loads(capsys.readouterr().out)
    assert "top" not in row and "a still image (png), not a video" in row["error"]


def test_an_output_of_another_kind_is_refused_untouched(head, folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    out.write_text("path,label\nx.mp4,a\n")
    assert main(["predict", str(head), str(folder / "stripes_h" / "v00.mp4"), "-o", str(out), "-q"]) == 2
    assert out.read_text() == "path,label\nx.mp4,a\n" and "--top-k" in capsys.readouterr().err
    assert main(["predict", str(head), str(folder), "-o", str(tmp_path / "preds.txt")]) == 2


def _keys(path: Path, whole: bool = False) -> list[tuple[str, float | None, float | None]]:
    """Each row's (path, start, end); ``whole``: of the lines written in full so far (none if no file yet)."""
    data = path.read_bytes() if path.exists() else b""
    lines = data[: data.rfind(b"\n") + 1] if whole else data
    return [(r["path"], r.get("start"), r.get("end")) for r in map(json.loads, lines.splitlines())]


def test_per_clip_output_resumes_by_window_after_a_kill(head, folder, tmp_path, capsys):
    """``--per-clip -o`` is keyed by clip: a manifest naming two windows of one file, the run SIGKILLed once the
    first window's rows are on disk, then re-run (and run again): every clip window in the file exactly once."""
    v00 = folder / "stripes_h" / "v00.mp4"
    others = sorted(p for p in folder.rglob("v*.mp4") if p != v00)[:12]
    manifest = tmp_path / "todo.csv"
    manifest.write_text("\n".join(["path,start,end", f"{v00},0,0.5", *(f"{p},," for p in others), f"{v00},0.5,1"]))
    out = tmp_path / "clips.jsonl"
    args = ["predict", str(head), str(manifest), "--root", str(folder), "-o", str(out), "-q", "--per-clip"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and sum(k[0] == str(v00) for k in _keys(out, whole=True)) < 2:
            if time.monotonic() > deadline:
                pytest.fail(f"no rows of {v00.name}'s first window in {out} within 120 s: the run is stuck")
            time.sleep(0.005)
    finally:
        proc.kill()  # SIGKILL: no cleanup
        proc.wait(timeout=30)
    if proc.returncode != -signal.SIGKILL:  # it finished first: cut the file back to what the kill would leave
        assert proc.returncode == 0, f"the run failed (exit {proc.returncode})"
        lines = out.read_bytes().splitlines(keepends=True)
        last = [i for i, line in enumerate(lines) if json.loads(line)["path"] == str(v00)][1]
        torn = lines[last + 1][:20] if last + 1 < len(lines) else b""  # a kill mid-write leaves half a line
        out.write_bytes(b"".join(lines[: last + 1]) + torn)
    before = out.read_bytes()
    held = [k for k in _keys(out, whole=True) if k[0] == str(v00)]
    assert held[:2] == [(str(v00), 0.0, 0.25), (str(v00), 0.25, 0.5)]

    assert main(args) == 0
    keys = _keys(out)
    assert out.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # what the killed run wrote is kept
    assert len(keys) == len(set(keys)) == 2 * 14  # two clip windows per manifest row, each once
    assert sorted(k[1:] for k in keys if k[0] == str(v00)) == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    capsys.readouterr()

    whole = out.read_bytes()
    assert main([*args, "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert (run["predicted"], run["failed"], run["skipped"]) == (0, 0, 14) and out.read_bytes() == whole


def test_a_clip_that_overlapping_rows_share_is_written_once(tmp_path):
    """Per clip, ``PredictionFile`` holds each clip window once (manifest rows of one file that overlap share
    windows under a sliding sampling) and numbers each video's rows as the group it writes."""
    out = tmp_path / "clips.csv"

    def row(clip: int, start: float, end: float, windows: int) -> dict:
        return {"path": "a.mp4", "clip": clip, "start": start, "end": end, "windows": windows, "top": []}

    with PredictionFile(out, k=1, per_clip=True) as f:
        f.write([row(0, 0.0, 2.0, 2), row(1, 2.0, 4.0, 2)])  # the row (0, 4)
        f.write([row(0, 2.0, 4.0, 2), row(1, 4.0, 6.0, 2)])  # the row (2, 6): (2, 4) is there already
        f.write([row(0, 2.0, 4.0, 1)])  # the row (2, 4): nothing new
    cells = [(r["clip"], r["start"], r["end"], r["windows"]) for r in _csv(out)]
    assert cells == [("0", "0.0", "2.0", "2"), ("1", "2.0", "4.0", "2"), ("0", "4.0", "6.0", "1")]
    with PredictionFile(out, k=1, per_clip=True) as f:  # reopened: each window held, the last group whole
        assert f.holds(("a.mp4", 4.0, 6.0)) and not f.holds(("a.mp4", None, None))
        assert f.windows("a.mp4", 0.0, 6.0) == {(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)}
        assert f.windows("a.mp4", 1.0, 6.0) == {(2.0, 4.0), (4.0, 6.0)} and f.windows("b.mp4", None, None) == set()
    assert [(r["clip"], r["start"]) for r in _csv(out)] == [("0", "0.0"), ("1", "2.0"), ("0", "4.0")]
