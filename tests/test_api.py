"""docs/api.md's examples run as written, on real encoded videos with the offline effnet-lite0 encoder,
and ``pipeline.api`` imports no torch (the commands' checks stay cheap from Python too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from api_examples import make_videos, python_blocks, run_examples

REPO = Path(__file__).resolve().parents[1]


def test_every_api_function_has_a_runnable_example() -> None:
    code = "\n".join(python_blocks())
    for name in ("extract", "open_store", "train", "load_head", "predict"):
        assert f"api.{name}(" in code, f"docs/api.md: no example calls api.{name}"


def test_api_examples_run_on_real_videos(tmp_path, capsys) -> None:
    make_videos(tmp_path)
    assert run_examples(tmp_path) == 5
    out = capsys.readouterr().out
    assert "12 clips extracted, 0 skipped, 0 failed" in out
    assert (tmp_path / "heads" / "mine.npz").is_file() and (tmp_path / "heads" / "mine.json").is_file()
    predicted = [line for line in out.splitlines() if line.startswith("videos/")]
    assert len(predicted) == 2 and all("stripes_" in line for line in predicted), out


def test_importing_the_api_imports_no_torch() -> None:
    code = "import sys, pipeline.api; print(sorted(m for m in ('torch', 'timm', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
