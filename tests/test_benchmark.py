"""`vidprobe benchmark CONFIG` over real HDF5 stores: tables, traceable CSV rows, few-shot curves, plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.probe.benchmark import load_benchmark_config
from pipeline.store import ShardWriter, create_or_open

REPO = Path(__file__).resolve().parents[1]


def _store(path: Path, encoder: str, reversed_pair: bool, seed: int) -> Path:
    """3 classes x 24 clips of 6 frames; with ``reversed_pair`` class 2 is class 1 played backwards."""
    rng = np.random.default_rng(seed)
    store = create_or_open(
        path,
        {
            "encoder": encoder,
            "weights_id": f"w-{encoder}",
            "dim": 5,
            "preprocess": {},
            "sampling": {"strategy": "uniform", "num_frames": 6},
        },
    )
    base = rng.normal(size=(3, 5))
    ramp = np.linspace(-1, 1, 6)[:, None]
    with ShardWriter(store) as w:
        for c in range(3):
            for j in range(24):
                split = "train" if j < 16 else "val" if j < 20 else "test"
                if reversed_pair and c > 0:
                    frames = base[1] + (ramp if c == 1 else -ramp) + 0.4 * rng.normal(size=(6, 5))
                else:
                    frames = base[c] + 0.8 * rng.normal(size=(6, 5))
                w.add(f"c{c}/v{j:02d}.mp4", None, None, f"class{c}", split, frames.astype(np.float32), np.arange(6) / 6)
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, Path, dict]:
    d = tmp_path_factory.mktemp("bench")
    _store(d / "what", "enc-a", False, 0)
    _store(d / "how", "enc-a", True, 1)
    _store(d / "how-b", "enc-b", True, 2)
    cfg = {
        "name": "unit-bench",
        "seed": 0,
        "stores": [
            {"dataset": "what", "path": str(d / "what")},
            {"dataset": "how", "path": str(d / "how")},
            {"dataset": "how", "path": str(d / "how-b"), "encoder": "B"},
        ],
        "poolings": ["center", "mean", "seg2"],
        "heads": ["logreg", {"kind": "knn", "ks": [1, 3]}, "zeroshot"],
        "fewshot": {"shots": [1, 2, 4], "seeds": [0, 1, 2], "heads": ["logreg"], "poolings": ["seg2"]},
    }
    path = d / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = d / "out"
    code = main(["benchmark", str(path), "-o", str(out), "-q"])
    return out, path, {"code": code}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_results_csv_rows_are_traceable(bench) -> None:
    out, _, info = bench
    assert info["code"] == 0
    rows = _rows(out)
    full = [r for r in rows if not r["shots"]]
    assert len(full) == 3 * 3 * 3  # stores x poolings x heads
    ok = [r for r in full if r["status"] == "ok"]
    assert {r["head"] for r in ok} == {"logreg", "knn"}
    for r in ok:
        assert (
            Path(r["store"]).is_dir()
            and r["weights_id"].startswith("w-enc")
            and json.loads(r["sampling"])["num_frames"] == 6
        )
        assert json.loads(r["head_settings"])["kind"] == r["head"] and r["seed"] == "0"
        assert r["split_source"] == "manifest" and int(r["n_test"]) == 12
        assert set(json.loads(r["hparams"])) == ({"C"} if r["head"] == "logreg" else {"k"})
    zs = [r for r in full if r["head"] == "zeroshot"]
    assert zs and all(r["status"].startswith("skipped") and "text tower" in r["status"] for r in zs)
    assert {r["encoder"] for r in ok} == {"enc-a", "B"}


def test_order_aware_pooling_wins_on_the_reversal_task(bench) -> None:
    out, _, _ = bench
    top1 = {
        (r["dataset"], r["encoder"], r["pool"], r["head"]): float(r["top1"])
        for r in _rows(out)
        if r["status"] == "ok" and not r["shots"]
    }
    assert top1[("how", "enc-a", "seg2", "logreg")] >= top1[("how", "enc-a", "mean", "logreg")] + 0.25
    assert top1[("what", "enc-a", "mean", "logreg")] >= 0.9


def test_few_shot_rows_and_table(bench) -> None:
    out, _, _ = bench
    few = [
        r
        for r in _rows(out)
        if r["shots"] and r["dataset"] == "how" and r["encoder"] == "enc-a" and r["pool"] == "seg2"
    ]
    assert sorted((int(r["shots"]), int(r["shot_seed"])) for r in few) == [(k, s) for k in (1, 2, 4) for s in (0, 1, 2)]
    assert all(int(r["n_train"]) == 3 * int(r["shots"]) for r in few)
    md = (out / "results.md").read_text()
    assert "few-shot test top-1 (%), mean ± std over 3 seeds" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| how | enc-a | logreg | seg2 |"))
    accs = [float(r["top1"]) for r in few if r["shots"] == "4"]
    assert f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs, ddof=1):.1f}" in line
    assert "| what | enc-a | center |" in md and "order-aware" in md


def test_plots_and_details(bench) -> None:
    out, _, _ = bench
    for name in ("accuracy-what-enc-a.png", "accuracy-how-B.png", "fewshot-how-enc-a.png", "confusion-how-enc-a.png"):
        assert (out / name).stat().st_size > 5000, name
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    for d in details:  # the confusion matrix's nonzero [true, predicted, count] cells, one count per test clip
        assert set(d["report"]) == {"class0", "class1", "class2"}
        assert all(0 <= t < 3 and 0 <= p < 3 and n > 0 for t, p, n in d["confusion"])
        assert sum(n for _, _, n in d["confusion"]) == sum(r["support"] for r in d["report"].values())
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["config"]["name"] == "unit-bench" and meta["versions"]["scikit-learn"]


def test_rerunning_a_row_reproduces_it(bench) -> None:
    """A results.csv row has what it takes to re-run that fit and get the same number."""
    from pipeline.data.splits import SplitSpec
    from pipeline.probe.heads.settings import HeadConfig
    from pipeline.probe.train import fit_on_store
    from pipeline.store import open_store

    out, _, _ = bench
    row = next(
        r
        for r in _rows(out)
        if r["shots"] == "2" and r["shot_seed"] == "1" and r["pool"] == "seg2" and r["encoder"] == "B"
    )
    split = SplitSpec(seed=int(row["seed"]), shots=int(row["shots"]), shot_seed=int(row["shot_seed"]))
    head = HeadConfig.from_dict(json.loads(row["head_settings"]))
    _, rec = fit_on_store(open_store(row["store"]), head, row["pool"], split=split)
    assert rec["test"]["top1"] == pytest.approx(float(row["top1"]), abs=1e-12)


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"poolings": ["median"]}, "pool='median'"),
        ({"heads": [{"kind": "logreg", "colour": 1}]}, "colour"),
        ({"stores": [{"path": "x"}]}, "stores[0]"),
        ({"bogus": 1}, "'bogus'"),
        ({"fewshot": {"shots": [0]}}, "fewshot.shots"),
    ],
)
def test_config_errors_name_the_key(bench, tmp_path: Path, patch: dict, needle: str) -> None:
    _, path, _ = bench
    cfg = {**yaml.safe_load(path.read_text()), **patch}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as info:
        load_benchmark_config(bad)
    assert needle in str(info.value) and "bad.yaml" in str(info.value)


def test_shipped_demo_config_is_valid() -> None:
    cfg = load_benchmark_config(REPO / "configs" / "demo-bench.yaml")
    assert {"center", "mean"} <= set(cfg.poolings) and any(p in cfg.poolings for p in ("seg2", "seg4", "tdiff"))
    assert cfg.fewshot_shots == [1, 2, 4, 8, 16] and len(cfg.fewshot_seeds) >= 3


@pytest.mark.slow
def test_linear_probe_benchmark_script_runs_and_ends_with_json() -> None:
    """A tiny run of benchmarks/linear_probe.py (no timing asserted): its last line is one JSON object."""
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/linear_probe.py",
            "--classes",
            "5",
            "--dim",
            "16",
            "--per-class",
            "20",
            "10",
            "10",
            "--repeats",
            "1",
            "--no-ablation",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "speedup",
        "cpu_speedup",
        "ours_seconds",
        "sklearn_seconds",
        "ours_test_top1",
        "sklearn_test_top1",
        "test_top1_diff_points",
        "xcheck_max_abs_proba_diff",
    ):
        assert key in last
    assert f"{last['speedup']:.2f}x wall" in proc.stdout


def test_temporal_heads_get_one_row_per_store_and_few_shot(tmp_path: Path) -> None:
    _store(tmp_path / "how", "enc-a", True, 1)
    attn = {"kind": "attn", "width": 8, "num_heads": 2, "epochs": 2, "lrs": [1e-3], "wds": [0.1]}
    cfg = {
        "name": "temporal",
        "stores": [{"dataset": "how", "path": str(tmp_path / "how")}],
        "poolings": ["mean", "seg2"],
        "heads": ["logreg", attn],
        "fewshot": {"shots": [2], "seeds": [0], "heads": [attn]},
    }
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["benchmark", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    rows = _rows(tmp_path / "out")
    assert [(r["pool"], r["head"], r["shots"]) for r in rows] == [
        ("mean", "logreg", ""),
        ("seg2", "logreg", ""),
        ("frames", "attn", ""),
        ("frames", "attn", "2"),
    ]
    assert all(r["status"] == "ok" for r in rows) and json.loads(rows[2]["hparams"]).keys() == {"lr", "wd"}


def _small_bench(d: Path) -> Path:
    """One real store, 2 poolings x 2 heads + a few-shot row: 6 fits."""
    _store(d / "what", "enc-a", False, 0)
    cfg = {
        "name": "resume",
        "stores": [{"dataset": "what", "path": str(d / "what")}],
        "poolings": ["mean", "seg2"],
        "heads": ["logreg", {"kind": "knn", "ks": [1, 3]}],
        "fewshot": {"shots": [2], "seeds": [0, 1]},
    }
    (d / "bench.yaml").write_text(yaml.safe_dump(cfg))
    return d / "bench.yaml"


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "fit_seconds"} for r in rows]


def test_a_finished_results_folder_is_kept_unless_overwrite(tmp_path: Path, capsys) -> None:
    config, out = _small_bench(tmp_path), tmp_path / "out"
    assert main(["benchmark", str(config), "-o", str(out), "-q"]) == 0
    before = (out / "results.csv").read_bytes()
    capsys.readouterr()
    assert main(["benchmark", str(config), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0], err
    assert (out / "results.csv").read_bytes() == before
    assert main(["benchmark", str(config), "-o", str(out), "-q", "--overwrite"]) == 0
    assert _without_seconds(_rows(out)) == _without_seconds(list(csv.DictReader(before.decode().splitlines())))


def test_an_interrupted_benchmark_resumes_without_refitting(tmp_path: Path) -> None:
    """Stopped (KeyboardInterrupt, as Ctrl-C raises it) after its third fit, the run leaves those fits in its
    log; the re-run fits only the rest and writes the same results as a run never stopped."""
    from pipeline.probe.benchmark import FIT_LOG, run_benchmark

    config = _small_bench(tmp_path)
    whole = tmp_path / "whole"
    run_benchmark(config, whole, say=lambda _: None)
    seen: list[str] = []

    def stop_after_three(line: str) -> None:
        seen.append(line)
        if len(seen) == 4:  # the "benchmark ..." line, then one line per full-data fit
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, out, say=stop_after_three)
    logged = [json.loads(line)["row"] for line in (out / FIT_LOG).read_text().splitlines()]
    assert len(logged) == 3 and not (out / "results.csv").exists()
    lines: list[str] = []
    run_benchmark(config, out, say=lines.append)
    assert "resuming: 3 fits already done" in lines[0]
    rows = _rows(out)
    assert _without_seconds(rows) == _without_seconds(_rows(whole))
    for old in logged:  # kept as logged, not fitted again
        row = next(r for r in rows if (r["pool"], r["head"]) == (old["pool"], old["head"]) and not r["shots"])
        assert float(row["fit_seconds"]) == old["fit_seconds"]
    assert not (out / FIT_LOG).exists() and json.loads((out / "benchmark.json").read_text())["finished"]
