import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.probe.pooling import get_pool


@pytest.mark.parametrize(
    "name, width",
    [
        ("mean", 4),
        ("max", 4),
        ("meanmax", 8),
        ("meanstd", 8),
        ("center", 4),
        ("tdiff", 8),
        ("trend", 8),
        ("seg2", 8),
        ("seg4", 16),
    ],
)
def test_shapes(name, width):
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert get_pool(name)(x).shape == (width,)


def test_order_blind_vs_order_aware():
    x = np.random.default_rng(1).normal(size=(8, 4))
    rev = x[::-1]
    for name in ("mean", "max", "meanmax", "meanstd"):
        assert np.allclose(get_pool(name)(x), get_pool(name)(rev))
    for name in ("seg2", "seg4", "tdiff", "trend"):
        assert not np.allclose(get_pool(name)(x), get_pool(name)(rev))


def test_trend_is_the_mean_and_the_fitted_change_over_the_clip():
    """A clip moving linearly from a to b: mean (a + b) / 2 and slope b - a, whatever its frame count;
    played backwards the slope flips; a single frame has no slope."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 4))
    for k in (2, 3, 8, 13):
        s = np.linspace(0, 1, k)[:, None]
        x = (1 - s) * a + s * b
        np.testing.assert_allclose(get_pool("trend")(x), np.concatenate([(a + b) / 2, b - a]), atol=1e-6)
        np.testing.assert_allclose(get_pool("trend")(x[::-1])[4:], a - b, atol=1e-6)
    np.testing.assert_allclose(get_pool("trend")(a[None]), np.concatenate([a, np.zeros(4)]))


def test_segments_with_fewer_frames_than_segments():
    x = np.arange(6, dtype=float).reshape(2, 3)
    assert get_pool("seg4")(x).shape == (12,)


def test_unknown_pool_names_allowed_values():
    with pytest.raises(ConfigError, match="pool='median'.*mean"):
        get_pool("median")


@pytest.mark.parametrize(
    "name", ["mean", "max", "meanmax", "meanstd", "center", "tdiff", "trend", "seg2", "seg4", "seg7"]
)
def test_batched_pooling_equals_the_per_clip_function(name):
    """``batch`` over clips of mixed lengths (1 frame, fewer frames than segments, many) = one call per clip."""
    rng = np.random.default_rng(3)
    lengths = np.array([1, 2, 3, 8, 5, 16, 4, 7, 1, 9])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frames = rng.normal(size=(int(offsets[-1]), 6)).astype(np.float32)
    pool = get_pool(name)
    per_clip = np.stack([pool(frames[a:b]) for a, b in zip(offsets[:-1], offsets[1:])])
    batched = pool.batch(frames, offsets)
    assert batched.shape == per_clip.shape and batched.dtype == np.float32
    assert np.allclose(batched, per_clip, rtol=1e-5, atol=1e-5)
    # a block that starts inside a larger frame array (the store pools a shard's kept rows)
    assert np.allclose(pool.batch(frames, offsets[3:]), per_clip[3:], rtol=1e-5, atol=1e-5)
