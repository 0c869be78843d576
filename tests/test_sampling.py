import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import SamplingConfig
from pipeline.data.sampling import clip_window, fps_timestamps, sample_timestamps, uniform_timestamps

windows = st.tuples(st.floats(0, 1000), st.floats(0.01, 500)).map(lambda t: (t[0], t[0] + t[1]))


@given(windows, st.integers(1, 64))
def test_uniform_inside_sorted_and_evenly_spaced(window, t):
    start, end = window
    ts = uniform_timestamps(start, end, t)
    assert len(ts) == t
    assert np.all(ts > start) and np.all(ts < end)
    if t > 1:
        d = np.diff(ts)
        assert np.allclose(d, (end - start) / t)


@given(windows, st.floats(0.1, 60), st.integers(0, 50))
def test_fps_rate_and_cap(window, fps, cap):
    start, end = window
    ts = fps_timestamps(start, end, fps, cap)
    assert len(ts) >= 1
    assert ts[0] == start and np.all(ts < end + 1e-9)
    assert np.all(np.diff(ts) > 0)
    if cap:
        assert len(ts) <= cap


def test_clip_window_fills_open_end_and_clamps():
    assert clip_window(10.0, None, None) == (0.0, 10.0)
    assert clip_window(10.0, 2.0, 30.0) == (2.0, 10.0)


def test_sample_timestamps_dispatch():
    assert len(sample_timestamps(SamplingConfig(strategy="uniform", num_frames=5), 0, 2)) == 5
    assert len(sample_timestamps(SamplingConfig(strategy="fps", fps=2.0), 0, 3)) == 6


# -- every strategy ---------------------------------------------------------------------------------

import dataclasses  # noqa: E402

import pytest  # noqa: E402

from pipeline.data.sampling import (  # noqa: E402
    KEY_DECIMALS,
    clip_windows,
    every_n_timestamps,
    keyframe_timestamps,
    multiclip_windows,
    sampling_identity,  # noqa: E402
    sliding_windows,
    snap_to_keyframes,
)
from pipeline.errors import ConfigError  # noqa: E402

frame_tables = st.lists(st.floats(0.001, 0.5), min_size=1, max_size=200).map(lambda gaps: np.cumsum([0.0] + gaps))


lengths = st.one_of(st.just(0.0), st.floats(0.01, 100))


@given(windows, st.integers(1, 12), lengths)
def test_multiclip_windows_spread_evenly_inside(window, k, length):
    start, end = window
    ws = multiclip_windows(start, end, k, length)
    assert 1 <= len(ws) <= k and ws == multiclip_windows(start, end, k, length)  # deterministic
    assert len(set(ws)) == len(ws)
    tol = 10.0**-KEY_DECIMALS
    for s, e in ws:
        assert start - tol <= s < e <= end + tol
    lengths = [e - s for s, e in ws]
    assert max(lengths) - min(lengths) <= 3 * tol  # all the same length
    if len(ws) == k and k > 1:
        assert ws[0][0] == pytest.approx(start, abs=tol) and ws[-1][1] == pytest.approx(end, abs=tol)
        assert np.allclose(np.diff([s for s, _ in ws]), (ws[-1][0] - ws[0][0]) / (k - 1), atol=3 * tol)


def test_multiclip_without_length_is_back_to_back_segments():
    assert multiclip_windows(0, 12, 3) == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0)]
    assert multiclip_windows(0, 12, 1, 4) == [(4.0, 8.0)]  # one clip: the centre
    assert multiclip_windows(0, 3, 4, 10) == [(0.0, 3.0)]  # longer than the video: one whole-video clip


@settings(deadline=None)
@given(windows, st.floats(0.1, 50), st.one_of(st.just(0.0), st.floats(0.1, 50)))
def test_sliding_windows_cover_with_stride(window, length, stride):
    start, end = window
    ws = sliding_windows(start, end, length, stride)
    step = stride if stride > 0 else length
    tol = 10.0**-KEY_DECIMALS
    if end - start < length - tol:  # the whole span is a tail shorter than a window: dropped
        assert ws == []
        return
    assert len(ws) == int(np.floor((end - start - length) / step + 1e-9)) + 1
    for i, (s, e) in enumerate(ws):
        assert s == pytest.approx(start + i * step, abs=tol) and e - s == pytest.approx(length, abs=2 * tol)
        assert e <= end + tol
    assert not ws or end - ws[-1][1] < step + tol  # the uncovered tail is shorter than one stride


def test_clip_windows_per_strategy():
    assert clip_windows(SamplingConfig(), 10.0) == [(0.0, 10.0)]
    assert clip_windows(SamplingConfig(strategy="sliding", clip_length=4, stride=3), 10.0, 1.0, None) == [
        (1.0, 5.0),
        (4.0, 8.0),
    ]
    assert len(clip_windows(SamplingConfig(strategy="multiclip", num_clips=5, clip_length=2), 10.0)) == 5


def test_sliding_drops_a_tail_shorter_than_a_window_and_a_span_shorter_than_one_is_refused():
    sliding = SamplingConfig(strategy="sliding", clip_length=4, stride=4)
    assert clip_windows(sliding, 10.0) == [(0.0, 4.0), (4.0, 8.0)]  # [8, 10] is shorter than a window
    assert clip_windows(sliding, 4.0) == [(0.0, 4.0)]
    with pytest.raises(ConfigError, match=r"its 3\.000 s are shorter than one window of sampling.clip_length=4 s"):
        clip_windows(sliding, 3.0)  # the whole video is such a tail: no clip, said in one line
    with pytest.raises(ConfigError, match="no clip"):
        clip_windows(sliding, 10.0, 7.0, None)  # so is a manifest window of 3 s


@given(frame_tables, st.integers(1, 10), st.integers(0, 20))
def test_every_n_picks_real_frames_every_n(table, n, cap):
    start, end = float(table[len(table) // 4]), float(table[-1]) + 0.01
    ts = every_n_timestamps(table, start, end, n, cap)
    inside = table[(table >= start) & (table < end)]
    assert set(ts.tolist()) <= set(inside.tolist())  # exact presentation times (VFR too)
    if not cap or len(inside[::n]) <= cap:
        np.testing.assert_array_equal(ts, inside[::n])
    else:
        assert len(ts) == cap and ts[0] == inside[0]


def test_keyframes_and_snapping():
    keys = np.array([0.0, 2.0, 4.5, 9.0])
    np.testing.assert_array_equal(keyframe_timestamps(keys, 1.0, 9.0), [2.0, 4.5])
    np.testing.assert_array_equal(keyframe_timestamps(keys, 5.0, 6.0), [4.5])  # none inside: nearest to the centre
    np.testing.assert_array_equal(
        snap_to_keyframes(np.array([0.9, 1.0, 3.3, 8.0, 20.0]), keys), [0.0, 0.0, 4.5, 9.0, 9.0]
    )


@given(st.lists(st.floats(0, 100), min_size=1, max_size=30), st.lists(st.floats(0, 100), min_size=1, max_size=30))
def test_snap_picks_the_nearest_keyframe(times, keys):
    snapped = snap_to_keyframes(np.array(times), np.array(keys))
    for t, s in zip(times, snapped):
        assert s in keys and abs(s - t) <= min(abs(k - t) for k in keys) + 1e-12


def test_sampling_identity_holds_exactly_what_changes_frames():
    """Every setting a strategy uses changes the identity; settings it ignores do not."""
    uses = {
        "uniform": {"num_frames", "seek_mode"},
        "fps": {"fps", "max_frames", "seek_mode"},
        "every_n": {"every_n", "max_frames", "seek_mode"},
        "keyframes": {"max_frames"},
        "multiclip": {"num_frames", "num_clips", "clip_length", "seek_mode"},
        "sliding": {"num_frames", "clip_length", "stride", "seek_mode"},
    }
    for used in uses.values():  # a frame folder's frame rate sets its frames' times, whatever the strategy
        used.add("frame_rate")
    changed = {
        "num_frames": 3,
        "fps": 7.0,
        "max_frames": 5,
        "every_n": 4,
        "num_clips": 3,
        "clip_length": 1.5,
        "stride": 0.5,
        "seek_mode": "keyframe",
        "frame_rate": 12.0,
    }
    assert set(changed) | {"strategy"} == {f.name for f in dataclasses.fields(SamplingConfig)}
    for strategy, used in uses.items():
        base = SamplingConfig(strategy=strategy, clip_length=2.0)
        ident = sampling_identity(base)
        assert sampling_identity(SamplingConfig(**ident)) == ident  # predict rebuilds sampling from it
        for name, value in changed.items():
            other = sampling_identity(dataclasses.replace(base, **{name: value}))
            assert (other != ident) == (name in used), (strategy, name)
    # equivalent spellings are equal: a sliding stride of 0 means the clip length
    assert sampling_identity(SamplingConfig(strategy="sliding", clip_length=2.0)) == sampling_identity(
        SamplingConfig(strategy="sliding", clip_length=2.0, stride=2.0)
    )


def test_strategy_settings_are_validated():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    for override, needle in [
        ("sampling.strategy=sliding", "clip_length"),
        ("sampling.every_n=0", "every_n"),
        ("sampling.seek_mode=fast", "seek_mode"),
        ("sampling.num_clips=0", "num_clips"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load_config(None, [override])
