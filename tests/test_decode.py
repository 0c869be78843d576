import numpy as np
import pytest
from media import FORMATS, pattern_frames, write_audio_only, write_video

from pipeline.errors import DecodeError
from pipeline.extract.decode import decode_at, probe


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_every_container_decodes_requested_times(tmp_path, suffix):
    frames = pattern_frames(48, kind=2)
    path = write_video(tmp_path / f"v{suffix}", frames, fps=24)
    info = probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.1)
    wanted = np.array([0.0, 0.5, 1.0, 1.99])
    clip = decode_at(path, lambda _: wanted, size=lambda h, w: (48, 64))
    assert clip.frames.shape == (4, 48, 64, 3) and clip.frames.dtype == np.uint8
    # the frame on screen at t has pts <= t < pts + 1/fps
    assert np.all(clip.timestamps <= wanted + 1e-6)
    assert np.all(wanted - clip.timestamps < 1 / 24 + 1e-6)


def test_frames_are_the_right_ones(tmp_path):
    # brightness encodes the frame index, so the decoded frame can be identified
    n = 30
    frames = np.repeat(np.linspace(10, 245, n).astype(np.uint8)[:, None, None, None], 64, 1).repeat(64, 2).repeat(3, 3)
    path = write_video(tmp_path / "ramp.mp4", frames, fps=10)
    clip = decode_at(path, lambda _: np.array([0.05, 1.25, 2.95]))
    idx = [int(np.argmin(np.abs(np.linspace(10, 245, n) - f.mean()))) for f in clip.frames]
    assert idx == [0, 12, 29]
    assert np.allclose(clip.timestamps, [0.0, 1.2, 2.9], atol=1e-6)


def test_seek_into_long_video_matches_decode_through(tmp_path):
    frames = pattern_frames(24 * 6, kind=1)
    path = write_video(tmp_path / "long.mp4", frames, fps=24, gop=24)
    wanted = np.array([3.3, 4.1, 5.6])
    seeking = decode_at(path, lambda _: wanted)
    assert np.allclose(seeking.timestamps, np.floor(wanted * 24) / 24, atol=1e-6)


def test_crop_applied(tmp_path):
    path = write_video(tmp_path / "c.mp4", pattern_frames(12), fps=12)
    clip = decode_at(path, lambda _: np.array([0.1]), size=lambda h, w: (64, 80), crop=lambda a: a[:, :, 8:72])
    assert clip.frames.shape == (1, 64, 64, 3)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "cannot open"),
        (lambda p: p.write_text("hello, I am text\n" * 100), "cannot open"),
        (lambda p: write_audio_only(p), "no video stream"),
    ],
)
def test_bad_files_raise_decode_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    if make is not None:
        make(path)
    with pytest.raises(DecodeError, match=reason) as err:
        decode_at(path, lambda _: np.array([0.0]))
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="not found"):
        probe(tmp_path / "nope.mp4")


# -- the cost model: seek only where it pays, decode keyframes only when asked, exact either way ----------

from media import index_frames, reference_decode  # noqa: E402

from pipeline.data.sampling import snap_to_keyframes  # noqa: E402
from pipeline.extract.decode import VideoReader, assign_frames  # noqa: E402


def _expected(ref_times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(ref_times, wanted + 1e-6, side="right") - 1, 0, None)


def _frames_at(path, wanted, **kw):
    with VideoReader(path) as r:
        chunks = list(r.iter_frames(wanted, chunk=3, **kw))
        stats = r.stats
    times = np.concatenate([c.timestamps for c in chunks])
    frames = np.concatenate([c.frames for c in chunks])
    idx = assign_frames(times, wanted)
    return times[idx], frames[idx], stats


@pytest.mark.parametrize(
    "suffix, gop, bframes",
    [(".mp4", 12, 2), (".mp4", 60, 2), (".mkv", 12, 2), (".webm", 12, 0), (".avi", 12, 0), (".mov", 12, 2)],
)
def test_gop_aware_decoding_is_pixel_exact(tmp_path, suffix, gop, bframes):
    """Random sparse and dense requests give exactly the frames a front-to-back decode shows then."""
    path = write_video(tmp_path / f"v{suffix}", index_frames(120), fps=24, gop=gop, bframes=bframes)
    ref_t, ref_f = reference_decode(path)
    rng = np.random.default_rng(gop)
    for k in (1, 3, 9, 40):
        wanted = np.sort(rng.uniform(-0.05, ref_t[-1] + 0.2, size=k))
        times, frames, _ = _frames_at(path, wanted)
        exp = _expected(ref_t, wanted)
        np.testing.assert_allclose(times, ref_t[exp], atol=1e-9)
        assert all(np.array_equal(a, ref_f[e]) for a, e in zip(frames, exp)), (suffix, k)


def test_sparse_request_seeks_and_decodes_only_what_it_needs(tmp_path):
    path = write_video(tmp_path / "g12.mp4", index_frames(240), fps=24, gop=12, bframes=2)
    wanted = np.array([1.5, 4.02, 7.7])
    _, _, stats = _frames_at(path, wanted)
    assert stats.seeks == 3 and stats.decoded < 3 * (12 + 4)  # one GOP (+ reorder delay) per sample, not 185
    _, _, through = _frames_at(path, np.arange(0, 9.9, 0.1))  # dense: decodes through, seeks only past keyframes
    assert through.decoded <= 240


def test_keyframe_mode_decodes_only_keyframes(tmp_path):
    path = write_video(tmp_path / "g24.mp4", index_frames(240), fps=24, gop=24, bframes=2)
    ref_t, ref_f = reference_decode(path)
    with VideoReader(path) as r:
        keys = r.keyframe_times()
    np.testing.assert_allclose(keys, np.arange(10.0), atol=1e-9)
    wanted = snap_to_keyframes(np.array([0.4, 2.6, 2.9, 8.2]), keys)
    np.testing.assert_allclose(wanted, [0, 3, 3, 8])
    times, frames, stats = _frames_at(path, wanted, keyframes_only=True)
    assert stats.decoded == 3  # 0, 3, 8: nothing between keyframes is decoded
    exp = _expected(ref_t, wanted)
    assert np.allclose(times, ref_t[exp]) and all(np.array_equal(a, ref_f[e]) for a, e in zip(frames, exp))


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_and_start_offset_give_true_times(tmp_path, suffix):
    rng = np.random.default_rng(3)
    gaps = rng.integers(15, 120, size=59)
    pts = [2000] + list(2000 + np.cumsum(gaps))  # starts at 2 s, variable spacing
    path = write_video(tmp_path / f"vfr{suffix}", index_frames(60), fps=24, gop=10, pts_ms=pts)
    true = (np.array(pts) - 2000) / 1000.0  # seconds from the first frame
    with VideoReader(path) as r:
        assert r.info.start_offset == pytest.approx(2.0, abs=1e-3)
        assert true[-1] < r.info.duration < true[-1] + 0.121  # measured from the first frame, not from 0
        np.testing.assert_allclose(r.frame_times(), true, atol=1e-3)
    wanted = np.sort(rng.uniform(0, true[-1], size=12))
    times, frames, _ = _frames_at(path, wanted)
    exp = _expected(true, wanted)
    np.testing.assert_allclose(times, true[exp], atol=1e-3)
    idx = [int(np.argmin([abs(int(f[20:, 20:].mean()) - (i * 7) % 256) for i in range(60)])) for f in frames]
    assert idx == exp.tolist()


def test_missing_duration_is_scanned(tmp_path):
    path = write_video(tmp_path / "live.mkv", index_frames(50), fps=25, container_options={"live": "1"})
    import av

    with av.open(str(path)) as c:
        assert c.streams.video[0].duration is None and c.duration is None  # the header really has none
    assert probe(path).duration == pytest.approx(2.0, abs=1e-6)
    clip = decode_at(path, lambda info: np.linspace(0, info.duration, 4, endpoint=False))
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.48, 1.0, 1.48], atol=1e-6)  # 25 fps: on screen at 0, .5, 1, 1.5


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied(tmp_path, rotation):
    """Phones store landscape pixels plus a display matrix; frames must come back upright."""
    frames = pattern_frames(6, height=48, width=96, kind=1)
    path = write_video(tmp_path / "rot.mp4", frames, fps=12, rotation=rotation)
    coded = reference_decode(path)[1][0]
    clip = decode_at(path, lambda _: np.array([0.0]))
    np.testing.assert_array_equal(clip.frames[0], np.rot90(coded, rotation // 90))
    # the resize target is computed on the upright size: short side 24 of a 96x48 (upright) frame
    small = decode_at(path, lambda _: np.array([0.0]), size=lambda h, w: (h // 2, w // 2))
    assert small.frames.shape[1:3] == ((48, 24) if rotation % 180 else (24, 48))
