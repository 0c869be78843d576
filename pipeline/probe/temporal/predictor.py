"""The fitted temporal heads without torch: the forward pass of ``temporal.models`` in numpy.

A saved ``attn`` / ``gru`` head is plain arrays (the module's state dict, plus the input standardisation)
and the architecture record; ``TemporalHead`` runs them, so ``vidprobe predict`` and ``evaluate`` need
neither torch nor pickle. Training computes the metrics it records through this same class, so a head
loaded in a fresh process reproduces them exactly. ``tests/test_temporal_heads.py`` checks it against
the torch modules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import HeadError
from ..heads.native import ArraySpec, NativeKind
from ..sequences import FrameSequences
from .arch import NEG, TREND_SLOPE_SCALE
from .inputs import input_features

__all__ = ["TemporalHead", "native_kind"]
_CHUNK = 512  # clips per forward pass: bounds memory on big evaluation sets


def _linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _layer_norm(x: np.ndarray, w: dict[str, np.ndarray], name: str, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


def _gelu(x: np.ndarray) -> np.ndarray:  # the tanh form, as nn.GELU(approximate="tanh")
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow warning for large |x|


def _time_embedding(t: np.ndarray, table: np.ndarray) -> np.ndarray:
    u = np.clip(t, 0, 1) * (len(table) - 1)
    lo = np.minimum(np.floor(u).astype(np.int64), len(table) - 2)
    frac = (u - lo)[..., None].astype(table.dtype)
    return table[lo] * (1 - frac) + table[lo + 1] * frac


def _attention(q, kv, mask, w, name, num_heads):
    B, Nq, W = q.shape
    H, d = num_heads, W // num_heads
    qh = _linear(q, w, f"{name}.q").reshape(B, Nq, H, d).transpose(0, 2, 1, 3)
    k, v = _linear(kv, w, f"{name}.kv").reshape(B, -1, 2, H, d).transpose(2, 0, 3, 1, 4)
    scores = qh @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(d))
    scores = np.where(mask[:, None, None, :], scores, np.float32(NEG))
    attn = _softmax(scores)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(B, Nq, W)
    return _linear(out, w, f"{name}.proj"), attn


def _mlp(x, w, name):
    return _linear(_gelu(_linear(x, w, f"{name}.0")), w, f"{name}.3")


def _attn_forward(arch, w, x, t, mask):
    h = _linear(x, w, "embed") + _time_embedding(t, w["time.table"])
    for i in range(arch["depth"] - 1):
        p = f"blocks.{i}"
        n = _layer_norm(h, w, f"{p}.norm1")
        h = h + _attention(n, n, mask, w, f"{p}.attn", arch["num_heads"])[0]
        h = h + _mlp(_layer_norm(h, w, f"{p}.norm2"), w, f"{p}.mlp")
    q = np.broadcast_to(w["query_tokens"], (len(x), *w["query_tokens"].shape[1:]))
    y, attn = _attention(q, _layer_norm(h, w, "pool.norm1"), mask, w, "pool.xattn", arch["num_heads"])
    q = q + y
    q = q + _mlp(_layer_norm(q, w, "pool.norm2"), w, "pool.mlp")
    return _linear(_layer_norm(q.reshape(len(x), -1), w, "norm"), w, "linear"), attn


def _clip_trend(x: np.ndarray, t: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``models.clip_trend``: (B, 2D) each clip's mean input and its slope over time (x TREND_SLOPE_SCALE)."""
    m = mask[..., None].astype(np.float32)
    n = np.maximum(m.sum(1), 1)
    tt = t[..., None].astype(np.float32)
    tc = (tt - (tt * m).sum(1, keepdims=True) / n[:, None]) * m
    slope = (tc * x).sum(1) / np.maximum((tc * tc).sum(1), np.float32(1e-6))
    return np.concatenate([(x * m).sum(1) / n, slope * np.float32(TREND_SLOPE_SCALE)], axis=-1)


def _gru(x, mask, w, name, reverse):
    gi = _linear(x, w, f"{name}.ih")
    H = w[f"{name}.hh.weight"].shape[1]
    h = np.zeros((len(x), H), x.dtype)
    for s in range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1]):
        ir, iz, in_ = np.split(gi[:, s], 3, axis=-1)
        hr, hz, hn = np.split(_linear(h, w, f"{name}.hh"), 3, axis=-1)
        r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
        new = (1 - z) * np.tanh(in_ + r * hn) + z * h
        h = np.where(mask[:, s, None], new, h)
    return h


def _gru_forward(arch, w, x, t, mask):
    h = _gru(x, mask, w, "fwd", False)
    if arch["bidirectional"]:
        h = np.concatenate([h, _gru(x, mask, w, "bwd", True)], axis=-1)
    return _linear(h, w, "linear"), None


_FORWARD = {"attn": _attn_forward, "gru": _gru_forward}


class TemporalHead:
    """A fitted ``attn`` / ``gru`` head: ``predict_proba(FrameSequences)`` and, for ``attn``, ``explain``.

    ``weights`` holds the torch state dict as float32 arrays plus the ``input.*`` standardisation
    (``input_stats``, fitted on the training clips); ``arch`` is the architecture record.
    """

    def __init__(self, arch: dict[str, Any], weights: dict[str, np.ndarray], classes: list[str]) -> None:
        self.arch = dict(arch)
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.classes = list(classes)
        self.classes_ = np.array(self.classes)

    def _forward(self, seqs: FrameSequences) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Logits of the attention / recurrent part and of the trend readout (zeros without one), attention."""
        w = self.weights
        parts, trends, attns = [], [], []
        for i in range(0, len(seqs), _CHUNK):
            s = seqs[i : i + _CHUNK]
            x = input_features(s, w, self.arch.get("inputs", "frames"))
            t = s.t.astype(np.float32)
            z, a = _FORWARD[self.arch["kind"]](self.arch, w, x, t, s.mask)
            parts.append(z)
            trends.append(_linear(_clip_trend(x, t, s.mask), w, "trend") if self.arch.get("trend") else 0 * z)
            if a is not None:
                attns.append(a.mean(axis=(1, 2)))  # over heads and queries: (B, T), rows sum to 1
        return np.concatenate(parts), np.concatenate(trends), np.concatenate(attns) if attns else None

    def explain_parts(self, seqs: FrameSequences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One forward pass: ``explain``'s per-frame weights (N, T), and the (N, K) logits of the attention part
        and of the trend readout, which add up to ``decision_function``; the weights explain the first."""
        head, trend, attn = self._forward(seqs)
        if attn is None:
            raise ValueError(f"a {self.arch['kind']} head has no attention weights")
        return np.where(seqs.mask, attn, 0.0), head, trend

    def decision_function(self, seqs: FrameSequences) -> np.ndarray:
        head, trend, _ = self._forward(seqs)
        return head + trend

    def predict_proba(self, seqs: FrameSequences) -> np.ndarray:
        return _softmax(self.decision_function(seqs).astype(np.float64))

    def predict(self, seqs: FrameSequences) -> np.ndarray:
        return self.classes_[self.decision_function(seqs).argmax(axis=1)]

    def explain(self, seqs: FrameSequences) -> np.ndarray:
        """Per-frame weights (N, T): the cross-attention of the queries, averaged over heads and queries
        (each clip's real frames sum to 1, padding gets 0). Only ``attn`` has them."""
        return self.explain_parts(seqs)[0]


def native_kind(kind: str) -> NativeKind:
    """The ``.npz`` form: the weights as arrays, the architecture record as the sidecar's ``model``."""

    def accepts(est: Any) -> bool:
        return isinstance(est, TemporalHead) and est.arch.get("kind") == kind

    def to_arrays(est: TemporalHead) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return dict(est.weights), {k: v for k, v in est.arch.items() if k != "kind"}

    def from_arrays(arrays, model, classes: list[str]) -> Any:  # reads FrameSequences, not (N, D) rows
        head = TemporalHead({**model, "kind": kind}, dict(arrays), classes)
        try:  # one tiny forward pass: a missing array or a wrong shape fails here, at load
            T, D = 2, int(model["embedding_dim"])
            probe = FrameSequences(
                np.zeros((1, T, D), np.float32), np.array([[0.0, 1.0]]), np.ones((1, T), bool), np.zeros((1, T))
            )
            n_out = head.decision_function(probe).shape[1]
        except (ValueError, IndexError, TypeError) as exc:
            raise HeadError(f"{kind} head: arrays do not fit the architecture ({exc})") from None
        if n_out != len(classes):
            raise HeadError(f"{kind} head: {n_out} outputs for {len(classes)} classes")
        return head

    def schema(model, classes: list[str]) -> dict[str, ArraySpec]:  # shapes: the probe forward above checks them
        return {"*": ArraySpec()}

    return NativeKind(accepts, to_arrays, from_arrays, schema)
