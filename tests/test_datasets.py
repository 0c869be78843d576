"""Official split files (UCF101, HMDB51, Kinetics) read from fixtures in the released formats, and the
split logic that uses them: groups kept whole, re-splitting a store, few-shot draws."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.manifest import load_manifest
from pipeline.data.splits import SplitsFrom, SplitSpec, few_shot, make_splits, video_group
from pipeline.errors import ManifestError
from pipeline.probe.train import store_splits
from pipeline.store import ShardWriter, create_or_open, open_store

FIXTURES = Path(__file__).parent / "fixtures"
UCF = FIXTURES / "ucfTrainTestlist"
HMDB = FIXTURES / "hmdb51_splits"
KINETICS = FIXTURES / "kinetics" / "kinetics_sample.csv"


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0")
    return p


def _listed(split_file: Path) -> list[str]:
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


@pytest.fixture
def ucf_root(tmp_path: Path) -> Path:
    root = tmp_path / "UCF-101"
    for path in _listed(UCF / "trainlist01.txt") + _listed(UCF / "testlist01.txt"):
        _touch(root / path)
    return root


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_splits(ucf_root: Path, split: int) -> None:
    m = load_manifest(UCF, root=ucf_root, split=split)  # auto-detected by classInd.txt
    assert not m.problems
    assert len(m.items) == 3 * 6 * 2
    test = [it for it in m.items if it.split == "test"]
    assert {it.path for it in test} == set(_listed(UCF / f"testlist0{split}.txt"))
    assert {video_group(it.path).split("_g")[-1] for it in test} == {f"{2 * split - 1:02d}", f"{2 * split:02d}"}
    # test lines carry no label: it comes from the class folder, matched to classInd.txt
    assert {it.label for it in test} == {"ApplyEyeMakeup", "Archery", "HandstandPushups"}
    assert all(it.path.split("/")[0] == it.label for it in m.items)


def test_ucf101_missing_videos_are_problems_and_wrong_root_is_an_error(ucf_root: Path, tmp_path: Path) -> None:
    (ucf_root / "Archery" / "v_Archery_g03_c01.avi").unlink()
    m = load_manifest(UCF, root=ucf_root)
    assert len(m.items) == 35 and len(m.problems) == 1
    assert "v_Archery_g03_c01.avi" in m.problems[0].error and "not found" in m.problems[0].error
    with pytest.raises(ManifestError, match="--root"):
        load_manifest(UCF, root=tmp_path / "empty")
    assert len(load_manifest(UCF, root=tmp_path / "empty", check_files=False).items) == 36


def test_ucf101_bad_lines_name_file_and_line(tmp_path: Path, ucf_root: Path) -> None:
    bad = tmp_path / "ucfTrainTestlist"
    shutil.copytree(UCF, bad)
    with open(bad / "trainlist01.txt", "a") as f:
        f.write("Archery/v_Archery_g09_c01.avi 7\r\nNoSuchClass/v_NoSuchClass_g01_c01.avi\r\n")
    with open(bad / "testlist01.txt", "a") as f:
        f.write("NoSuchClass/v_NoSuchClass_g01_c01.avi\r\n")
    m = load_manifest(bad, root=ucf_root)
    errors = [p.error for p in m.problems]
    assert any("trainlist01.txt:" in e and "class index '7'" in e for e in errors)
    assert any("testlist01.txt:" in e and "NoSuchClass" in e for e in errors)
    with pytest.raises(ManifestError, match="split=4"):
        load_manifest(UCF, root=ucf_root, split=4)


@pytest.mark.parametrize(
    "split, expected", [(1, {"train": 6, "test": 2}), (2, {"train": 6, "test": 2}), (3, {"train": 6, "test": 2})]
)
def test_hmdb51_codes(tmp_path: Path, split: int, expected: dict[str, int]) -> None:
    root = tmp_path / "hmdb51"
    for f in HMDB.glob(f"*_test_split{split}.txt"):
        action = f.name.split("_test_split")[0]
        for video in _listed(f):
            _touch(root / action / video)
    m = load_manifest(HMDB, root=root, split=split)
    assert not m.problems
    counts = {s: sum(1 for it in m.items if it.split == s) for s in ("train", "test")}
    assert counts == expected  # code 0 (unused in this split) is left out
    unused = [
        line.split()[0]
        for f in HMDB.glob(f"*_test_split{split}.txt")
        for line in f.read_text().splitlines()
        if line.split()[1] == "0"
    ]
    assert unused and not {it.path.split("/")[1] for it in m.items} & set(unused)
    assert {it.label for it in m.items} == {"brush_hair", "cartwheel"}
    assert all(it.path.startswith(it.label + "/") for it in m.items)


def test_kinetics_trimmed_and_full_videos(tmp_path: Path) -> None:
    shutil.copy(KINETICS, tmp_path / "k.csv")
    _touch(tmp_path / "train" / "air drumming" / "-VtLx-mcPds_000014_000024.mp4")  # trimmed clip: whole file
    _touch(tmp_path / "full" / "0Ufx4lpxrCo.mkv")  # full YouTube video: the clip is a window of it
    _touch(tmp_path / "val" / "--kaH-2wnBE_000056_000066.mp4")
    _touch(tmp_path / "4dBkXbtT8w8.webm")
    _touch(tmp_path / "test" / "3caPS4FHFF8_000036_000046.mp4")
    m = load_manifest(tmp_path / "k.csv")  # auto-detected by its youtube_id column
    got = {it.path: (it.label, it.split, it.start, it.end) for it in m.items}
    assert got == {
        "train/air drumming/-VtLx-mcPds_000014_000024.mp4": ("air drumming", "train", None, None),
        "full/0Ufx4lpxrCo.mkv": ("air drumming", "train", 0.0, 10.0),
        "val/--kaH-2wnBE_000056_000066.mp4": ("opening bottle (not wine)", "val", None, None),
        "4dBkXbtT8w8.webm": ("opening bottle (not wine)", "train", 30.0, 40.0),
        "test/3caPS4FHFF8_000036_000046.mp4": ("abseiling", "test", None, None),
    }
    assert len(m.problems) == 1 and "MISSINGvid01" in m.problems[0].error and "k.csv:6" in m.problems[0].error


def test_kinetics_csv_without_required_columns(tmp_path: Path) -> None:
    (tmp_path / "k.csv").write_text("label,youtube_id,split\nx,abc,train\n")
    with pytest.raises(ManifestError, match="time_start"):
        load_manifest(tmp_path / "k.csv", format="kinetics")


def test_groups_stay_on_one_side_of_carved_val() -> None:
    videos = [f"Archery/v_Archery_g{g:02d}_c{c:02d}.avi" for g in range(1, 9) for c in range(1, 4)]
    labels = ["Archery"] * len(videos)
    sp = make_splits(labels, ["train"] * len(videos), videos, seed=3)
    assert sp.source == "manifest+carved-val" and len(sp.val)
    assert not {video_group(videos[i]) for i in sp.train} & {video_group(videos[i]) for i in sp.val}
    assert video_group("a/clip.mp4") == "a/clip.mp4"


def test_resplit_store_with_another_official_split(tmp_path: Path) -> None:
    """A store extracted with UCF101 split 1 is re-split to split 2 without re-extracting."""
    m1 = load_manifest(UCF, root=tmp_path, check_files=False)
    store = create_or_open(
        tmp_path / "s", {"encoder": "e", "weights_id": "w", "dim": 2, "preprocess": {}, "sampling": {}}
    )
    with ShardWriter(store) as w:
        for it in m1.items:
            w.add(it.path, it.start, it.end, it.label, it.split, np.zeros((1, 2), np.float32), np.zeros(1))
    s = open_store(tmp_path / "s")
    t = s.table()
    sp = store_splits(s, SplitSpec(splits_from=SplitsFrom(str(UCF), split=2)))
    assert {t.video[i] for i in sp.test} == set(_listed(UCF / "testlist02.txt"))
    assert sp.source.endswith("ucfTrainTestlist#2")
    assert not {video_group(t.video[i]) for i in sp.train} & {video_group(t.video[i]) for i in sp.val}


def test_few_shot_draws() -> None:
    videos = [f"c{c}/v_X{c}_g{g:02d}_c{k:02d}.avi" for c in range(3) for g in range(6) for k in range(2)]
    labels = [v.split("/")[0] for v in videos]
    train = np.arange(len(videos))
    a = few_shot(labels, videos, train, 4, seed=0)
    assert len(a) == 12 and all(sum(labels[i] == c for i in a) == 4 for c in ("c0", "c1", "c2"))
    assert len({video_group(videos[i]) for i in a}) == 12  # distinct groups while there are enough
    assert np.array_equal(a, few_shot(labels, videos, train, 4, seed=0))
    assert not np.array_equal(a, few_shot(labels, videos, train, 4, seed=1))
    assert len(few_shot(labels, videos, train, 50, seed=0)) == len(videos)  # fewer than k: all of them


def test_splits_name_the_classes_a_split_lacks():
    # class "c" has 2 videos: one goes to test, the other stays in train, so val cannot hold it
    labels = ["a"] * 10 + ["b"] * 10 + ["c"] * 2
    videos = [f"{lab}/{i}.mp4" for i, lab in enumerate(labels)]
    sp = make_splits(labels, [""] * len(labels), videos, seed=0, val_fraction=0.2, test_fraction=0.2)
    missing = sp.missing()
    assert missing == {"val": ["c"]}
    assert {labels[i] for i in sp.test} == {"a", "b", "c"}
    full = make_splits(["a"] * 10 + ["b"] * 10, [""] * 20, [f"v{i}" for i in range(20)], seed=0)
    assert full.missing() == {}


def test_short_of_shots_names_classes_below_k():
    from pipeline.data.splits import short_of_shots

    labels = ["a"] * 5 + ["b"] * 2 + ["c"] * 12
    train = np.arange(len(labels))
    assert short_of_shots(labels, train, 4) == {"b": 2}
    assert short_of_shots(labels, train, 6) == {"a": 5, "b": 2}
    assert short_of_shots(labels, train, 1) == {}
