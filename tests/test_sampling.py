import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import SamplingConfig
from pipeline.sampling import clip_window, fps_timestamps, sample_timestamps, uniform_timestamps

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
