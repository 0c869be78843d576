"""Hostile inputs at the edge: each is refused as one line naming the row, key or file (or recorded as a
manifest problem while the job goes on), never a traceback and never a silently wrong result.

Real files throughout: PyAV-encoded videos, HDF5 stores made by ``vidprobe extract``, heads saved by
``vidprobe train``, and the CLI run in-process (``main``) or as ``python -m pipeline`` subprocesses.
"""

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import MAX_FRAMES_PER_CLIP, SamplingConfig, load_config
from pipeline.data.manifest import load_manifest
from pipeline.data.sampling import clip_windows, sample_timestamps
from pipeline.errors import ConfigError
from pipeline.store import open_store

REPO = Path(__file__).resolve().parents[1]
LABELS = ("a", "b")


def one_line(err: str) -> str:
    """The single error line a refusal prints (and nothing else on stderr)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- the hostile set ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Videos, crafted manifests and configs, a store with a head, and damaged copies of both."""
    base = tmp_path_factory.mktemp("hostile")
    videos = base / "videos"
    for k, label in enumerate(LABELS):
        for j in range(4):
            write_video(videos / label / f"v{j}.mp4", pattern_frames(12, 48, 64, kind=k, seed=j), fps=12)
    os.symlink("loop.mp4", videos / "a" / "loop.mp4")  # a symlink loop named like a video
    os.symlink("..", videos / "a" / "up")  # a folder link back up: a loop, not walked again
    h: dict[str, Path] = {"videos": videos}

    h["nan_csv"] = videos / "nan.csv"
    h["nan_csv"].write_text("path,label,start,end\na/v0.mp4,a,nan,\na/v1.mp4,a,0,inf\na/v2.mp4,a,,\n")
    h["dup_csv"] = videos / "dup.csv"
    h["dup_csv"].write_text("path,label\na/v0.mp4,a\na/v0.mp4,b\na/v0.mp4,a\na/v1.mp4,a\n")
    write_video(videos / "b" / "x,y.mp4", pattern_frames(12, 48, 64, kind=1), fps=12)
    h["tsv"] = videos / "m.tsv"
    h["tsv"].write_text("path\tlabel\tstart\tend\nb/x,y.mp4\tb\t0\t0.5\na/v0.mp4\ta\t\t\n")
    h["nul_jsonl"] = videos / "nul.jsonl"
    h["nul_jsonl"].write_text(json.dumps({"path": "a/v0\u0000.mp4", "label": "a"}) + "\n" + '{"path": "a/v1.mp4"}\n')
    h["deep_jsonl"] = videos / "deep.jsonl"
    h["deep_jsonl"].write_text("[" * 50_000 + "]" * 50_000 + "\n" + '{"path": "a/v1.mp4", "label": "a"}\n')

    h["latin1_cfg"] = base / "latin1.yaml"
    h["latin1_cfg"].write_bytes("# réglages\nsampling:\n  fps: 2\n".encode("latin-1"))
    h["bomb_cfg"] = base / "bomb.yaml"
    bomb = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        bomb.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    h["bomb_cfg"].write_text("sampling:\n  num_frames: 8\n  anchors:\n" + "".join(f"    {x}\n" for x in bomb))

    # a store and a head, then a second store whose manifest names a class the head never saw
    h["store"] = base / "store"
    src = videos / "train.csv"
    src.write_text("path,label\n" + "".join(f"{lab}/v{j}.mp4,{lab}\n" for lab in LABELS for j in range(4)))
    common = ["-q", "extract.num_workers=0", "sampling.num_frames=2"]
    assert main(["extract", str(src), "-o", str(h["store"]), *common]) == 0
    h["head"] = base / "heads" / "h.skops"
    assert main(["train", str(h["store"]), "-o", str(h["head"]), "--test-fraction", "0.5"]) == 0
    unseen = videos / "unseen.csv"
    unseen.write_text("path,label\na/v0.mp4,a\nb/v0.mp4,b\na/v1.mp4,zebra\n")
    h["unseen_store"] = base / "unseen_store"
    assert main(["extract", str(unseen), "-o", str(h["unseen_store"]), *common]) == 0

    # a skops head file whose "estimator" is an array, with a sidecar that matches it
    import skops.io as sio

    h["array_head"] = base / "heads" / "array.skops"
    sio.dump({"estimator": np.arange(3.0), "classes": list(LABELS)}, h["array_head"])
    side = json.loads(h["head"].with_suffix(".json").read_text())
    side["head_sha256"] = hashlib.sha256(h["array_head"].read_bytes()).hexdigest()
    h["array_head"].with_suffix(".json").write_text(json.dumps(side))

    h["list_store"] = base / "list_store"
    h["list_store"].mkdir()
    (h["list_store"] / "store.json").write_text('["not", "a", "store"]')
    h["a_file"] = base / "a_file"
    h["a_file"].write_text("a file where a folder should be\n")
    return h


# -- 1. manifest rows ----------------------------------------------------------------------------


def test_nan_and_inf_times_are_manifest_problems_naming_the_row(hostile) -> None:
    m = load_manifest(hostile["nan_csv"])
    assert [it.path for it in m.items] == ["a/v2.mp4"]
    assert len(m.problems) == 2
    assert "nan.csv:2" in m.problems[0].error and "finite" in m.problems[0].error
    assert "nan.csv:3" in m.problems[1].error and "finite" in m.problems[1].error


def test_nan_row_is_recorded_and_the_job_goes_on(hostile, tmp_path, capsys) -> None:
    store = tmp_path / "s"
    code = main(["extract", str(hostile["nan_csv"]), "-o", str(store), "-q", "sampling.num_frames=2"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err  # finished; the two bad rows failed
    s = open_store(store)
    assert s.table().video == ["a/v2.mp4"]
    assert sorted(f["stage"] for f in s.failures()) == ["manifest", "manifest"]
    assert main(["extract", str(hostile["nan_csv"]), "-o", str(store), "-q", "sampling.num_frames=2"]) == 0
    assert len(open_store(store).table()) == 1  # a re-run stores nothing again


def test_duplicate_row_with_another_label_is_a_conflict(hostile) -> None:
    m = load_manifest(hostile["dup_csv"])
    assert [(it.path, it.label) for it in m.items] == [("a/v0.mp4", "a"), ("a/v0.mp4", "a"), ("a/v1.mp4", "a")]
    (conflict,) = m.problems
    assert conflict.path.endswith("dup.csv:3")  # filed under the row, so the kept clip is not marked failed
    assert "'b'" in conflict.error and "dup.csv:2" in conflict.error and "conflicting labels" in conflict.error


def test_tsv_manifest_is_split_on_tabs(hostile) -> None:
    m = load_manifest(hostile["tsv"])
    assert not m.problems
    assert [(it.path, it.label, it.start, it.end) for it in m.items] == [
        ("b/x,y.mp4", "b", 0.0, 0.5),
        ("a/v0.mp4", "a", None, None),
    ]


def test_nul_in_a_jsonl_path_is_a_problem(hostile) -> None:
    m = load_manifest(hostile["nul_jsonl"])
    assert [it.path for it in m.items] == ["a/v1.mp4"]
    (p,) = m.problems
    assert "NUL" in p.error and "\0" not in p.path


def test_deeply_nested_jsonl_line_is_a_problem(hostile) -> None:
    m = load_manifest(hostile["deep_jsonl"])
    assert [it.path for it in m.items] == ["a/v1.mp4"]
    (p,) = m.problems
    assert "deep.jsonl:1" in p.error and "nested too deeply" in p.error


def test_symlink_loop_in_a_source_folder_is_a_problem(hostile) -> None:
    # A folder source follows links, but a link loop named like a video is a problem (under the path as laid
    # out), and the folder link back up (to videos/, above the source) is a loop that is not walked.
    m = load_manifest(hostile["videos"] / "a")
    assert sorted(it.path for it in m.items) == [f"v{j}.mp4" for j in range(4)]
    (p,) = m.problems
    assert p.path == "loop.mp4" and "cannot follow the link" in p.error and "Too many levels" in p.error


# -- 2. settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("sampling.fps=nan", "sampling.fps"),
        ("sampling.fps=inf", "sampling.fps"),
        ("sampling.fps=.inf", "sampling.fps"),
        ("sampling.clip_length=inf", "sampling.clip_length"),
        ("sampling.stride=nan", "sampling.stride"),
        ("extract.decode_timeout=inf", "extract.decode_timeout"),
        ("sampling.num_frames=1000000000", "sampling.num_frames"),
        ("sampling.max_frames=100000", "sampling.max_frames"),
        ("sampling.num_clips=100000", "sampling.num_clips"),
        ("sampling.fps=100000", "sampling.fps"),
    ],
)
def test_nonfinite_and_unbounded_settings_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}="):
        load_config(None, [override])


def test_caps_allow_their_limit() -> None:
    cfg = load_config(None, [f"sampling.num_frames={MAX_FRAMES_PER_CLIP}", "sampling.fps=1000"])
    assert cfg.sampling.num_frames == MAX_FRAMES_PER_CLIP and cfg.sampling.fps == 1000


def test_windows_and_frames_per_clip_are_capped_at_run_time() -> None:
    sliding = SamplingConfig(strategy="sliding", clip_length=0.01).validate()
    with pytest.raises(ConfigError, match=r"windows .* cap of 4096 per video; raise sampling.stride"):
        clip_windows(sliding, 3600.0)
    assert len(clip_windows(sliding, 40.0)) == 4000
    fps = SamplingConfig(strategy="fps", fps=100).validate()
    with pytest.raises(ConfigError, match=r"6000 frames, more than the cap of 4096 per clip; set sampling.max_frames"):
        sample_timestamps(fps, 0.0, 60.0)
    capped = SamplingConfig(strategy="fps", fps=1000, max_frames=16).validate()
    assert len(sample_timestamps(capped, 0.0, 3600.0)) == 16  # capped without planning 3.6M times first


def test_yaml_alias_bomb_is_refused(hostile) -> None:
    with pytest.raises(ConfigError, match=r"bomb.yaml: the YAML expands to more than 100000 values"):
        load_config(hostile["bomb_cfg"])


def test_non_utf8_config_file_is_one_line_naming_it(hostile, capsys) -> None:
    code = main(["extract", str(hostile["videos"] / "a"), "-o", "never", "--config", str(hostile["latin1_cfg"])])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "latin1.yaml: not a UTF-8 text file" in line
    assert not Path("never").exists()


# -- 3. CLI and probe ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", ["0", "-1"])
def test_predict_top_k_below_one_is_usage_error(hostile, capsys, k: str) -> None:
    code = main(["predict", str(hostile["head"]), str(hostile["videos"] / "a" / "v0.mp4"), "-k", k])
    assert code == 2 and f"--top-k={k}: must be >= 1" in one_line(capsys.readouterr().err)


def test_confusion_plot_needs_an_image_suffix(hostile, tmp_path, capsys) -> None:
    code = main(["evaluate", str(hostile["store"]), str(hostile["head"]), "--confusion", str(tmp_path / "cm.txt")])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and ".png, .pdf, .svg" in line and "cm.png" in line
    assert not (tmp_path / "cm.txt").exists()


def test_train_into_a_folder_that_cannot_be_created_is_one_line(hostile, capsys) -> None:
    out = hostile["a_file"] / "heads" / "h.skops"
    code = main(["train", str(hostile["store"]), "-o", str(out)])
    line = one_line(capsys.readouterr().err)
    assert code == 1 and "cannot create its folder" in line and str(hostile["a_file"]) in line


def test_joblib_head_does_not_overwrite_the_sidecar_of_a_skops_head(hostile, capsys) -> None:
    sidecar = hostile["head"].with_suffix(".json")
    before = sidecar.read_bytes()
    code = main(["train", str(hostile["store"]), "-o", str(hostile["head"].with_suffix(".joblib"))])
    line = one_line(capsys.readouterr().err)
    assert code == 1 and "h.json belongs to the existing head" in line and "h.skops" in line
    assert sidecar.read_bytes() == before and not hostile["head"].with_suffix(".joblib").exists()
    assert main(["evaluate", str(hostile["store"]), str(hostile["head"])]) == 0  # the pair still matches


def test_evaluate_warns_about_classes_the_head_never_saw(hostile, capsys) -> None:
    code = main(["evaluate", str(hostile["unseen_store"]), str(hostile["head"]), "--split", "all", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and "never seen by the head (zebra)" in one_line(captured.err)
    out = json.loads(captured.out)
    assert out["unseen_classes"] == ["zebra"] and out["n"] == 3
    # mean-class accuracy averages over all 3 classes of the clips scored, zebra's counting 0 (never 1.0 over a, b)
    per_class = [out["report"][c]["recall"] for c in ("a", "b")] + [0.0]
    assert out["mean_class_acc"] == pytest.approx(sum(per_class) / 3) and out["mean_class_acc"] <= 2 / 3 + 1e-9


def test_top5_is_omitted_for_five_classes_or_fewer(hostile, capsys) -> None:
    assert main(["evaluate", str(hostile["store"]), str(hostile["head"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top5"] is None
    assert main(["evaluate", str(hostile["store"]), str(hostile["head"])]) == 0
    text = capsys.readouterr().out
    assert "top1=" in text and "top5" not in text
    recorded = json.loads(hostile["head"].with_suffix(".json").read_text())["metrics"]["test"]
    assert recorded["top5"] is None

    from pipeline.probe.metrics import metrics

    proba = np.eye(6)[[1, 2, 3, 4, 5, 0]]  # every top-1 wrong; the true class is 2nd for each row
    proba = 0.5 * proba + 0.4 * np.eye(6) + 0.1 / 6
    assert metrics(proba, list("abcdef"), list("abcdef"))["top5"] == 1.0


def test_a_skops_file_holding_an_array_is_one_line(hostile, capsys) -> None:
    code = main(["evaluate", str(hostile["store"]), str(hostile["array_head"])])
    line = one_line(capsys.readouterr().err)
    assert code == 1 and "array.skops: holds a ndarray, not a classifier" in line


def test_train_on_a_store_being_written_gives_a_notice(hostile, tmp_path) -> None:
    with open_store(hostile["store"]).writer_lock():  # this process is a live writer of the store
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "train", str(hostile["store"]), "-o", str(tmp_path / "h.skops")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    notice = one_line(proc.stderr)
    assert "notice:" in notice and "is being written now" in notice and f"pid {os.getpid()}" in notice


def test_store_json_holding_a_list_is_one_line(hostile, capsys) -> None:
    code = main(["info", str(hostile["list_store"])])
    line = one_line(capsys.readouterr().err)
    assert code == 1 and "provenance is a JSON list, not an object" in line


# -- 4. no traceback anywhere ----------------------------------------------------------------------


def test_no_cli_command_prints_a_traceback_over_the_hostile_set(hostile, tmp_path) -> None:
    h, out = hostile, tmp_path
    v0 = h["videos"] / "a" / "v0.mp4"
    q = ["-q", "extract.num_workers=0", "sampling.num_frames=2"]
    runs: list[tuple[list[str], tuple[int, ...]]] = [
        (["extract", h["nan_csv"], "-o", out / "s1", *q], (3,)),
        (["extract", h["dup_csv"], "-o", out / "s2", *q], (3,)),
        (["extract", h["tsv"], "-o", out / "s3", *q], (0,)),
        (["extract", h["nul_jsonl"], "-o", out / "s4", *q], (3,)),
        (["extract", h["deep_jsonl"], "-o", out / "s5", *q], (3,)),
        (["extract", h["videos"] / "a", "-o", out / "s6", *q], (3,)),
        (["extract", h["videos"], "-o", out / "s7", "--config", h["latin1_cfg"]], (2,)),
        (["extract", h["videos"], "-o", out / "s8", "--config", h["bomb_cfg"]], (2,)),
        (["extract", h["videos"], "-o", out / "s9", "sampling.fps=inf", "sampling.strategy=fps"], (2,)),
        # several encoders: a bad row is recorded in both stores; a spec named twice, or two specs that
        # would write the same store folder, are refused before anything is built
        (
            [
                "extract",
                h["nan_csv"],
                "-o",
                out / "m1",
                "--encoder",
                "effnet-lite0",
                "--encoder",
                "openclip:ViT-B-32",
                *q,
            ],
            (3,),
        ),
        (["extract", h["videos"], "-o", out / "m2", "--encoder", "effnet-lite0", "--encoder", "default", *q], (2,)),
        (
            [
                "extract",
                h["videos"],
                "-o",
                out / "m3",
                "--encoder",
                "timm:resnet18@/a/w.pt",
                "--encoder",
                "timm:resnet18@/b/w.pt",
            ],
            (2,),
        ),
        (["info", h["list_store"]], (1,)),
        (["verify", h["list_store"]], (1,)),
        (["compact", h["list_store"]], (1,)),
        (["train", h["list_store"], "-o", out / "h.skops"], (1,)),
        (["train", h["store"], "-o", h["a_file"] / "h.skops"], (1,)),
        (["train", h["store"], "-o", h["head"].with_suffix(".joblib")], (1,)),
        (["evaluate", h["store"], h["head"], "--confusion", out / "cm.txt"], (2,)),
        (["evaluate", h["unseen_store"], h["head"], "--split", "all"], (0,)),
        (["evaluate", h["store"], h["array_head"]], (1,)),
        (["predict", h["head"], v0, "-k", "0"], (2,)),
        (["predict", h["head"], v0, "-k", "-1"], (2,)),
        (["predict", h["array_head"], v0], (1,)),
        (["export", h["list_store"], "-o", out / "e.parquet"], (1,)),
        (["export", h["store"], "-o", h["a_file"]], (2,)),
        (["export", h["store"], "-o", h["a_file"], "--format", "npy"], (1,)),
        (["export", h["store"], "-o", out / "e.parquet", "--pool", "seg99"], (2,)),
        (["export", h["store"], "-o", h["a_file"] / "x.parquet"], (1,)),
        (["train", h["store"], "-o", out / "t.skops", "--head", "attn"], (2,)),
        (["train", h["store"], "-o", out / "t.npz", "--head", "gru", "--pool", "seg2"], (2,)),
        (["predict", h["head"], v0, "--explain", "--explain-dir", h["a_file"] / "plots"], (1,)),
    ]

    def run(args: list) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pipeline", *map(str, args)]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = list(pool.map(run, [args for args, _ in runs]))
    for (args, codes), proc in zip(runs, procs):
        shown = " ".join(map(str, args[:2]))
        assert "Traceback" not in proc.stdout + proc.stderr, (shown, proc.stderr)
        assert proc.returncode in codes, (shown, proc.returncode, proc.stderr)
