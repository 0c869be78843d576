"""Does a small job start working at once? `vidprobe extract` of 2 short videos vs building its encoder alone.

Sets itself up first (not timed): renders 2 short H.264 clips of real photographs panned by a moving camera
(``predict_latency._render``) and saves a randomly initialised open_clip ViT-B-32 with ``torch.save`` (the
``openclip:ViT-B-32@/path/file.pt`` local-checkpoint form: no network). Then, each in a fresh Python process,
alternating, median of ``--repeats`` runs:

* ``build``: ``import pipeline.encoders; create_encoder(SPEC)`` -- the interpreter, torch, open_clip and the
  model with its checkpoint, nothing else (it then ends with ``os._exit``, as ``extract`` does: the
  interpreter's teardown with torch loaded is no part of building);
* ``extract``: ``vidprobe extract videos/ -o NEW_STORE --encoder SPEC -q``, end to end (manifest, store,
  decoder start, decode, encode, shard write, exit);
* with ``--before REPO``: the same ``extract`` run from another checkout (e.g. the code before a change).

Beside the wall time, the CPU seconds of each main process (the decoder processes are forked by a server
that is not the benchmark's child, so they are not counted). Target: ``extract`` <= 1.3 x ``build``: the
decoder processes start while the encoder is built and the process skips torch's teardown, so a small job
costs little more than its model. Timings depend on the load: the JSON records the load average and the CPU.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from predict_latency import _render  # noqa: E402  (this folder: the same real clips)

from pipeline.versions import cpu_model  # noqa: E402

TARGET = 1.3
BUILD = "import os, sys; from pipeline.encoders import create_encoder; create_encoder(sys.argv[1]); os._exit(0)"


def setup(work: Path) -> str:
    """Two clips and a local ViT-B-32 checkpoint (random weights); returns the encoder spec."""
    import open_clip
    import torch

    for j, photo in enumerate(("chelsea", "coffee")):
        _render(work / "videos" / photo / f"v{j}.mp4", photo, seed=j, frames=36)
    ckpt = work / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), ckpt)
    return f"openclip:ViT-B-32@{ckpt}"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _wall(cmd: list[str], cpu: list[float], repo: Path = REPO) -> float:
    """Wall seconds of ``cmd`` in a new process; its CPU seconds (with its decoder processes) go to ``cpu``."""
    c, t = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    wall = time.perf_counter() - t
    cpu.append(_children_cpu() - c)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each (median reported; default 3)")
    ap.add_argument("--before", type=Path, metavar="REPO", help="also time extract from this checkout")
    args = ap.parse_args()
    repeats = max(1, args.repeats)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="vidprobe-startup-") as tmp:
        work = Path(tmp)
        print("setting up (render 2 clips, save a random ViT-B-32 checkpoint) ...", flush=True)
        spec = setup(work)
        load_before = os.getloadavg()
        runs: dict[str, list[float]] = {"build": [], "extract": [], **({"before": []} if args.before else {})}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        extract = [py, "-m", "pipeline", "extract", str(work / "videos"), "--encoder", spec, "-q", "-o"]
        for i in range(repeats):
            runs["build"].append(_wall([py, "-c", BUILD, spec], cpu["build"]))
            runs["extract"].append(_wall([*extract, str(work / f"store{i}")], cpu["extract"]))
            if args.before:
                runs["before"].append(_wall([*extract, str(work / f"before{i}")], cpu["before"], args.before.resolve()))
        load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = med["extract"] / med["build"]
    cpu = cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"median of {repeats} fresh-process run(s): wall s, CPU s of the main process (not its decoders)")
    print(f"  build the encoder alone (ViT-B-32, local checkpoint)      {med['build']:6.2f} {med_cpu['build']:6.2f}")
    print(
        f"  vidprobe extract, 2 short videos (8 frames each)          {med['extract']:6.2f} {med_cpu['extract']:6.2f}"
    )
    print(f"  ratio extract / build                                     {ratio:6.2f}   (target <= {TARGET})")
    if args.before:
        print(
            f"  extract from {args.before} (before): {med['before']:.2f} {med_cpu['before']:.2f}, "
            f"ratio {med['before'] / med['build']:.2f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "cpu": cpu,
                "cores": os.cpu_count(),
                "loadavg_before": load_before[0],
                "loadavg_after": load_after[0],
                "repeats": repeats,
                "build_s": round(med["build"], 3),
                "extract_s": round(med["extract"], 3),
                "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
                "cpu_s": {k: round(v, 3) for k, v in med_cpu.items()},
                "ratio": round(ratio, 3),
                **(
                    {"before_s": round(med["before"], 3), "before_ratio": round(med["before"] / med["build"], 3)}
                    if args.before
                    else {}
                ),
                "target_ratio_le_1_3": ratio <= TARGET,
            }
        )
    )


if __name__ == "__main__":
    main()
