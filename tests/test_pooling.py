import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.probe.pooling import get_pool


@pytest.mark.parametrize(
    "name, width",
    [("mean", 4), ("max", 4), ("meanmax", 8), ("meanstd", 8), ("center", 4), ("tdiff", 8), ("seg2", 8), ("seg4", 16)],
)
def test_shapes(name, width):
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert get_pool(name)(x).shape == (width,)


def test_order_blind_vs_order_aware():
    x = np.random.default_rng(1).normal(size=(8, 4))
    rev = x[::-1]
    for name in ("mean", "max", "meanmax", "meanstd"):
        assert np.allclose(get_pool(name)(x), get_pool(name)(rev))
    for name in ("seg2", "seg4", "tdiff"):
        assert not np.allclose(get_pool(name)(x), get_pool(name)(rev))


def test_segments_with_fewer_frames_than_segments():
    x = np.arange(6, dtype=float).reshape(2, 3)
    assert get_pool("seg4")(x).shape == (12,)


def test_unknown_pool_names_allowed_values():
    with pytest.raises(ConfigError, match="pool='median'.*mean"):
        get_pool("median")
