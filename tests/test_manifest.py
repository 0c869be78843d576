import json
import os

import pytest

from pipeline.data.manifest import load_manifest, safe_relpath
from pipeline.errors import ManifestError


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_per_class(tmp_path):
    _touch(tmp_path / "cat" / "a.mp4")
    _touch(tmp_path / "dog" / "sub" / "b.MKV")
    _touch(tmp_path / "dog" / "notes.txt")
    _touch(tmp_path / "loose.webm")
    m = load_manifest(tmp_path)
    got = {(it.path, it.label) for it in m.items}
    assert got == {("cat/a.mp4", "cat"), ("dog/sub/b.MKV", "dog"), ("loose.webm", "")}
    assert m.labels == ["cat", "dog"]


def test_csv_with_splits_windows_and_bad_rows(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,label,split,start,end\n"
        "v/a.mp4,run,train,,\n"
        "v/b.mp4,walk,test,1.5,3\n"
        "../escape.mp4,run,train,,\n"
        "/etc/passwd,run,train,,\n"
        "v/c.mp4,run,holdout,,\n"
        "v/d.mp4,run,train,4,2\n"
    )
    m = load_manifest(tmp_path / "m.csv")
    assert [(i.path, i.label, i.split, i.start, i.end) for i in m.items] == [
        ("v/a.mp4", "run", "train", None, None),
        ("v/b.mp4", "walk", "test", 1.5, 3.0),
    ]
    errors = " | ".join(p.error for p in m.problems)
    assert len(m.problems) == 4
    assert "escapes" in errors and "holdout" in errors and "after start" in errors


def test_jsonl_and_bad_line(tmp_path):
    lines = [
        json.dumps({"path": "x.mp4", "label": "a"}),
        "{not json",
        json.dumps({"path": "y.mp4", "label": "b", "split": "val"}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    m = load_manifest(tmp_path / "m.jsonl")
    assert [(i.path, i.label, i.split) for i in m.items] == [("x.mp4", "a", ""), ("y.mp4", "b", "val")]
    assert len(m.problems) == 1 and "m.jsonl:2" in m.problems[0].error


def test_csv_without_path_column_is_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(ManifestError, match="'path' column"):
        load_manifest(tmp_path / "m.csv")


def test_glob_is_unlabeled(tmp_path):
    _touch(tmp_path / "d" / "a.mp4")
    _touch(tmp_path / "d" / "e" / "b.mp4")
    m = load_manifest(str(tmp_path / "d" / "**" / "*.mp4"))
    assert sorted(i.path for i in m.items) == ["a.mp4", "e/b.mp4"]
    assert all(i.label == "" for i in m.items)


def test_symlink_out_of_root_is_refused(tmp_path):
    outside = _touch(tmp_path / "outside" / "secret.mp4")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link.mp4")
    with pytest.raises(ManifestError, match="outside .*pass --root DIR"):
        safe_relpath(root, "link.mp4")
    (root / "m.csv").write_text("path\nlink.mp4\n")
    (problem,) = load_manifest(root / "m.csv").problems
    assert problem.path == "link.mp4" and "--root DIR" in problem.error


def test_folder_glob_and_single_video_follow_links(tmp_path):
    # what the user names is theirs: links lead anywhere, the path is the one laid out, nothing is re-confined
    target = _touch(tmp_path / "elsewhere" / "deep" / "v.mp4")
    farm = tmp_path / "farm"
    _touch(farm / "cat" / "own.mp4")
    os.symlink(target, farm / "cat" / "link.mp4")
    os.symlink(target.parent, farm / "dog")
    for m in (load_manifest(farm), load_manifest(str(farm / "*" / "*.mp4"))):
        assert sorted(i.path for i in m.items) == ["cat/link.mp4", "cat/own.mp4", "dog/v.mp4"]
        assert all(i.follow_links and i.confine is None for i in m.items) and not m.problems
    (single,) = load_manifest(farm / "cat" / "link.mp4").items
    assert (single.path, single.abspath) == ("link.mp4", farm / "cat" / "link.mp4")
    assert load_manifest(farm / "cat" / "link.mp4").items[0].abspath.resolve() == target
    (tmp_path / "m.csv").write_text("path\nfarm/cat/own.mp4\n")
    (row,) = load_manifest(tmp_path / "m.csv").items
    assert not row.follow_links and row.confine == str(tmp_path.resolve())


def test_missing_source():
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest("/nonexistent/place")
