"""The temporal heads' forward pass for G candidates at once, natively batched: the sweep's training path.

``train_candidates`` trains G copies of one module (one per lr x wd candidate) side by side on the same
mini-batches. Instead of ``vmap`` over the module (G small products per layer and a batching rule around
every small op), this runs the modules' arithmetic on their *stacked* parameters: ``name -> (G, *shape)``
with the module's own state-dict keys, so candidate g's weights are ``{k: v[g]}``. What it saves:

- the input is the same for every candidate, so the first projection of all G candidates is ONE product
  ``x (B*T, D) @ W (D, G*W)`` (and one for its weight gradient); ``attn`` folds its time embedding into
  it (the interpolation between table rows is a (B*T, bins) matrix times the table), ``gru`` both
  directions' input sides;
- ``attn``'s pooling queries are constants, so they are folded into the key projection (scores are
  ``LN(h) @ (W_k^T q)``) and the value projection comes after the attention average (its weights sum
  to 1): no (B*T, 2W) keys and values are made. ``gru`` runs both directions as one recurrence;
- dropout masks are drawn once per batch without a candidate axis and shared by all candidates, so a
  candidate trains exactly as it would alone (the sweep's result does not depend on its batch mates).

``models`` stays the reference (the numpy predictor and ``explain`` follow it);
``tests/test_temporal_heads.py`` checks this forward against it, candidate by candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .arch import NEG
from .models import clip_trend

Params = dict[str, torch.Tensor]


def batched_logits(
    arch: dict[str, Any], p: Params, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, *, train: bool
) -> torch.Tensor:
    """Logits (G, B, K) of the G stacked candidates ``p`` on the shared inputs ``x (B, T, D)``, ``t``, ``mask``."""
    return _FORWARD[arch["kind"]](arch, p, x, t, mask, train)


def _dropout(x: torch.Tensor, rate: float, train: bool) -> torch.Tensor:
    """Inverted dropout with one mask for every candidate (``x`` is (G, ...); the mask is drawn for (...))."""
    if not train or rate <= 0:
        return x
    keep = torch.rand(x.shape[1:], device=x.device) >= rate
    return x * (keep.to(x.dtype) / (1 - rate))


def _linear(x: torch.Tensor, p: Params, name: str) -> torch.Tensor:
    """``x (G, ..., in) -> (G, ..., out)`` with each candidate's own weight: one batched product."""
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    G, out = w.shape[:2]
    y = torch.baddbmm(b[:, None], x.reshape(G, -1, x.shape[-1]), w.transpose(1, 2))
    return y.reshape(*x.shape[:-1], out)


def _shared_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same ``x (M, in)`` through G weights ``w (G, out, in)``: one (M, in) @ (in, G*out) product,
    returned as (M, G, out)."""
    G, out, n_in = w.shape
    return torch.addmm(b.reshape(-1), x, w.permute(2, 0, 1).reshape(n_in, G * out)).view(-1, G, out)


def _layer_norm(x: torch.Tensor, p: Params, name: str) -> torch.Tensor:
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    shape = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[-1],)
    return F.layer_norm(x, x.shape[-1:]) * w.view(shape) + b.view(shape)


def _mlp(x: torch.Tensor, p: Params, name: str, dropout: float, train: bool) -> torch.Tensor:
    h = _dropout(F.gelu(_linear(x, p, f"{name}.0"), approximate="tanh"), dropout, train)
    return _linear(h, p, f"{name}.3")


def _trend(arch: dict[str, Any], p: Params, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor):
    """The trend readout of every candidate, (G, B, K) (0 without one): one product on the shared input."""
    if not arch.get("trend"):
        return 0
    return _shared_linear(clip_trend(x, t, mask), p["trend.weight"], p["trend.bias"]).permute(1, 0, 2)


def _self_attention(n: torch.Tensor, mask: torch.Tensor, p: Params, name: str, heads: int) -> torch.Tensor:
    """``Attention`` of the frames over themselves, ``n`` (G, B, T, W)."""
    G, B, T, W = n.shape
    d = W // heads
    q = _linear(n, p, f"{name}.q").view(G, B, T, heads, d).transpose(2, 3)
    k, v = _linear(n, p, f"{name}.kv").view(G, B, T, 2, heads, d).permute(3, 0, 1, 4, 2, 5)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(~mask[None, :, None, None, :], NEG)
    out = (scores.softmax(-1) @ v).transpose(2, 3).reshape(G, B, T, W)
    return _linear(out, p, f"{name}.proj")


def _attn(arch: dict[str, Any], p: Params, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, train: bool):
    B, T, D = x.shape
    G, W = p["embed.weight"].shape[:2]
    heads, dropout = int(arch["num_heads"]), float(arch.get("dropout", 0.0))
    d = W // heads
    table = p["time.table"]  # (G, bins, W)
    bins = table.shape[1]
    # TimeEmbedding as a product: each frame's weights on its two neighbouring table rows
    u = (t.clamp(0, 1) * (bins - 1)).reshape(-1, 1)
    lo = u.floor().long().clamp(max=bins - 2)
    frac = (u - lo).to(x.dtype)
    interp = x.new_zeros(B * T, bins).scatter_(1, lo, 1 - frac).scatter_(1, lo + 1, frac)
    w_in = torch.cat([p["embed.weight"], table.transpose(1, 2)], dim=2)  # (G, W, D + bins)
    h = _shared_linear(torch.cat([x.reshape(B * T, D), interp], dim=1), w_in, p["embed.bias"]).view(B, T, G, W)
    if int(arch["depth"]) > 1:
        hg = h.permute(2, 0, 1, 3)  # (G, B, T, W)
        for i in range(int(arch["depth"]) - 1):
            blk = f"blocks.{i}"
            hg = hg + _self_attention(_layer_norm(hg, p, f"{blk}.norm1"), mask, p, f"{blk}.attn", heads)
            hg = hg + _mlp(_layer_norm(hg, p, f"{blk}.norm2"), p, f"{blk}.mlp", dropout, train)
        h = hg.permute(1, 2, 0, 3)  # (B, T, G, W)
    # the pooling cross-attention on LN(h) = n * gamma + beta, with n the plain normalised frames. Its queries
    # are constants, so they fold into the keys: score = n @ (gamma * W_k^T q) (beta's and k's bias add a
    # constant per query: no effect on the softmax). The attention weights sum to 1, so gamma, beta and the
    # value projection apply after the average, on (G, B, Q, W) instead of every frame.
    n = F.layer_norm(h, (W,))  # (B, T, G, W); then candidate-major, in the products' dtype, once
    n = torch.empty((G, B, T, W), dtype=h.dtype, device=h.device).copy_(n.permute(2, 0, 1, 3))
    gamma, beta = p["pool.norm1.weight"], p["pool.norm1.bias"]  # (G, W)
    queries = p["query_tokens"][:, 0]  # (G, Q, W)
    Q = queries.shape[1]
    qh = _linear(queries, p, "pool.xattn.q").view(G, Q, heads, d)
    w_k, w_v = p["pool.xattn.kv.weight"].view(G, 2, heads, d, W).unbind(1)  # (G, heads, d, W) each
    qk = torch.einsum("gqhd,ghdw->gwqh", qh, w_k) * (gamma[:, :, None, None] / math.sqrt(d))
    scores = torch.bmm(n.view(G, B * T, W), qk.reshape(G, W, Q * heads)).view(G, B, T, Q * heads)
    scores = scores.masked_fill(~mask[None, :, :, None], NEG)
    # the softmax over T on frame-major scores, B * Q * heads contiguous per frame: on a CPU much faster
    # than over a short last axis T (the scores are small; the frames are not moved)
    attn = scores.transpose(1, 2).contiguous().softmax(1).permute(0, 2, 3, 1)  # (G, B, Q*heads, T)
    pooled = torch.bmm(attn.reshape(G * B, Q * heads, T), n.view(G * B, T, W)).view(G, B * Q, heads * W)
    # per head h: y_h = (pooled_h * gamma + beta) @ W_v,h^T + b_v,h, as one product with a block-diagonal
    # (heads*W, W) matrix per candidate (gamma folded into it, beta into the bias: no pass over `pooled`)
    w_vg = w_v * gamma[:, None, None, :]  # (G, heads, d, W)
    blocks = (
        torch.eye(heads, dtype=w_v.dtype, device=w_v.device)[None, :, None, :, None]
        * w_vg.transpose(2, 3)[:, :, :, None]
    )
    b_v = torch.einsum("ghdw,gw->ghd", w_v, beta).reshape(G, 1, W) + p["pool.xattn.kv.bias"][:, None, W:]
    y = torch.baddbmm(b_v, pooled, blocks.reshape(G, heads * W, W)).view(G, B, Q, W)
    q = queries[:, None] + _linear(y, p, "pool.xattn.proj")  # (G, B, Q, W)
    q = q + _mlp(_layer_norm(q, p, "pool.norm2"), p, "pool.mlp", dropout, train)
    z = _dropout(_layer_norm(q.reshape(G, B, Q * W), p, "norm"), dropout, train)
    return _linear(z, p, "linear") + _trend(arch, p, x, t, mask)


def _gru(arch: dict[str, Any], p: Params, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, train: bool):
    B, T, D = x.shape
    dropout = float(arch.get("dropout", 0.0))
    trend = _trend(arch, p, x, t, mask)  # on the frames before dropout, as GRUHead
    x = _dropout(x[None], dropout, train)[0]  # one mask for all candidates: the input stays shared
    dirs = ("fwd", "bwd") if arch["bidirectional"] else ("fwd",)
    nd = len(dirs)
    G, H3 = p["fwd.ih.weight"].shape[:2]
    H = H3 // 3
    # every direction's input side of every step, for every candidate: one product; then time-major,
    # the backward direction's steps reversed, so both directions run as one (nd*G)-wide recurrence
    w_ih = torch.cat([p[f"{k}.ih.weight"] for k in dirs])  # (nd*G, 3H, D)
    b_ih = torch.cat([p[f"{k}.ih.bias"] for k in dirs])
    gi = _shared_linear(x.reshape(B * T, D), w_ih, b_ih).view(B, T, nd, G, H3).permute(1, 2, 3, 0, 4)
    m = mask.T[:, None].expand(T, nd, B)  # (T, nd, B)
    if nd == 2:
        gi = torch.stack([gi[:, 0], gi[:, 1].flip(0)], dim=1)
        m = torch.stack([m[:, 0], m[:, 1].flip(0)], dim=1)
    gi = gi.reshape(T, nd * G, B, H3)
    m = m[:, :, None, :, None].to(x.dtype)  # (T, nd, 1, B, 1)
    w_hh = torch.cat([p[f"{k}.hh.weight"] for k in dirs]).transpose(1, 2)  # (nd*G, H, 3H)
    b_hh = torch.cat([p[f"{k}.hh.bias"] for k in dirs])[:, None]
    h = x.new_zeros(nd * G, B, H)
    for s in range(T):
        ir, iz, in_ = gi[s].chunk(3, dim=-1)
        hr, hz, hn = torch.baddbmm(b_hh, h, w_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        new = ((1 - z) * torch.tanh(in_ + r * hn) + z * h).view(nd, G, B, H)
        h = (m[s] * new + (1 - m[s]) * h.view(nd, G, B, H)).view(nd * G, B, H)
    h = h.view(nd, G, B, H).permute(1, 2, 0, 3).reshape(G, B, nd * H)  # [forward | backward], as GRUHead
    return _linear(_dropout(h, dropout, train), p, "linear") + trend


_FORWARD: dict[str, Callable[..., torch.Tensor]] = {"attn": _attn, "gru": _gru}

__all__ = ["batched_logits"]
