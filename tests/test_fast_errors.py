"""Every command checks its arguments and inputs before importing the model stack: a mistake costs no torch.

All the mistakes run in ONE fresh interpreter, one after another through ``pipeline.cli.main``; after each,
the wrapper records the exit code, what reached stderr, whether torch (or timm/open_clip) has been
imported by then, so the first command that imports too early is named, and how long it took. Time is
asserted for outputs that cannot be written (answered before any work, in under a second; they are also run
on a real read-only filesystem, a tmpfs mounted read-only in a user namespace) and for the guidance on
arguments given in the wrong places (``_guidance``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.probe.heads.files import save_head
from pipeline.probe.heads.fitting import fit_head
from pipeline.probe.heads.settings import HeadConfig
from pipeline.store import ShardWriter, create_or_open

REPO = Path(__file__).resolve().parents[1]
WRAPPER = """
import contextlib, io, json, sys, time
from pipeline.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err, t0 = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
    heavy = [m for m in ("torch", "timm", "open_clip") if m in sys.modules]
    out.append([argv, rc, err.getvalue().strip().splitlines(), heavy, time.perf_counter() - t0])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A real store (random 8-d embeddings) and an .npz head trained for it."""
    base = tmp_path_factory.mktemp("fast")
    prov = {
        "encoder": "effnet-lite0",
        "weights_id": "w",
        "dim": 8,
        "preprocess": {},
        "sampling": {"strategy": "uniform", "num_frames": 2},
    }
    store = create_or_open(base / "store", prov)
    rng = np.random.default_rng(0)
    with ShardWriter(store) as w:
        for j in range(12):
            w.add(f"v{j}.mp4", None, None, "ab"[j % 2], "", rng.normal(size=(2, 8)).astype(np.float32), np.arange(2))
    result = fit_head(HeadConfig(kind="knn", ks=(1,)), rng.normal(size=(6, 8)), ["a", "b"] * 3)
    save_head(base / "h.npz", result, {**prov, "pool": "mean", "head": "knn"})
    (base / "videos").mkdir()
    (base / "videos" / "x.mp4").write_bytes(b"not decoded: the command fails before")
    (base / "bench.yaml").write_text("stores:\n  - {dataset: x, path: nope}\npoolings: [nosuch]\n")
    (base / "bench-ok.yaml").write_text(
        f"stores:\n  - {{dataset: x, path: {base / 'store'}}}\npoolings: [mean]\nheads: [logreg]\n"
    )
    (base / "bench-done").mkdir()  # the record a finished run leaves (tests/test_benchmark.py makes a real one)
    (base / "bench-done" / "benchmark.json").write_text(json.dumps({"name": "x", "finished": "2026-01-01T00:00:00Z"}))
    good = f"stores:\n  - {{dataset: x, path: {base / 'store'}}}\npoolings: [mean]\nheads: [{{kind: knn}}]\n"
    (base / "bench-proc.yaml").write_text(good + "output: /proc/bench\n")
    return {"base": base, "store": base / "store", "head": base / "h.npz", "videos": base / "videos"}


def _unwritable(s: dict[str, Path], out: str) -> list[tuple[list[str], int, str]]:
    """Every command that writes, told to write under ``out`` (a folder nothing can be created in)."""
    store, head, video = str(s["store"]), str(s["head"]), str(s["videos"] / "x.mp4")
    return [
        (["evaluate", store, head, "--confusion", f"{out}/cm.png"], 1, f"{out}/cm.png"),
        (["predict", head, video, "--explain", "--explain-dir", out], 1, out),
        (["predict", head, video, "--explain", "--explain-dir", f"{out}/timelines"], 1, f"{out}/timelines"),
        (["export", store, "-o", f"{out}/x.parquet"], 1, f"{out}/x.parquet"),
        (["export", store, "-o", f"{out}/x", "--format", "npy"], 1, f"{out}/x"),
        (["train", store, "-o", f"{out}/h.npz"], 1, f"{out}/h.npz"),
        (["extract", str(s["videos"]), "-o", f"{out}/store"], 1, f"{out}/store"),
        (["benchmark", str(s["base"] / "bench-proc.yaml"), "-o", f"{out}/bench"], 1, f"{out}/bench"),
        (["demo", "-o", f"{out}/demo"], 1, f"{out}/demo"),
    ]


def _mistakes(s: dict[str, Path]) -> list[tuple[list[str], int, str]]:
    """(argv, expected exit code, text the one-line error must contain)."""
    base, store, head, videos = s["base"], str(s["store"]), str(s["head"]), str(s["videos"])
    nostore, nohead = str(base / "nostore"), str(base / "nohead.npz")
    return [
        (["extract", str(base / "novideos"), "-o", str(base / "o1")], 2, "novideos"),
        (["extract", videos, "-o", str(base / "o2"), "sampling.num_frames=0"], 2, "num_frames"),
        (["extract", videos, "-o", str(base / "o3"), "--encoder", "nosuch:model"], 2, "nosuch"),
        (["extract", videos, "-o", str(base / "o4"), "extract.device=tpu"], 2, "tpu"),
        (["extract", videos, "-o", store, "-q"], 1, "sampling"),  # the store was made with other settings
        (["extract", videos, "-o", head], 1, "h.npz"),  # a file, not a store folder
        (["train", nostore, "-o", str(base / "t.npz")], 1, "nostore"),
        (["train", store, "-o", str(base / "t.txt")], 2, ".npz"),
        (["train", store, "-o", str(base / "t.npz"), "--pool", "nosuch"], 2, "nosuch"),
        (["train", store, "-o", str(base / "t.npz"), "--val-fraction", "1.5"], 2, "val_fraction"),
        (["train", store, "-o", str(base / "t.npz"), "--device", "tpu"], 2, "tpu"),
        (["evaluate", nostore, head], 1, "nostore"),
        (["evaluate", store, nohead], 1, "nohead.npz"),
        (["evaluate", store, head, "--confusion", str(base / "cm.txt")], 2, "cm.txt"),
        (["predict", nohead, videos + "/x.mp4"], 1, "nohead.npz"),
        (["predict", head, str(base / "missing.mp4")], 3, "missing.mp4"),
        (["predict", head, videos + "/x.mp4", "-k", "0"], 2, "top-k"),
        (["predict", head, videos + "/x.mp4", "--device", "tpu"], 2, "tpu"),
        (["benchmark", str(base / "nobench.yaml")], 2, "nobench.yaml"),
        (["benchmark", str(base / "bench.yaml")], 2, "nosuch"),
        (["benchmark", str(base / "bench.yaml"), "--device", "tpu"], 2, "tpu"),
        (["info", nostore], 1, "nostore"),
        (["verify", nostore], 1, "nostore"),
        (["compact", nostore], 1, "nostore"),
        (["benchmark", str(base / "bench-proc.yaml")], 1, "/proc/bench"),  # the YAML's output
        *_unwritable(s, "/proc"),
    ]


def _guidance(s: dict[str, Path]) -> list[tuple[list[str], int, str]]:
    """Arguments in each other's places, a misspelt encoder, a finished benchmark folder: the hint names the
    command meant."""
    base, store, head, videos = s["base"], str(s["store"]), str(s["head"]), str(s["videos"])
    video = videos + "/x.mp4"
    return [
        (
            ["evaluate", head, store],
            2,
            f"{head} is a head file and {store} a feature store: did you mean `vidprobe evaluate {store} {head}`?",
        ),
        (["train", head, "-o", store], 2, f"did you mean `vidprobe train {store} -o {head}`?"),
        (["predict", store, head], 2, f"did you mean `vidprobe evaluate {store} {head}`?"),
        (["predict", video, head], 2, f"did you mean `vidprobe predict {head} {video}`?"),
        (["evaluate", store, store], 2, f"{store} is a feature store, not a head file"),
        (["info", head], 2, f"{head} is a head file, not a feature store: the command is `vidprobe info STORE`"),
        (["verify", head], 2, "`vidprobe verify STORE`"),
        (["compact", head], 2, "`vidprobe compact STORE`"),
        (["export", head, "-o", str(base / "e.parquet")], 2, "`vidprobe export STORE -o OUT`"),
        (["extract", videos, "-o", str(base / "o5"), "--encoder", "effnet-lite"], 2, "did you mean effnet-lite0?"),
        (["extract", videos, "-o", str(base / "o6"), "--encoder", "openclp:ViT-B-32"], 2, "openclip:ViT-B-32?"),
        (["benchmark", str(base / "bench-ok.yaml"), "-o", str(base / "bench-done")], 2, "--overwrite"),
    ]


def _run(cases: list[tuple[list[str], int, str]], prefix: list[str] = ()) -> list[list]:
    """Each case's [argv, exit code, stderr lines, heavy modules imported, seconds], from one fresh interpreter
    (``prefix``: a command it runs under)."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", WRAPPER, json.dumps([argv for argv, _, _ in cases])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(cases: list[tuple[list[str], int, str]], results: list[list], timed: set[str]) -> None:
    for (argv, code, needle), (_, rc, err, heavy, seconds) in zip(cases, results, strict=True):
        assert heavy == [], f"{argv}: imported {heavy} before failing ({err})"
        assert rc == code, (argv, rc, err)
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], (argv, err)
        if needle in timed:
            assert seconds < 1.0, f"{argv}: answered after {seconds:.2f} s"


def test_mistakes_fail_in_one_line_before_torch_is_imported(setup) -> None:
    before = sorted(p.relative_to(setup["base"]) for p in setup["base"].rglob("*"))
    cases = _mistakes(setup)
    _check(cases, _run(cases), {needle for _, _, needle in _unwritable(setup, "/proc")})
    assert sorted(p.relative_to(setup["base"]) for p in setup["base"].rglob("*")) == before  # nothing written


def test_arguments_in_the_wrong_places_are_answered_with_the_command_meant_within_a_second(setup) -> None:
    cases = _guidance(setup)
    _check(cases, _run(cases), {needle for _, _, needle in cases})


def test_outputs_on_a_read_only_filesystem_fail_in_one_line_before_any_work(setup, tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o ro tmpfs "{ro}" && exec "$@"', "-"]
    if shutil.which("unshare") is None or subprocess.run([*mount, "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here to mount a read-only filesystem in")
    cases = _unwritable(setup, str(ro))
    results = _run(cases, mount)
    _check(cases, results, {needle for _, _, needle in cases})
    assert all("(read-only filesystem" in err[0] for _, _, err, _, _ in results), results
