import numpy as np
import pytest
from media import FORMATS, pattern_frames, write_audio_only, write_video

from pipeline.decode import decode_at, probe
from pipeline.errors import DecodeError


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
