"""The one batcher (``pipeline.extract.batching``) that both the local engine and ``predict`` pack frames with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.extract.batching import Batcher, pins_staging


def _frames(first: int, n: int) -> np.ndarray:
    """``n`` uint8 frames whose pixels all hold their index, from ``first``: a row says which frame it was."""
    return np.broadcast_to(np.arange(first, first + n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()


def _index(batch: torch.Tensor) -> list[np.ndarray]:
    """Each frame's value, and its value doubled: two outputs, as an open_clip model's joint and ``#pre``."""
    value = batch[:, 0, 0, 0].to(torch.float32).numpy().copy()
    return [value, 2 * value]


@pytest.mark.parametrize(
    ("device", "pinned"),
    [("cuda", True), ("cuda:1", True), (torch.device("cuda", 0), True), ("cpu", False), (torch.device("cpu"), False)],
)
def test_staging_is_pinned_on_cuda_only(device, pinned) -> None:
    assert pins_staging(device) is pinned
    assert Batcher(_index, 4, device=device).pinned is pinned  # decided up front; the buffer is made on first use


def test_frames_of_many_owners_fill_batches_in_order() -> None:
    batcher: Batcher[str] = Batcher(_index, 4)
    batcher.add("a", _frames(0, 3))
    assert not batcher.full
    batcher.add("b", _frames(3, 6))
    assert batcher.full and batcher.queued == 9
    got = []
    while batcher.queued:
        got.append([(p.owner, p.frames, p.outputs[0].tolist(), p.outputs[1].tolist()) for p in batcher.encode()])
    assert got == [
        [("a", 3, [0, 1, 2], [0, 2, 4]), ("b", 1, [3], [6])],
        [("b", 4, [4, 5, 6, 7], [8, 10, 12, 14])],
        [("b", 1, [8], [16])],  # the rest: a short last batch
    ]
    assert batcher.encode() == []
    assert batcher.staging is not None and tuple(batcher.staging.shape) == (4, 4, 4, 3)
    assert not batcher.staging.is_pinned()  # a CPU encoder: plain memory


def test_one_buffer_reused_and_remade_for_another_frame_shape() -> None:
    batcher: Batcher[str] = Batcher(_index, 2)
    batcher.add("a", _frames(0, 4))
    batcher.encode()
    first = batcher.staging
    assert first is not None
    batcher.encode()
    assert batcher.staging is first
    batcher.add("b", np.zeros((2, 8, 8, 3), np.uint8))
    (part,) = batcher.encode()
    assert part.outputs is not None and batcher.staging is not first and tuple(batcher.staging.shape) == (2, 8, 8, 3)


def test_frames_of_a_dropped_owner_are_left_out_and_do_not_count() -> None:
    failed: set[str] = set()
    batcher: Batcher[str] = Batcher(_index, 3, dropped=lambda owner: owner in failed)
    batcher.add("a", _frames(0, 2))
    batcher.add("b", _frames(2, 2))
    batcher.add("c", _frames(4, 2))
    failed.add("a")
    parts = batcher.encode()
    assert [(p.owner, p.outputs[0].tolist()) for p in parts] == [("b", [2, 3]), ("c", [4])]  # a full batch still
    assert batcher.queued == 1


def test_a_batch_that_raises_fails_its_parts_only() -> None:
    def picky(batch: torch.Tensor) -> list[np.ndarray]:
        if int(batch.max()) >= 5:
            raise RuntimeError("CUDA out of memory")
        return _index(batch)

    batcher: Batcher[str] = Batcher(picky, 3)
    batcher.add("a", _frames(0, 4))
    batcher.add("b", _frames(4, 2))
    first, second = batcher.encode(), batcher.encode()
    assert [(p.owner, p.frames, p.error) for p in first] == [("a", 3, "")]
    assert [(p.owner, p.frames, p.outputs) for p in second] == [("a", 1, None), ("b", 2, None)]
    assert {p.error for p in second} == {"encoding failed (RuntimeError: CUDA out of memory)"}
