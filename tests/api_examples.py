"""Run the Python examples of docs/api.md, in order, in a folder of small encoded videos.

``tests/test_api.py`` runs them against the checkout; ``.ci/run`` runs this file with the Python of a fresh
``pip install .`` (``python tests/api_examples.py``), so that the examples work as the README installs them.
It needs only what vidprobe itself installs (numpy and PyAV to encode the videos), no pytest.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py

from media import pattern_frames, write_video  # noqa: E402

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(page: Path = API_DOC) -> list[str]:
    """The page's fenced ``python`` code blocks, in order."""
    return _PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))


def make_videos(root: Path, per_class: int = 6) -> None:
    """``root/videos/<label>/clipJ.mp4``: two labels whose frames differ (stripes' orientation and colour)."""
    for kind, label in enumerate(["stripes_h", "stripes_v"]):
        for j in range(per_class):
            frames = pattern_frames(16, height=64, width=80, kind=kind, seed=j)
            write_video(root / "videos" / label / f"clip{j}.mp4", frames, fps=8)


def run_examples(folder: Path, page: Path = API_DOC) -> int:
    """Execute the page's python blocks one after another in one namespace, with ``folder`` as the working
    folder (as a reader pasting them would); returns how many ran."""
    blocks = python_blocks(page)
    namespace: dict[str, object] = {"__name__": "__api_examples__"}
    before = Path.cwd()
    os.chdir(folder)
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page.name}[python block {i + 1}]", "exec"), namespace)
    finally:
        os.chdir(before)
    return len(blocks)


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vidprobe-api-") as tmp:
        make_videos(Path(tmp))
        n = run_examples(Path(tmp))
    print(f"docs/api.md: {n} python examples ran in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
