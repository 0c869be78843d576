"""End to end through the public CLI with real videos, real HDF5 and the real offline encoder."""

import json
import subprocess
import sys

import pytest
from media import pattern_frames, write_video

from pipeline.cli import main


def run_cli(*args, capsys=None):
    code = main([str(a) for a in args])
    out = capsys.readouterr() if capsys else None
    return code, out


@pytest.fixture(scope="module")
def extracted(labeled_folder, tmp_path_factory):
    store = tmp_path_factory.mktemp("feat") / "store"
    code = main(
        ["extract", str(labeled_folder), "-o", str(store), "-q", "extract.num_workers=1", "sampling.num_frames=4"]
    )
    return store, code


def test_extract_mixed_containers_reports_bad_file_and_stores_the_rest(extracted, capsys):
    store, code = extracted
    assert code == 3  # finished, one clip failed
    code, out = run_cli("info", store, "--json", capsys=capsys)
    info = json.loads(out.out)
    assert info["clips"] == 8 and info["frames"] == 32  # T=4 embeddings per clip
    assert info["encoder"] == "effnet-lite0" and info["dim"] == 1280
    assert [f["path"] for f in info["failure_list"]] == ["stripes_h/broken.mp4"]
    assert "broken.mp4" in info["failure_list"][0]["error"]


def test_second_run_does_no_decoding_work(extracted, labeled_folder, capsys, monkeypatch):
    store, _ = extracted
    import pipeline.extract.workers as pool

    calls = []
    monkeypatch.setattr(pool, "decode_task", lambda *a, **k: calls.append(a) or pytest.fail("decoded again"))
    code, out = run_cli(
        "extract",
        labeled_folder,
        "-o",
        store,
        "--json",
        "extract.num_workers=0",
        "sampling.num_frames=4",
        capsys=capsys,
    )
    summary = json.loads(out.out)
    assert summary["done"] == 0 and summary["skipped"] == 9 and calls == []
    assert code == 0


def test_changed_sampling_is_refused(extracted, labeled_folder, capsys):
    store, _ = extracted
    code, out = run_cli("extract", labeled_folder, "-o", store, "-q", "sampling.num_frames=16", capsys=capsys)
    assert code == 1
    assert "sampling" in out.err and "num_frames" in out.err and len(out.err.strip().splitlines()) == 1


def test_train_evaluate_predict_in_fresh_process(extracted, tmp_path, capsys):
    store, _ = extracted
    head = tmp_path / "h.skops"
    code, out = run_cli("train", store, "-o", head, "--json", "--test-fraction", "0.25", capsys=capsys)
    assert code == 0
    res = json.loads(out.out)
    assert res["classes"] == ["stripes_h", "stripes_v"]
    code, out = run_cli(
        "evaluate", store, head, "--split", "all", "--json", "--confusion", tmp_path / "cm.png", capsys=capsys
    )
    assert code == 0 and json.loads(out.out)["top1"] >= 0.75
    assert (tmp_path / "cm.png").stat().st_size > 1000
    new = write_video(tmp_path / "new.mp4", pattern_frames(30, kind=1, seed=99), fps=12)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", str(head), str(new), "--json", "-k", "2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    pred = json.loads(proc.stdout)
    assert pred[0]["top"][0]["label"] == "stripes_v"
    assert sum(t["prob"] for t in pred[0]["top"]) == pytest.approx(1.0)


def test_unknown_setting_is_one_line_usage_error(labeled_folder, tmp_path, capsys):
    code, out = run_cli("extract", labeled_folder, "-o", tmp_path / "x", "sampling.nframes=3", capsys=capsys)
    assert code == 2 and "sampling.nframes" in out.err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("extract", "train", "evaluate", "predict", "info", "demo", "benchmark"):
        assert cmd in text
