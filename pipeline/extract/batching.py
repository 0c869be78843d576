"""Frames of many videos packed into full encoder batches: the one batcher of the local engine (one per
model) and of ``VideoDecoder`` (``predict``), so short videos still fill the encoder's batches.

A batch is copied into one staging buffer reused for every batch, pinned on CUDA, so the encoder's
host-to-device copy is non-blocking (``FrameEncoder`` copies pinned input with ``non_blocking=True``).
The batcher knows nothing of its owners (a task, a video): it returns each batch's rows per owner, or the
error that stopped the batch, and the caller applies them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Batcher", "Part", "pins_staging"]

T = TypeVar("T")


def pins_staging(device: Any) -> bool:
    """Whether batches for an encoder on ``device`` are staged in pinned memory: on CUDA only, where it makes
    the host-to-device copy non-blocking (pinning costs page-locked RAM and buys nothing on a CPU)."""
    return str(device).startswith("cuda")


@dataclass
class Part(Generic[T]):
    """One owner's frames in an encoded batch: their rows of each output, or why the batch failed."""

    owner: T
    frames: int
    outputs: list[np.ndarray] | None  # None: the batch failed (``error``)
    error: str = ""


class Batcher(Generic[T]):
    """Frames of many owners, in the order added, encoded ``batch_size`` at a time by ``encode`` (a uint8
    ``(N, H, W, 3)`` tensor, a view of the staging buffer: it must not keep or return it -> one array per
    output, N rows each). ``dropped(owner)``: its queued frames are left out (it failed meanwhile)."""

    def __init__(
        self,
        encode: Callable[[torch.Tensor], Sequence[np.ndarray]],
        batch_size: int,
        *,
        device: Any = "cpu",
        dropped: Callable[[T], bool] = lambda owner: False,
    ) -> None:
        self.encode_fn, self.batch_size, self.dropped = encode, max(1, int(batch_size)), dropped
        self.pinned = pins_staging(device)
        self.pending: deque[list[Any]] = deque()  # [owner, frames, first frame not yet taken]
        self.queued = 0
        self.staging: torch.Tensor | None = None  # made on first use (torch is imported lazily)

    def add(self, owner: T, frames: np.ndarray) -> None:
        self.pending.append([owner, frames, 0])
        self.queued += len(frames)

    @property
    def full(self) -> bool:
        return self.queued >= self.batch_size

    def encode(self) -> list[Part[T]]:
        """Encode one batch (full if enough frames are queued); its parts in order ([] if nothing was left)."""
        parts, owners = self._take()
        if not parts:
            return []
        batch = self._stage(parts)
        try:
            outs: Sequence[np.ndarray] | None = self.encode_fn(batch)
            error = ""
        except Exception as exc:  # one bad batch fails its owners, not the run
            outs, error = None, f"encoding failed ({type(exc).__name__}: {exc})"
        done, pos = [], 0
        for owner, take in owners:
            rows = None if outs is None else [o[pos : pos + take] for o in outs]
            done.append(Part(owner, take, rows, error))
            pos += take
        return done

    def _take(self) -> tuple[list[np.ndarray], list[tuple[T, int]]]:
        """Up to ``batch_size`` queued frames, oldest first, skipping those of dropped owners."""
        parts: list[np.ndarray] = []
        owners: list[tuple[T, int]] = []
        n = 0
        while self.pending and n < self.batch_size:
            entry = self.pending[0]
            owner, frames, pos = entry
            if self.dropped(owner):
                self.queued -= len(frames) - pos
                self.pending.popleft()
                continue
            take = min(self.batch_size - n, len(frames) - pos)
            parts.append(frames[pos : pos + take])
            owners.append((owner, take))
            n += take
            entry[2] += take
            if entry[2] == len(frames):
                self.pending.popleft()
        self.queued -= n
        return parts, owners

    def _stage(self, parts: list[np.ndarray]) -> torch.Tensor:
        """The batch copied into the staging buffer (made, pinned on CUDA, for the first batch's frame shape)."""
        import torch

        n = sum(len(p) for p in parts)
        shape = (self.batch_size, *parts[0].shape[1:])
        if self.staging is None or tuple(self.staging.shape) != shape:
            self.staging = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pinned)
        view = self.staging.numpy()
        pos = 0
        for p in parts:
            view[pos : pos + len(p)] = p
            pos += len(p)
        return self.staging[:n]
