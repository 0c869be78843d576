"""Temporal heads in torch, over a clip's (T, D) frame embeddings: the attentive probe and a (bi)GRU.

``AttentiveProbe`` follows V-JEPA's ``attentive_pooler.py``: Q learnable queries read the frames through one
cross-attention block (+ MLP, ratio 4), after ``depth - 1`` self-attention blocks over the frames, then a
linear layer on the concatenated queries. Frame positions are learned embeddings of *clip-relative time*
(``TimeEmbedding``, interpolated between ``bins`` learned vectors), so any T and any sampling work; a
mask leaves out padding. ``GRUHead`` is the recurrent head of the transfer-learning articles: a GRU over
the frames (both directions by default), then linear on the last hidden states. Either adds the ``trend``
readout (``clip_trend``; why: docs/heads.md#heads-that-learn-time).

These modules are the reference, and the sweep's initial weights and parameter names: ``predictor`` runs
the same arithmetic without torch, and ``batched`` (the sweep's training forward for many candidates at
once, on these modules' stacked parameters) is tested against them.
The GRU is written out (not ``nn.GRU``) so that both can follow its equations step by step.
Every module takes ``(x (B, T, D), t (B, T), mask (B, T) bool)`` and returns logits ``(B, K)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .arch import NEG, TREND_SLOPE_SCALE


def clip_trend(x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 2D) each clip's mean input and the least-squares slope of its inputs over clip-relative time:
    what the ``trend`` readout reads (the ``trend`` pooling of the head's inputs). The slope is scaled by
    ``TREND_SLOPE_SCALE``, which keeps it of the order of the standardised inputs; a clip with one real
    frame has slope 0."""
    m = mask[..., None].to(x.dtype)
    n = m.sum(1).clamp(min=1)
    tt = t[..., None].to(x.dtype)
    tc = (tt - (tt * m).sum(1, keepdim=True) / n[:, None]) * m
    slope = (tc * x).sum(1) / (tc * tc).sum(1).clamp(min=1e-6)
    return torch.cat([(x * m).sum(1) / n, slope * TREND_SLOPE_SCALE], dim=-1)


def _trend_linear(dim: int, n_classes: int) -> nn.Linear:
    """The trend readout, starting at zero: training begins from the attention / recurrent head alone."""
    lin = nn.Linear(2 * dim, n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class TimeEmbedding(nn.Module):
    """Learned vectors at ``bins`` evenly spaced clip-relative times; a frame at time t gets the linear
    interpolation of its two neighbours (so the table needs no fixed frame count)."""

    def __init__(self, width: int, bins: int = 16) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(bins, width) * 0.5)  # as large as the frame embeddings: order counts

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = t.clamp(0, 1) * (self.table.shape[0] - 1)
        lo = u.floor().long().clamp(max=self.table.shape[0] - 2)
        frac = (u - lo).unsqueeze(-1)
        return self.table[lo] * (1 - frac) + self.table[lo + 1] * frac


class Attention(nn.Module):
    """Multi-head attention of ``q`` over ``kv``; padded keys get no weight. Also returns the weights."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, Nq, W = q.shape
        H = self.num_heads
        qh = self.q(q).reshape(B, Nq, H, W // H).transpose(1, 2)  # (B, H, Nq, W/H)
        k, v = self.kv(kv).reshape(B, -1, 2, H, W // H).permute(2, 0, 3, 1, 4)  # each (B, H, T, W/H)
        scores = qh @ k.transpose(-2, -1) / math.sqrt(W // H)
        scores = scores.masked_fill(~mask[:, None, None, :], NEG)
        attn = scores.softmax(dim=-1)  # (B, H, Nq, T)
        out = (attn @ v).transpose(1, 2).reshape(B, Nq, W)
        return self.proj(out), attn


class MLP(nn.Sequential):
    def __init__(self, width: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        hidden = int(width * ratio)
        super().__init__(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, width)
        )


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block over the frames."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(width), MLP(width, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """V-JEPA's block: queries attend to the (normed) frames, then an MLP on the queries."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.xattn = nn.LayerNorm(width), Attention(width, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(width), MLP(width, dropout=dropout)

    def forward(self, q: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, attn = self.xattn(q, self.norm1(x), mask)
        q = q + y
        return q + self.mlp(self.norm2(q)), attn


class AttentiveProbe(nn.Module):
    """Frames -> width, + time embedding, (depth - 1) self-attention blocks, Q queries by cross-attention, linear."""

    def __init__(
        self,
        dim: int,
        n_classes: int,
        *,
        width: int = 128,
        depth: int = 1,
        queries: int = 1,
        num_heads: int = 4,
        time_bins: int = 16,
        dropout: float = 0.1,
        trend: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, width)
        self.time = TimeEmbedding(width, time_bins)
        self.blocks = nn.ModuleList(SelfAttentionBlock(width, num_heads, dropout) for _ in range(depth - 1))
        self.query_tokens = nn.Parameter(torch.randn(1, queries, width) * 0.02)
        self.pool = CrossAttentionBlock(width, num_heads, dropout)
        self.norm = nn.LayerNorm(queries * width)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(queries * width, n_classes)
        self.trend = _trend_linear(dim, n_classes) if trend else None

    def forward_with_attention(
        self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the cross-attention weights (B, heads, Q, T)."""
        h = self.embed(x) + self.time(t)
        for blk in self.blocks:
            h = blk(h, mask)
        q, attn = self.pool(self.query_tokens.expand(len(x), -1, -1), h, mask)
        z = self.linear(self.drop(self.norm(q.flatten(1))))
        if self.trend is not None:
            z = z + self.trend(clip_trend(x, t, mask))
        return z, attn

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x, t, mask)[0]


class GRULayer(nn.Module):
    """One GRU direction with PyTorch's gate equations; padded steps leave the state unchanged."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.ih = nn.Linear(dim, 3 * hidden)
        self.hh = nn.Linear(hidden, 3 * hidden)
        bound = 1 / math.sqrt(hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        B, T, _ = x.shape
        gi = self.ih(x)  # (B, T, 3H): the input side of every step at once
        h = x.new_zeros(B, self.hh.in_features)
        steps = range(T - 1, -1, -1) if reverse else range(T)
        for s in steps:
            ir, iz, in_ = gi[:, s].chunk(3, dim=-1)
            hr, hz, hn = self.hh(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            new = (1 - z) * torch.tanh(in_ + r * hn) + z * h
            m = mask[:, s, None].to(x.dtype)
            h = m * new + (1 - m) * h
        return h


class GRUHead(nn.Module):
    """Dropout on the frames, a (bi)GRU over them, linear on the final state(s)."""

    def __init__(
        self,
        dim: int,
        n_classes: int,
        *,
        width: int = 128,
        bidirectional: bool = True,
        dropout: float = 0.1,
        trend: bool = False,
    ) -> None:
        super().__init__()
        self.drop_in = nn.Dropout(dropout)
        self.fwd = GRULayer(dim, width)
        self.bwd = GRULayer(dim, width) if bidirectional else None
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(width * (2 if bidirectional else 1), n_classes)
        self.trend = _trend_linear(dim, n_classes) if trend else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.trend(clip_trend(x, t, mask)) if self.trend is not None else 0  # on the frames before dropout
        x = self.drop_in(x)
        h = self.fwd(x, mask)
        if self.bwd is not None:
            h = torch.cat([h, self.bwd(x, mask, reverse=True)], dim=-1)
        return self.linear(self.drop(h)) + z


def build_model(arch: dict[str, Any]) -> nn.Module:
    """The module an architecture record (the sidecar's ``model``) describes."""
    kind, a = arch["kind"], dict(arch)
    common = dict(width=a["width"], dropout=a.get("dropout", 0.0), trend=bool(a.get("trend", False)))
    if kind == "attn":
        return AttentiveProbe(
            a["dim"],
            a["n_classes"],
            depth=a["depth"],
            queries=a["queries"],
            num_heads=a["num_heads"],
            time_bins=a["time_bins"],
            **common,
        )
    if kind == "gru":
        return GRUHead(a["dim"], a["n_classes"], bidirectional=a["bidirectional"], **common)
    raise ValueError(f"no temporal model {kind!r}")


__all__ = [
    "AttentiveProbe",
    "GRUHead",
    "TimeEmbedding",
    "CrossAttentionBlock",
    "SelfAttentionBlock",
    "build_model",
    "clip_trend",
]
