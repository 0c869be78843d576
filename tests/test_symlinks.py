"""Dataset layouts as people have them: a folder of class folders holding links to videos elsewhere (the usual
way to label a set without copying it) is extracted through its links, while a manifest's rows still stay
inside its root and the refusal says how to widen it.

Real PyAV-encoded videos, the real offline encoder, real stores, the CLI run in-process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.store import open_store

OPTS = ("-q", "sampling.num_frames=2")


def _video(path: Path, kind: int, seed: int) -> Path:
    return write_video(path, pattern_frames(12, 48, 64, kind=kind, seed=seed), fps=12)


def _farm(tmp_path: Path) -> tuple[Path, Path]:
    """(farm, pool): ``farm/<label>/`` holds links into ``pool/`` (absolute and relative), and ``farm/bird``
    is itself a link to a class folder in the pool."""
    pool, farm = tmp_path / "pool", tmp_path / "farm"
    for j in range(3):
        _video(pool / f"v{j}.mp4", kind=j % 2, seed=j)
    _video(pool / "birds" / "v3.mp4", kind=2, seed=3)
    (farm / "cat").mkdir(parents=True)
    (farm / "dog").mkdir()
    (farm / "cat" / "a.mp4").symlink_to(pool / "v0.mp4")
    (farm / "cat" / "b.mp4").symlink_to(pool / "v1.mp4")
    (farm / "dog" / "c.mp4").symlink_to(Path("..") / ".." / "pool" / "v2.mp4")
    (farm / "bird").symlink_to(pool / "birds", target_is_directory=True)
    return farm, pool


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_symlink_farm_extracts_fully_and_verifies(tmp_path, capsys, workers):
    farm, pool = _farm(tmp_path)
    store = tmp_path / "store"
    assert main(["extract", str(farm), "-o", str(store), *OPTS, f"extract.num_workers={workers}"]) == 0
    assert main(["verify", str(store)]) == 0
    s = open_store(store)
    # the clip key is the path as the user laid it out, not the link's target
    assert sorted(zip(s.videos, s.labels)) == [
        ("bird/v3.mp4", "bird"),
        ("cat/a.mp4", "cat"),
        ("cat/b.mp4", "cat"),
        ("dog/c.mp4", "dog"),
    ]
    assert s.failures() == []
    # the fingerprint is the target's (stat follows the link), not the link's own
    sizes = dict(zip(s.videos, s.index().source[:, 0].tolist()))
    assert sizes["cat/a.mp4"] == (pool / "v0.mp4").stat().st_size != (farm / "cat" / "a.mp4").lstat().st_size
    # a re-run finds everything stored: the links' targets are the same files
    capsys.readouterr()
    assert main(["extract", str(farm), "-o", str(store), *OPTS, "--json", "extract.num_workers=0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 4, 0)


def test_a_manifest_row_escaping_its_root_is_a_recorded_failure_naming_root(tmp_path, capsys):
    farm, pool = _farm(tmp_path)
    manifest = farm / "m.csv"
    rows = ["../pool/v0.mp4", str(pool / "v1.mp4"), "cat/a.mp4"]  # up and out, absolute, a link out of the root
    manifest.write_text("path,label\n" + "".join(f"{r},x\n" for r in rows))
    store = tmp_path / "store"
    assert main(["extract", str(manifest), "-o", str(store), *OPTS, "extract.num_workers=0"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failures = open_store(store).failures()
    assert sorted(f["path"] for f in failures) == sorted(rows) and {f["stage"] for f in failures} == {"manifest"}
    for f in failures:
        assert "outside it, pass --root DIR" in f["error"] and "\n" not in f["error"], f["error"]
    assert sum("pass --root DIR" in line for line in err.splitlines()) == 3

    # what the hint says works: a root that holds the pool takes its absolute row (relative rows move with it)
    (tmp_path / "abs.csv").write_text(f"path,label\n{pool / 'v1.mp4'},x\n")
    wide = tmp_path / "wide"
    args = ["extract", str(tmp_path / "abs.csv"), "-o", str(wide), "--root", str(tmp_path), *OPTS]
    assert main([*args, "extract.num_workers=0"]) == 0
    assert open_store(wide).videos == ["pool/v1.mp4"]


def test_a_dangling_link_and_a_link_loop_are_recorded_failures(tmp_path, capsys):
    farm, pool = _farm(tmp_path)
    (farm / "cat" / "gone.mp4").symlink_to(pool / "later.mp4")  # dangling: its target is not there (yet)
    os.symlink("loop.mp4", farm / "dog" / "loop.mp4")  # a loop of links named like a video
    os.symlink("..", farm / "dog" / "up")  # a folder link back up: not walked again
    store = tmp_path / "store"
    args = ["extract", str(farm), "-o", str(store), *OPTS, "extract.num_workers=0", "sampling.strategy=multiclip"]
    assert main([*args, "sampling.num_clips=2"]) == 3
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    s = open_store(store)
    assert sorted(set(s.videos)) == ["bird/v3.mp4", "cat/a.mp4", "cat/b.mp4", "dog/c.mp4"]
    failed = {f["path"]: f["error"] for f in s.failures()}
    assert sorted(failed) == ["cat/gone.mp4", "dog/loop.mp4"]
    assert "cannot follow the link" in failed["cat/gone.mp4"] and "No such file" in failed["cat/gone.mp4"]
    assert "cannot follow the link" in failed["dog/loop.mp4"]
    assert "failed: 2 videos (manifest 2)" in out

    # the link's target appears: the next run extracts it (windows) and its failure closes
    _video(pool / "later.mp4", kind=1, seed=9)
    assert main([*args, "sampling.num_clips=2", "--retry-failed"]) == 0  # the loop: recorded once, still open
    assert "2 extracted, 4 skipped (already stored), 0 failed" in capsys.readouterr().out
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [f["path"] for f in info["failure_list"]] == ["dog/loop.mp4"]
    assert info["failures"] == 1 and info["failures_by_stage"] == {"manifest": 1}
    assert "cat/gone.mp4" in set(open_store(store).videos)
