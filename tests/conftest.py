from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py

from media import pattern_frames, write_video  # noqa: E402

# precision=auto means bf16 on a CPU with AMX/AVX512-BF16 and fp32 elsewhere: the suite pins the fp32
# verdict so its tolerances mean the same on every CPU (subprocesses inherit it); bf16 tests force theirs.
os.environ.setdefault("VIDPROBE_CPU_BF16", "0")


@pytest.fixture(scope="session")
def labeled_folder(tmp_path_factory) -> Path:
    """root/<label>/<video> with 2 classes x 4 videos over mixed containers/codecs, plus a corrupt file."""
    root = tmp_path_factory.mktemp("videos")
    suffixes = [".mp4", ".webm", ".mkv", ".avi", ".mov"]
    n = 0
    for kind, label in enumerate(["stripes_h", "stripes_v"]):
        for j in range(4):
            suffix = suffixes[n % len(suffixes)]
            n += 1
            write_video(root / label / f"clip{j}{suffix}", pattern_frames(36, kind=kind, seed=j), fps=12)
    (root / "stripes_h" / "broken.mp4").write_bytes(b"this is not a video at all\n" * 20)
    return root


@pytest.fixture(scope="session")
def effnet():
    """The offline default encoder on CPU, built once for the whole run (it is frozen: tests only read it)."""
    from pipeline.encoders import create_encoder

    return create_encoder("effnet-lite0", device="cpu")
