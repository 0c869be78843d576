"""Training the temporal heads: one recipe from a hundred clips to a million, and a parallel lr x wd sweep.

The recipe (every part a ``HeadConfig`` setting): inputs whitened on the training clips
(``temporal_numpy.input_features``: by default each frame's deviation from its clip mean, its step
from the previous frame and the clip mean); dropout; AdamW with decoupled weight decay on the weight
matrices, linear warm-up then cosine decay; label smoothing; matrix products in bf16 where the hardware
has it (``precision``: autocast; fp32 master weights, optimizer state and loss); augmentation among the
cached frames (each frame dropped with ``frame_dropout``, the kept ones keep their order and
clip-relative times, which are jittered by up to ``time_jitter`` of a frame spacing), so nothing is
re-extracted; early stopping on val accuracy.

The sweep trains every (lr, wd) candidate *at once*: the candidates' parameters are stacked
(``torch.func.stack_module_state``, the module's own keys) and ``temporal_batched`` runs them as one
natively batched model on the same mini-batches: the shared input goes through all candidates' first
projection as one product, the per-fit setup and the per-step overhead are paid once, and dropout masks
are shared, so a candidate trains as it would alone (docs/performance.md has the measured gain). Each
candidate keeps the weights of its best validation epoch; the best
candidate on val wins (ties: lower val loss, then the earlier listed). As for logreg, the winner is then
refit on train+val with the same settings for the epochs it needed on val (its schedule unchanged).

Deterministic for a seed: the initial weights (the same for every candidate), the batch order, the
augmentation and dropout all come from that seed, and CPU training runs on a fixed number of threads.
CPU and CUDA run the same code (``device``).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sequences import FrameSequences
from .temporal_numpy import TemporalHead, input_features, input_stats

TRAIN_THREADS = max(1, min(8, os.cpu_count() or 1))  # fixed, so a seed gives the same weights run after run
# Below this many multiply-adds per step (the input projection of all candidates) a CPU sweep runs on one
# thread, like logreg's small fits: on this busy 2-core box two threads made a 216-clip demo sweep 5x slower
# and the input PCA 19x slower (measured; spinning OpenMP threads fight the other jobs).
_SINGLE_THREAD_BELOW = 1 << 28
_EVAL_CHUNK = 1024


@dataclass
class Recipe:
    """The training settings of one sweep (from ``HeadConfig``; see ``heads.py`` for their meaning)."""

    lrs: tuple[float, ...]
    wds: tuple[float, ...]
    epochs: int = 30
    batch_size: int = 64
    warmup: float = 0.1  # fraction of the steps
    label_smoothing: float = 0.1
    frame_dropout: float = 0.1
    time_jitter: float = 0.25
    early_stop: int = 10  # epochs without val improvement before a candidate stops counting (0 = never)
    device: str = "auto"
    precision: str = "auto"  # of the training steps' matrix products: auto | fp32 | bf16 (see train_precision)

    @property
    def candidates(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.wds]


@dataclass
class SweepResult:
    """What one batched training of G candidates ended with."""

    states: list[dict[str, np.ndarray]]  # per candidate: its best-val (or last) weights
    val_acc: np.ndarray  # (G,) best val accuracy (nan without val)
    val_loss: np.ndarray  # (G,) val loss at that epoch
    best_epoch: np.ndarray  # (G,) 1-based epoch of the kept weights
    epochs_run: int
    steps: int
    seconds: float
    history: list[list[float]] = field(default_factory=list)  # per epoch: val accuracy per candidate
    precision: str = "fp32"  # of the training steps' matrix products (train_precision)


def train_precision(precision: str, device) -> str:
    """'auto' -> bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), else fp32.

    Only the training steps' matrix products run in bf16 (``torch.autocast``): weights, optimizer state,
    loss and the val scoring that picks a candidate stay fp32, and the saved head is fp32 arrays that the
    numpy predictor runs in fp32. On an AMD EPYC Zen 5 (AVX512-BF16) a bf16 (9, 1024, 192) x (9, 192, 64)
    batched product is ~5x the fp32 one, and the products are most of a sweep step."""
    from ..encoders.base import cpu_has_native_bf16

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: expected auto, fp32 or bf16")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def _threads(device, work: int):
    import contextlib

    import torch
    from threadpoolctl import threadpool_limits

    n = 1 if work < _SINGLE_THREAD_BELOW else TRAIN_THREADS

    @contextlib.contextmanager
    def pinned():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            with threadpool_limits(limits=n, user_api="blas"):
                yield
        finally:
            torch.set_num_threads(before)

    return pinned() if device.type == "cpu" else contextlib.nullcontext()


def train_candidates(
    arch: dict[str, Any],
    recipe: Recipe,
    candidates: Sequence[tuple[float, float]],
    train: tuple[FrameSequences, np.ndarray],
    val: tuple[FrameSequences, np.ndarray] | None,
    stats: dict[str, np.ndarray],
    *,
    seed: int,
    stop_after: int | None = None,
) -> SweepResult:
    """Train ``candidates`` (lr, wd) of the module ``arch`` as one batched model; see the module doc.

    ``stop_after``: train exactly this many epochs (the refit), else up to ``recipe.epochs`` with early
    stopping on ``val``."""
    import torch
    import torch.nn.functional as F
    from torch.func import stack_module_state

    from ..encoders.base import resolve_device
    from .temporal_batched import batched_logits
    from .temporal_models import build_model

    t0 = time.perf_counter()
    device = resolve_device(recipe.device)
    precision = train_precision(recipe.precision, device)
    G = len(candidates)
    S_tr, y_tr = train
    n = len(S_tr)
    bs_work = min(recipe.batch_size, n) * S_tr.x.shape[1] * int(arch["dim"]) * int(arch["width"]) * G
    with _threads(device, bs_work), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build_model(arch)
        models = [copy.deepcopy(model) for _ in range(G)]  # one initialisation for every candidate
        params = {k: v.detach().to(device).requires_grad_(True) for k, v in stack_module_state(models)[0].items()}

        def to_dev(seqs: FrameSequences):
            return (
                torch.from_numpy(input_features(seqs, stats, arch.get("inputs", "frames"))).to(device),
                torch.from_numpy(seqs.t.astype(np.float32)).to(device),
                torch.from_numpy(seqs.mask).to(device),
            )

        X, Tt, M = to_dev(S_tr)
        Y = torch.as_tensor(y_tr, device=device).long()
        if val is not None:
            Xv, Tv, Mv = to_dev(val[0])
            Yv = torch.as_tensor(val[1], device=device).long()
        lr = torch.tensor([c[0] for c in candidates], device=device)
        wd = torch.tensor([c[1] for c in candidates], device=device)
        # decoupled weight decay on weight matrices only (not biases, norms, queries or the time table)
        decays = {k: k.endswith("weight") and v.dim() >= 3 for k, v in params.items()}
        m1 = {k: torch.zeros_like(v) for k, v in params.items()}
        m2 = {k: torch.zeros_like(v) for k, v in params.items()}
        bs = max(1, min(recipe.batch_size, n))
        per_epoch = math.ceil(n / bs)
        total = recipe.epochs * per_epoch
        warm = max(1, int(recipe.warmup * total))
        gen = torch.Generator(device=device).manual_seed(seed)
        order_rng = np.random.default_rng(seed)
        best = [{k: v.detach()[g].clone() for k, v in params.items()} for g in range(G)]
        best_acc = torch.full((G,), -1.0, device=device)
        best_loss = torch.full((G,), math.inf, device=device)
        best_epoch = torch.zeros(G, dtype=torch.long, device=device)
        history: list[list[float]] = []
        epochs = stop_after if stop_after is not None else recipe.epochs
        step, epoch = 0, 0
        T = X.shape[1]
        jitter = recipe.time_jitter / max(T - 1, 1)
        for epoch in range(1, epochs + 1):
            perm = torch.from_numpy(order_rng.permutation(n)).to(device)
            for i in range(per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                xb, tb, mb, yb = X[idx], Tt[idx], M[idx], Y[idx]
                if recipe.frame_dropout > 0:  # drop frames, never all of a clip's
                    keep = mb & (torch.rand(mb.shape, generator=gen, device=device) >= recipe.frame_dropout)
                    mb = torch.where(keep.any(dim=1, keepdim=True), keep, mb)
                if jitter > 0:
                    tb = (tb + (torch.rand(tb.shape, generator=gen, device=device) * 2 - 1) * jitter).clamp(0, 1)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    z = batched_logits(arch, params, xb, tb, mb, train=True)  # (G, B, K)
                z = z.float()
                loss = (
                    F.cross_entropy(z.reshape(-1, z.shape[-1]), yb.repeat(G), label_smoothing=recipe.label_smoothing)
                    * G
                )  # = sum over candidates of each one's mean loss
                for p in params.values():
                    p.grad = None
                loss.backward()
                step += 1
                scale = step / warm if step <= warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
                _adamw_step(params, m1, m2, decays, lr * scale, wd, step)
            if val is None:
                continue
            acc, vloss = _evaluate(arch, params, Xv, Tv, Mv, Yv)
            history.append(acc.tolist())
            better = (acc > best_acc + 1e-12) | ((acc >= best_acc - 1e-12) & (vloss < best_loss))
            for g in torch.nonzero(better).flatten().tolist():
                best[g] = {k: v.detach()[g].clone() for k, v in params.items()}
            best_acc = torch.where(better, acc, best_acc)
            best_loss = torch.where(better, vloss, best_loss)
            best_epoch = torch.where(better, torch.full_like(best_epoch, epoch), best_epoch)
            if recipe.early_stop and stop_after is None and bool((epoch - best_epoch >= recipe.early_stop).all()):
                break
        if val is None:  # no selection: the last weights
            best = [{k: v.detach()[g].clone() for k, v in params.items()} for g in range(G)]
            best_epoch = torch.full((G,), epoch, dtype=torch.long)
        states = [{k: v.cpu().numpy() for k, v in s.items()} for s in best]
        no_val = np.full(G, np.nan)
        return SweepResult(
            states,
            best_acc.cpu().numpy() if val is not None else no_val,
            best_loss.cpu().numpy() if val is not None else no_val,
            best_epoch.cpu().numpy(),
            epoch,
            step,
            time.perf_counter() - t0,
            history,
            precision,
        )


def _adamw_step(params, m1, m2, decays, lr, wd, step, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """AdamW (torch.optim.AdamW's update) on stacked parameters, with one lr and wd per candidate."""
    import torch

    with torch.no_grad():
        for k, p in params.items():
            g = p.grad
            if g is None:  # unused by the forward (attn's key bias: softmax ignores it), as torch.optim skips it
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr_g = lr.view(shape)
            if decays[k]:
                p.mul_(1 - lr_g * wd.view(shape))
            m1[k].mul_(b1).add_(g, alpha=1 - b1)
            m2[k].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (m2[k] / (1 - b2**step)).sqrt_().add_(eps)
            p.sub_(lr_g * (m1[k] / (1 - b1**step)) / denom)


def _evaluate(arch, params, X, T, M, Y):
    """Val accuracy and mean cross-entropy per candidate (no dropout)."""
    import torch
    import torch.nn.functional as F

    from .temporal_batched import batched_logits

    correct = torch.zeros(next(iter(params.values())).shape[0], device=X.device)
    loss = torch.zeros_like(correct)
    with torch.no_grad():
        for i in range(0, len(X), _EVAL_CHUNK):
            part = slice(i, i + _EVAL_CHUNK)
            z = batched_logits(arch, params, X[part], T[part], M[part], train=False)
            y = Y[part]
            correct += (z.argmax(-1) == y).sum(dim=1)
            loss += F.cross_entropy(z.permute(0, 2, 1), y.expand(len(z), -1), reduction="none").sum(dim=1)
    return correct / len(X), loss / len(X)


def head_from_state(arch: dict[str, Any], state: dict[str, np.ndarray], stats, classes) -> TemporalHead:
    return TemporalHead(arch, {**state, **stats}, classes)


def _stats(seqs: FrameSequences, inputs: str, components: int) -> dict[str, np.ndarray]:
    """``input_stats``; one BLAS thread for small sets (see ``_SINGLE_THREAD_BELOW``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if seqs.x.size < 4_000_000 else None, user_api="blas"):
        return input_stats(seqs, inputs, components)


def fit_temporal(
    arch: dict[str, Any],
    recipe: Recipe,
    classes: list[str],
    train: tuple[FrameSequences, np.ndarray],
    val: tuple[FrameSequences, np.ndarray] | None,
    *,
    seed: int = 0,
    refit: bool = True,
) -> tuple[TemporalHead, dict[str, Any], dict[str, float], dict[str, Any]]:
    """Sweep lr x wd on val, keep the best, refit it on train+val; returns (head, hparams, val_scores, info)."""
    cands = recipe.candidates
    inputs = arch.get("inputs", "frames")
    components = int(arch.get("components", 0))
    stats = _stats(train[0], inputs, components)
    if val is None or not len(val[0]):  # nothing to select on: the middle candidate, all epochs
        g = len(cands) // 2
        sw = train_candidates(arch, recipe, [cands[g]], train, None, stats, seed=seed)
        lr, wd = cands[g]
        only = {"fits": 1, "epochs": int(sw.epochs_run), "steps": sw.steps, "sweep_seconds": sw.seconds}
        return head_from_state(arch, sw.states[0], stats, classes), {"lr": lr, "wd": wd}, {}, only
    sw = train_candidates(arch, recipe, cands, train, val, stats, seed=seed)
    # best val accuracy, then lower val loss, then the earlier listed
    g = min(range(len(cands)), key=lambda i: (-round(float(sw.val_acc[i]), 12), float(sw.val_loss[i]), i))
    lr, wd = cands[g]
    epochs = int(sw.best_epoch[g])
    scores = {f"lr={c[0]:g},wd={c[1]:g}": float(a) for c, a in zip(cands, sw.val_acc)}
    info: dict[str, Any] = {
        "candidates": len(cands),
        "sweep_seconds": round(sw.seconds, 3),
        "sweep_epochs": int(sw.epochs_run),
        "sweep_steps": sw.steps,
        "best_epoch": epochs,
        "val_loss": float(sw.val_loss[g]),
        "precision": sw.precision,
    }
    state = sw.states[g]
    if refit:
        both = FrameSequences.concat([train[0], val[0]])
        y_all = np.concatenate([train[1], val[1]])
        stats = _stats(both, inputs, components)
        rf = train_candidates(arch, recipe, [cands[g]], (both, y_all), None, stats, seed=seed, stop_after=epochs)
        state = rf.states[0]
        info.update(refit_epochs=epochs, refit_seconds=round(rf.seconds, 3))
    info["fits"] = len(cands) + int(refit)
    return head_from_state(arch, state, stats, classes), {"lr": lr, "wd": wd}, scores, info


__all__ = ["Recipe", "SweepResult", "fit_temporal", "train_candidates", "train_precision"]
