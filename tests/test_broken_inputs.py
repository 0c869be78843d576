"""A corpus of broken and odd inputs: each is extracted correctly or recorded with a reason; no crash, no hang.

The extraction runs as a real ``python -m pipeline extract`` process with a time limit, so a decoder
crash or hang fails the test instead of taking pytest down with it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import pattern_frames, write_audio_only, write_video

from pipeline.cli import main
from pipeline.store import open_store
from pipeline.store.tools import verify_store

REPO = Path(__file__).resolve().parents[1]
UNICODE = "ünï cødé dir/clip with spaces ✓.mp4"


def build_corpus(root: Path) -> dict[str, str]:
    """Files under ``root`` and what must become of each: ``ok``, ``failed:<reason>`` or ``either``."""
    good = write_video(root / "good.mp4", pattern_frames(24, 48, 64, kind=0), fps=12)
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])  # the moov index is at the end: unopenable
    mkv = write_video(root / "tmp.mkv", pattern_frames(24, 48, 64, kind=1), fps=12).read_bytes()
    (root / "truncated.mkv").write_bytes(mkv[: len(mkv) * 6 // 10])  # streamable: the first frames decode
    (root / "tmp.mkv").unlink()
    flipped = bytearray(data)
    for i in np.random.default_rng(0).integers(len(data) // 5, len(data) * 4 // 5, 60):
        flipped[i] ^= 0xFF
    (root / "bitflip.mp4").write_bytes(bytes(flipped))
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("just some text, renamed\n" * 50)
    write_audio_only(root / "audio_only.mp4")
    write_video(root / "single_frame.mp4", pattern_frames(1, 48, 64, kind=2), fps=12)
    big = np.full((2, 3000, 4000, 3), 90, np.uint8)  # 12 MP frames, a few KB of H.264
    big[:, :1500] = 200
    write_video(root / "huge_4000x3000.mp4", big, fps=2)
    write_video(root / UNICODE, pattern_frames(12, 48, 64, kind=3), fps=12)
    noperm = write_video(root / "noperm.mp4", pattern_frames(12, 48, 64, kind=1), fps=12)
    os.chmod(noperm, 0)
    return {
        "good.mp4": "ok",
        "truncated.mp4": "failed:cannot open",
        "truncated.mkv": "either",
        "bitflip.mp4": "either",
        "zero.mp4": "failed:cannot open",
        "text.mp4": "failed:cannot open",
        "audio_only.mp4": "failed:no video stream",
        "single_frame.mp4": "ok",
        "huge_4000x3000.mp4": "ok",
        UNICODE: "ok",
        # root reads a mode-000 file anyway; test_unreadable_file_is_a_decode_error covers a real refusal
        "noperm.mp4": "ok" if os.geteuid() == 0 else "failed:permission denied",
        "missing.mp4": "failed:not found",
        "../outside.mp4": "failed:escapes",
    }


@pytest.mark.slow
def test_broken_and_odd_inputs_are_extracted_or_recorded(tmp_path, capsys):
    root = tmp_path / "corpus"
    expect = build_corpus(root)
    manifest = root / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f'"{p}",x\n' for p in expect), encoding="utf-8")
    store = tmp_path / "store"
    args = [
        "extract",
        str(manifest),
        "-o",
        str(store),
        "--json",
        "-q",
        "sampling.num_frames=2",
        "extract.batch_size=8",
        "extract.num_workers=1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr  # finished; some clips failed
    summary = json.loads(proc.stdout)
    assert summary["done"] + summary["failed"] == len(expect) and summary["skipped"] == 0

    s = open_store(store)
    stored = dict(zip(s.videos, range(len(s))))
    failed = {f["path"]: f for f in s.failures()}
    for path, want in expect.items():
        assert (path in stored) != (path in failed), f"{path}: stored={path in stored} failed={path in failed}"
        if path in stored:
            assert want in ("ok", "either"), f"{path} was extracted but should have failed ({want})"
            frames = s.frames(stored[path])
            assert frames.shape == (2, 1280) and np.all(np.isfinite(frames))
        else:
            f = failed[path]
            assert want.startswith("failed") or want == "either", f"{path} failed: {f['error']}"
            assert Path(path).name in f["error"] and f["stage"] in ("manifest", "decode", "encode") and f["time"] > 0
            if want.startswith("failed:"):
                assert want.split(":", 1)[1] in f["error"], f["error"]
    assert verify_store(store).ok

    # Fix one broken file: --retry-failed tries only the failed clips; the fixed one leaves `info`.
    write_video(root / "zero.mp4", pattern_frames(12, 48, 64, kind=0), fps=12)
    n_failed = len(failed)
    code = main([*args[:-1], "extract.num_workers=0", "--retry-failed"])
    retry = json.loads(capsys.readouterr().out)
    assert (
        code == 3 and retry["done"] == 1 and retry["skipped"] == len(stored) and retry["failed"] == n_failed - 2
    )  # not the manifest row
    info_code = main(["info", str(store), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert (
        info_code == 0
        and info["failures"] == n_failed - 1
        and "zero.mp4" not in [f["path"] for f in info["failure_list"]]
    )
    assert info["clips"] == len(stored) + 1
    # Without --retry-failed nothing is tried again, and the summary says why.
    assert main(args[:-1] + ["extract.num_workers=0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["done"] == 0 and again["skipped_failed"] == n_failed - 1 - 1  # minus zero.mp4, minus the manifest row


UNREADABLE = """
import os, sys
import av  # imported before dropping root: the interpreter's own files are not readable by nobody
from pipeline.extract.decode import decode_at
from pipeline.errors import DecodeError
os.setgid(65534); os.setuid(65534)  # drop root, which reads mode-000 files regardless
try:
    decode_at(sys.argv[1], lambda info: [0.0])
except DecodeError as exc:
    print(exc)
"""


def test_unreadable_file_is_a_decode_error(tmp_path):
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="vidprobe-perm-"))  # /tmp itself is traversable by anyone
    try:
        os.chmod(folder, 0o755)
        path = write_video(folder / "locked.mp4", pattern_frames(6, 32, 32), fps=6)
        os.chmod(path, 0)
        if os.geteuid() != 0:
            from pipeline.errors import DecodeError
            from pipeline.extract.decode import decode_at

            with pytest.raises(DecodeError, match="permission denied"):
                decode_at(path, lambda info: [0.0])
            return
        proc = subprocess.run(
            [sys.executable, "-c", UNREADABLE, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
            pytest.skip("running as root without CAP_SETUID: cannot make a file unreadable to this process")
        assert proc.returncode == 0, proc.stderr
        assert "permission denied" in proc.stdout and str(path) in proc.stdout
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
