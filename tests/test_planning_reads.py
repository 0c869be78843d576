"""Planning a fresh store reads no source it need not: a local WebDataset sample and a frame folder with
nothing recorded are not fingerprinted while planning (as a URL gets no request); their decoder fingerprints
what it opens, so the store still records a complete fingerprint. Once something is recorded the comparison
decides, from stats and the member table while the shard's time is unchanged (a rewritten sample or frame
is extracted again: tests/test_webdataset.py, tests/test_frame_folders.py).
Real parts: real encoded videos in a tar shard written by ``webdataset``, PNG frames, real stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import webdataset as wds
from media import pattern_frames, write_video
from PIL import Image

from pipeline.config import load_config
from pipeline.data.frames import folder_fingerprint
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.data.webdataset import member_fingerprint
from pipeline.extract.entry import extract
from pipeline.extract.job import ExtractSummary, build_provenance, plan_tasks
from pipeline.store import create_or_open, open_store

OPTS = ("sampling.num_frames=3", "extract.num_workers=0", "sampling.frame_rate=12")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """4 real videos as one local WebDataset shard, and 2 of them as folders of PNG frames."""
    base = tmp_path_factory.mktemp("planning")
    (base / "shards").mkdir()
    with wds.TarWriter(str(base / "shards" / "00000.tar")) as sink:
        for i in range(4):
            video = write_video(base / "videos" / f"v{i}.mp4", pattern_frames(24, kind=i % 2, seed=i), fps=12)
            sink.write({"__key__": f"{i:08d}", "mp4": video.read_bytes(), "cls": str(i % 2).encode()})
    for i in range(2):
        folder = base / "frames" / f"c{i}" / f"v{i}"
        folder.mkdir(parents=True)
        for n, frame in enumerate(pattern_frames(24, height=48, width=64, kind=i, seed=i), start=1):
            Image.fromarray(frame).save(folder / f"img_{n:05d}.png")
    return {"shard": base / "shards" / "00000.tar", "frames": base / "frames", "videos": base / "videos"}


def _plan(manifest: Manifest, store: Path, effnet) -> tuple[int, dict, int]:
    """(tasks planned, the fingerprint planning took of each, bytes planning read) for ``manifest`` into
    ``store`` (made if new)."""
    cfg = load_config(None, list(OPTS))
    made = create_or_open(store, build_provenance(effnet, cfg))
    sources: dict = {}
    before = _bytes_read()
    todo, _ = plan_tasks(manifest, made, cfg.sampling, ExtractSummary(str(store)), sources=sources)
    return len(todo), sources, _bytes_read() - before


def _bytes_read() -> int:
    """Bytes this process has read through ``read`` calls so far (Linux ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts reads with Linux /proc/self/io")
def test_planning_a_fresh_store_reads_no_webdataset_sample(sources, effnet, tmp_path):
    manifest = load_manifest(str(sources["shard"]))  # listing reads the shard's member table; planning, nothing
    _plan(manifest, tmp_path / "warm", effnet)  # imports: not measured
    planned, fingerprints, read = _plan(manifest, tmp_path / "store", effnet)
    members = sum(p.stat().st_size for p in sources["videos"].iterdir())
    assert read < members / 10, (read, members)  # fingerprinting them read every member (up to 128 KiB each)
    assert planned == 4 and list(fingerprints.values()) == [None] * 4
    (summary,) = extract(manifest, tmp_path / "store", load_config(None, list(OPTS)), encoders=[effnet], progress=False)
    assert summary.done == 4
    recorded = open_store(tmp_path / "store").index().current_sources()  # the decoder's, complete
    assert recorded == {f"00000.tar/{i:08d}": member_fingerprint(sources["shard"], f"{i:08d}") for i in range(4)}
    # re-planning the stored samples compares each as a file (member size, shard time): no member is read
    planned, _, read = _plan(manifest, tmp_path / "store", effnet)
    assert planned == 0 and read < members / 10, (read, members)  # each sample's first and last 64 KiB were read


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts reads with Linux /proc/self/io")
def test_a_failure_without_a_decoder_fingerprint_records_the_samples_size_and_time(sources):
    """What ``ExtractionJob.deliver`` records for a failure whose decoder took no fingerprint (a decode timeout):
    a local sample's member size and shard time, a frame folder's stats; no member byte read. A shard fixed
    since (rewritten: another time) then makes the failed sample another file, tried again."""
    from pipeline.store.layout import UNKNOWN_SOURCE
    from pipeline.store.sources import fingerprint, quick_fingerprint, same_file

    sample = f"{sources['shard']}/00000002"
    quick_fingerprint(sample)  # imports and the member table: not measured
    before = _bytes_read()
    quick = quick_fingerprint(sample)
    assert _bytes_read() - before < 4096
    full = member_fingerprint(sources["shard"], "00000002")
    assert quick is not None and full is not None and quick == (full[0], full[1], UNKNOWN_SOURCE)
    assert same_file(quick, full) and fingerprint(sample, quick, complete=False) == quick
    folder = sources["frames"] / "c0" / "v0"
    assert quick_fingerprint(folder) == folder_fingerprint(folder)


def test_planning_a_fresh_store_fingerprints_no_frame_folder(sources, effnet, tmp_path):
    manifest = load_manifest(str(sources["frames"]))
    planned, fingerprints, _ = _plan(manifest, tmp_path / "store", effnet)
    assert planned == 2 and fingerprints == {"c0/v0": None, "c1/v1": None}
    (summary,) = extract(manifest, tmp_path / "store", load_config(None, list(OPTS)), encoders=[effnet], progress=False)
    assert summary.done == 2
    recorded = open_store(tmp_path / "store").index().current_sources()  # the decoder's, complete
    assert recorded == {f"c{i}/v{i}": folder_fingerprint(sources["frames"] / f"c{i}" / f"v{i}") for i in range(2)}
    assert _plan(manifest, tmp_path / "store", effnet)[0] == 0  # recorded: compared, the same folders
