"""Declared settings rules, the one coercer and unknown-key check, SplitSpec in the sidecar, and --format."""

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import build, check_settings, rule
from pipeline.data.manifest import load_manifest
from pipeline.data.splits import SplitsFrom, SplitSpec
from pipeline.errors import ConfigError, ManifestError
from pipeline.store import ShardWriter, create_or_open

PROV = {
    "encoder": "test-enc",
    "weights_id": "w1",
    "dim": 4,
    "preprocess": {},
    "sampling": {"strategy": "uniform", "num_frames": 2},
}


@dataclass
class _Inner:
    level: int = field(default=4, metadata=rule(min=1, max=9))


@dataclass
class _Outer:
    name: str
    mode: str = field(default="a", metadata=rule(choices=("a", "b")))
    rate: float = field(default=1.0, metadata=rule(gt=0, note="seconds"))
    workers: int | str = field(default="auto", metadata=rule(auto=True, min=0))
    sizes: tuple[int, ...] = field(default=(1,), metadata=rule(min=1, nonempty=True))
    inner: _Inner = field(default_factory=_Inner)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "mode": "c"}, "mode='c': allowed values are a, b"),
        ({"name": "x", "rate": "0"}, "rate=0.0: must be > 0 seconds"),
        ({"name": "x", "workers": -1}, "workers=-1: must be auto or an integer >= 0"),
        ({"name": "x", "sizes": []}, "sizes=[]: need one or more values"),
        ({"name": "x", "sizes": [2, 0]}, "sizes=[2, 0]: each value must be >= 1"),
        ({"name": "x", "sizes": [1.5]}, "sizes=1.5: expected an integer"),
        ({"name": "x", "inner": {"level": 10}}, "inner.level=10: must be 1..9"),
        ({"name": "x", "inner": {"lvl": 1}}, "unknown setting 'inner.lvl'; known: inner.level"),
        ({"name": "x", "inner": 3}, "inner: expected a mapping of settings"),
        ({"mode": "a"}, "missing setting 'name'"),
    ],
)
def test_one_validator_names_the_dotted_key(data, message):
    with pytest.raises(ConfigError) as info:
        build(_Outer, data)
    assert str(info.value) == message


def test_build_coerces_text_and_lists():
    obj = build(_Outer, {"name": 5, "rate": "1e-3", "workers": "AUTO", "sizes": 3, "inner": {"level": "7"}})
    assert (obj.name, obj.rate, obj.workers, obj.sizes, obj.inner.level) == ("5", 1e-3, "auto", (3,), 7)
    direct = _Outer(name="y", sizes=[2, 3])  # made in Python: the walker still coerces and checks it
    check_settings(direct)
    assert direct.sizes == (2, 3)


def test_split_spec_rules_and_sidecar_keys():
    with pytest.raises(ConfigError, match=r"val_fraction=1\.0: must be > 0 and < 1"):
        SplitSpec(val_fraction=1.0).validate()
    with pytest.raises(ConfigError, match="shots=0: must be >= 1"):
        SplitSpec(shots=0).validate()
    with pytest.raises(ConfigError, match=r"splits_from\.split=4: allowed values are 1, 2, 3"):
        SplitSpec.from_dict({"splits_from": {"source": "x", "split": 4}})
    with pytest.raises(ConfigError, match="unknown setting 'splits_from.colour'"):
        SplitSpec.from_dict({"splits_from": {"source": "x", "colour": 1}})
    spec = SplitSpec(seed=3, shots=2, splits_from=SplitsFrom("lists", split=2))
    assert SplitSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    # an old sidecar: the same flat keys, shot_seed null without shots, splits_from with source and split only
    old = {
        "seed": 1,
        "val_fraction": 0.25,
        "test_fraction": 0.2,
        "shots": None,
        "shot_seed": None,
        "splits_from": {"source": "lists", "split": 2},
        "head": "logreg",
        "pool": "mean",
    }
    assert SplitSpec.from_dict(old) == SplitSpec(seed=1, val_fraction=0.25, splits_from=SplitsFrom("lists", split=2))


@pytest.fixture
def store_path(tmp_path):
    rng = np.random.default_rng(0)
    store = create_or_open(tmp_path / "s", PROV)
    with ShardWriter(store) as w:
        for c in range(2):
            for j in range(10):
                frames = (c + 0.1 * rng.normal(size=(2, 4))).astype(np.float32)
                w.add(f"c{c}/v{j}.mp4", None, None, f"class{c}", "", frames, np.arange(2.0))
    return tmp_path / "s"


def test_cli_train_records_the_split_and_evaluate_reuses_it(store_path, tmp_path, capsys):
    head = tmp_path / "h.skops"
    args = [
        "train",
        str(store_path),
        "-o",
        str(head),
        "--head",
        "knn",
        "--seed",
        "5",
        "--test-fraction",
        "0.3",
        "--json",
    ]
    assert main(args) == 0
    trained = json.loads(capsys.readouterr().out)
    side = json.loads(head.with_suffix(".json").read_text())
    assert {k: side[k] for k in ("seed", "val_fraction", "test_fraction", "shots", "splits_from")} == {
        "seed": 5,
        "val_fraction": 0.2,
        "test_fraction": 0.3,
        "shots": None,
        "splits_from": None,
    }
    assert main(["evaluate", str(store_path), str(head), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == trained["n_test"]
    # a sidecar written before SplitSpec (shot_seed null, no new keys) still loads and gives the same split
    for key in ("shots", "splits_from"):
        side.pop(key)
    side["shot_seed"] = None
    head.with_suffix(".json").write_text(json.dumps(side))
    assert main(["evaluate", str(store_path), str(head), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == trained["n_test"]


def test_cli_train_split_settings_are_checked(store_path, tmp_path, capsys):
    code = main(["train", str(store_path), "-o", str(tmp_path / "h.skops"), "--val-fraction", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "val_fraction=1.5" in err and len(err.strip().splitlines()) == 1


# -- --format -----------------------------------------------------------------------------------


@pytest.fixture
def sources(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("path,label\nv/a.mp4,run\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "v/a.mp4", "label": "walk"}) + "\n")
    (tmp_path / "csv.txt").write_text("path,label\nv/a.mp4,jump\n")
    (tmp_path / "jsonl.txt").write_text(json.dumps({"path": "v/a.mp4", "label": "sit"}) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "name, fmt, found",
    [
        ("m.csv", "jsonl", "a .csv file"),
        ("m.jsonl", "csv", "a .jsonl file"),
        ("m.csv", "folder", "a .csv file"),
        ("v", "csv", "a folder"),
        ("v", "jsonl", "a folder"),
        ("v/a.mp4", "csv", "a .mp4 file"),
    ],
)
def test_extract_format_mismatch_is_one_line_usage_error(sources, tmp_path, capsys, name, fmt, found):
    code = main(["extract", str(sources / name), "--format", fmt, "-o", str(tmp_path / "S"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(sources / name) in err and f"--format {fmt} does not match {found}" in err
    assert not (tmp_path / "S").exists()


def test_format_reads_the_source_that_way(sources):
    assert [it.label for it in load_manifest(sources / "csv.txt", format="csv").items] == ["jump"]
    assert [it.label for it in load_manifest(sources / "jsonl.txt", format="jsonl").items] == ["sit"]
    assert [it.label for it in load_manifest(sources / "m.csv", format="csv").items] == ["run"]
    assert [it.path for it in load_manifest(sources / "v", format="folder").items] == ["a.mp4"]
    with pytest.raises(ManifestError, match="not a folder, .csv/.jsonl manifest or video file"):
        load_manifest(sources / "csv.txt")  # auto: a .txt says nothing
    with pytest.raises(ManifestError, match="format='xml': allowed values are auto, folder"):
        load_manifest(sources / "m.csv", format="xml")
