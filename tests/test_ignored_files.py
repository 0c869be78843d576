"""Files of a source folder that are not videos by extension are left out, and the user is told which."""

import json

from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.data.manifest import load_manifest


def _folder(root):
    write_video(root / "cats" / "c0.mp4", pattern_frames(12, kind=0, seed=1), fps=12)
    write_video(root / "dogs" / "d0.mkv", pattern_frames(12, kind=1, seed=2), fps=12)
    (root / "cats" / "purr.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + b"\0" * 64)  # audio only
    (root / "dogs" / "notes.txt").write_text("not a video\n")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0")  # hidden: left out without a word, as before
    return root


def test_folder_manifest_lists_what_it_ignored(tmp_path):
    m = load_manifest(_folder(tmp_path))
    assert sorted(it.path for it in m.items) == ["cats/c0.mp4", "dogs/d0.mkv"]
    assert m.ignored == ["cats/purr.m4a", "dogs/notes.txt"] and not m.problems


def test_extract_summary_says_how_many_files_were_ignored(tmp_path, capsys):
    src, store = _folder(tmp_path / "src"), tmp_path / "store"
    args = ["extract", str(src), "-o", str(store), "-q", "extract.num_workers=0", "sampling.num_frames=2"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 extracted" in line and "2 files ignored (not videos by extension: cats/purr.m4a, dogs/notes.txt)" in line
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ignored"] == ["cats/purr.m4a", "dogs/notes.txt"] and summary["skipped"] == 2


def test_no_note_without_left_out_files(tmp_path, capsys):
    src = tmp_path / "src"
    write_video(src / "only.mp4", pattern_frames(12, kind=2, seed=3), fps=12)
    assert (
        main(
            ["extract", str(src), "-o", str(tmp_path / "store"), "-q", "extract.num_workers=0", "sampling.num_frames=2"]
        )
        == 0
    )
    assert "ignored (" not in capsys.readouterr().out
