"""Training the temporal heads: one recipe from a hundred clips to a million, and a parallel lr x wd sweep.

The recipe (every part a setting, ``arch.TemporalSettings``): inputs whitened on the training clips
(``inputs.input_features``: by default each frame's deviation from its clip mean, its step
from the previous frame and the clip mean); dropout; AdamW with decoupled weight decay on the weight
matrices, linear warm-up then cosine decay; label smoothing; matrix products in bf16 where the hardware
has it (``precision``: autocast; fp32 master weights, optimizer state and loss); augmentation among the
cached frames (each frame dropped with ``frame_dropout``, the kept ones keep their order and
clip-relative times, which are jittered by up to ``time_jitter`` of a frame spacing), so nothing is
re-extracted; early stopping on val accuracy.

The sweep trains every (lr, wd) candidate *at once*: the candidates' parameters are stacked
(``torch.func.stack_module_state``, the module's own keys) and ``batched`` runs them as one
natively batched model on the same mini-batches: the shared input goes through all candidates' first
projection as one product, the per-fit setup and the per-step overhead are paid once, and dropout masks
are shared, so a candidate trains as it would alone (docs/performance.md has the measured gain). Each
candidate keeps the weights of its best validation epoch; the best
candidate on val wins (ties: lower val loss, then the earlier listed). As for logreg, the winner is then
refit on train+val with the same settings for the epochs it needed on val (its schedule unchanged). Where
val is too thin to choose (``heads.selection``), the sweep runs once per cross-validation fold and the
candidate with the best accuracy pooled over the folds is refit on every clip for its folds' mean epochs.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import HeadError
from ..heads.fitting import FitResult, TrainingSet, fit_progress
from ..sequences import FrameSequences
from .arch import PRECISIONS, TemporalSettings, temporal_arch
from .inputs import input_features, input_stats
from .predictor import TemporalHead

TRAIN_THREADS = max(1, min(8, os.cpu_count() or 1))  # fixed, so a seed gives the same weights run after run
# Below this many multiply-adds per step (the input projection of all candidates) a CPU sweep runs on one
# thread, like logreg's small fits: spinning OpenMP threads fight other jobs (docs/performance.md).
_SINGLE_THREAD_BELOW = 1 << 28
_EVAL_CHUNK = 1024


WARMUP = 0.1  # linear warm-up over this fraction of the steps, then cosine decay


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
    precision: str = "fp32"  # of the training steps' matrix products (train_precision)


def train_precision(precision: str, device) -> str:
    """'auto' -> bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), else fp32.

    Only the training steps' matrix products run in bf16 (``torch.autocast``): weights, optimizer state,
    loss and the val scoring that picks a candidate stay fp32, and the saved head is fp32 arrays that the
    numpy predictor runs in fp32. The products are most of a sweep step, and bf16 runs them several times
    faster where the CPU has it natively (docs/performance.md)."""
    from ...encoders.base import cpu_has_native_bf16

    if precision not in PRECISIONS:
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
    recipe: TemporalSettings,
    candidates: Sequence[tuple[float, float]],
    train: tuple[FrameSequences, np.ndarray],
    val: tuple[FrameSequences, np.ndarray] | None,
    stats: dict[str, np.ndarray],
    *,
    seed: int,
    stop_after: int | None = None,
    progress: Any = None,
) -> SweepResult:
    """Train ``candidates`` (lr, wd) of the module ``arch`` as one batched model; see the module doc.

    ``stop_after``: train exactly this many epochs (the refit), else up to ``recipe.epochs`` with early
    stopping on ``val``. ``progress``: a bar (``fit_progress``) counting epochs, ``recipe.epochs`` of its total
    for this training; the ones it does not run come off the total."""
    import torch

    from ...encoders.base import resolve_device

    t0 = time.perf_counter()
    device = resolve_device(recipe.device)
    n, T = train[0].x.shape[:2]
    work = min(recipe.batch_size, n) * T * int(arch["dim"]) * int(arch["width"]) * len(candidates)
    with _threads(device, work), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        sweep = _Sweep(arch, recipe, candidates, train, val, stats, seed, device)
        epoch, planned = 0, stop_after if stop_after is not None else recipe.epochs
        for epoch in range(1, planned + 1):
            sweep.train_epoch()
            if progress is not None:
                progress.update(1)
            if val is not None and sweep.score(epoch) and stop_after is None:
                break
        if progress is not None and epoch < recipe.epochs:
            progress.total -= recipe.epochs - epoch
            progress.refresh()
        return sweep.result(epoch, time.perf_counter() - t0)


class _Sweep:
    """The state of one batched training: stacked parameters, AdamW moments, the data on the device, and
    each candidate's best weights so far."""

    def __init__(self, arch, recipe: TemporalSettings, candidates, train, val, stats, seed: int, device) -> None:
        import torch
        from torch.func import stack_module_state

        from .models import build_model

        self.arch, self.recipe, self.device, self.G = arch, recipe, device, len(candidates)
        self.precision = train_precision(recipe.precision, device)
        model = build_model(arch)
        models = [copy.deepcopy(model) for _ in range(self.G)]  # one initialisation for every candidate
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in stack_module_state(models)[0].items()}
        inputs = arch.get("inputs", "frames")
        self.data = _on_device(train, stats, inputs, device)
        self.val = _on_device(val, stats, inputs, device) if val is not None else None
        self.lr = torch.tensor([c[0] for c in candidates], device=device)
        self.wd = torch.tensor([c[1] for c in candidates], device=device)
        # decoupled weight decay on weight matrices only (not biases, norms, queries or the time table)
        self.decays = {k: k.endswith("weight") and v.dim() >= 3 for k, v in self.params.items()}
        self.m1 = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.m2 = {k: torch.zeros_like(v) for k, v in self.params.items()}
        n, T = self.data[0].shape[:2]
        self.bs = max(1, min(recipe.batch_size, n))
        self.total = recipe.epochs * math.ceil(n / self.bs)
        self.warm = max(1, int(WARMUP * self.total))
        self.jitter = recipe.time_jitter / max(T - 1, 1)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.order_rng = np.random.default_rng(seed)
        self.best = [self._weights(g) for g in range(self.G)]
        self.best_acc = torch.full((self.G,), -1.0, device=device)
        self.best_loss = torch.full((self.G,), math.inf, device=device)
        self.best_epoch = torch.zeros(self.G, dtype=torch.long, device=device)
        self.step = 0

    def _weights(self, g: int) -> dict[str, Any]:
        return {k: v.detach()[g].clone() for k, v in self.params.items()}

    def train_epoch(self) -> None:
        import torch
        import torch.nn.functional as F

        from .batched import batched_logits

        X, Tt, M, Y = self.data
        r, dev = self.recipe, self.device
        perm = torch.from_numpy(self.order_rng.permutation(len(X))).to(dev)
        for i in range(math.ceil(len(X) / self.bs)):
            idx = perm[i * self.bs : (i + 1) * self.bs]
            xb, tb, mb, yb = X[idx], Tt[idx], M[idx], Y[idx]
            if r.frame_dropout > 0:  # drop frames, never all of a clip's
                keep = mb & (torch.rand(mb.shape, generator=self.gen, device=dev) >= r.frame_dropout)
                mb = torch.where(keep.any(dim=1, keepdim=True), keep, mb)
            if self.jitter > 0:
                tb = (tb + (torch.rand(tb.shape, generator=self.gen, device=dev) * 2 - 1) * self.jitter).clamp(0, 1)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                z = batched_logits(self.arch, self.params, xb, tb, mb, train=True)  # (G, B, K)
            z = z.float()
            flat = z.reshape(-1, z.shape[-1])
            loss = F.cross_entropy(flat, yb.repeat(self.G), label_smoothing=r.label_smoothing) * self.G
            for p in self.params.values():  # the loss is the sum over candidates of each one's mean loss
                p.grad = None
            loss.backward()
            self.step += 1
            s, warm = self.step, self.warm
            scale = s / warm if s <= warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (self.total - warm)))
            _adamw_step(self.params, self.m1, self.m2, self.decays, self.lr * scale, self.wd, s)

    def score(self, epoch: int) -> bool:
        """Score every candidate on val, keep the better weights; True when all have stopped improving."""
        import torch

        assert self.val is not None
        acc, vloss = _evaluate(self.arch, self.params, *self.val)
        better = (acc > self.best_acc + 1e-12) | ((acc >= self.best_acc - 1e-12) & (vloss < self.best_loss))
        for g in torch.nonzero(better).flatten().tolist():
            self.best[g] = self._weights(g)
        self.best_acc = torch.where(better, acc, self.best_acc)
        self.best_loss = torch.where(better, vloss, self.best_loss)
        self.best_epoch = torch.where(better, torch.full_like(self.best_epoch, epoch), self.best_epoch)
        stop = self.recipe.early_stop
        return bool(stop and (epoch - self.best_epoch >= stop).all())

    def result(self, epoch: int, seconds: float) -> SweepResult:
        import torch

        if self.val is None:  # no selection: the last weights
            self.best = [self._weights(g) for g in range(self.G)]
            self.best_epoch = torch.full((self.G,), epoch, dtype=torch.long)
        states = [{k: v.cpu().numpy() for k, v in s.items()} for s in self.best]
        scored = self.val is not None
        no_val = np.full(self.G, np.nan)
        return SweepResult(
            states,
            self.best_acc.cpu().numpy() if scored else no_val,
            self.best_loss.cpu().numpy() if scored else no_val,
            self.best_epoch.cpu().numpy(),
            epoch,
            self.step,
            seconds,
            self.precision,
        )


def _on_device(rows: tuple[FrameSequences, np.ndarray], stats, inputs: str, device) -> tuple:
    """(inputs, times, mask, labels) of ``rows`` as tensors on ``device``."""
    import torch

    seqs, y = rows
    return (
        torch.from_numpy(input_features(seqs, stats, inputs)).to(device),
        torch.from_numpy(seqs.t.astype(np.float32)).to(device),
        torch.from_numpy(seqs.mask).to(device),
        torch.as_tensor(y, device=device).long(),
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

    from .batched import batched_logits

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


def _stats(seqs: FrameSequences, inputs: str, components: int) -> dict[str, np.ndarray]:
    """``input_stats``; one BLAS thread for small sets (see ``_SINGLE_THREAD_BELOW``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if seqs.x.size < 4_000_000 else None, user_api="blas"):
        return input_stats(seqs, inputs, components)


def fit_temporal(kind: str, cfg: TemporalSettings, data: TrainingSet) -> FitResult:
    """The fit of every temporal head kind: sweep lr x wd on val (or over ``data.folds``), keep the best,
    refit it on train+val; nothing to choose on: the middle candidate for all epochs."""
    S_tr = data.X
    if not isinstance(S_tr, FrameSequences):
        raise HeadError(f"{kind}: reads each clip's frames (FrameSequences), not pooled vectors (pool 'frames')")
    t0 = time.perf_counter()
    arch = temporal_arch(kind, cfg, int(S_tr.x.shape[2]), len(data.classes), (len(S_tr), int(S_tr.x.shape[1])))
    cands = cfg.candidates
    on_val = data.X_val is not None and len(data.X_val) > 0
    trainings = (1 + int(data.refit)) if on_val else len(data.folds) + 1 if data.folds else 1
    with fit_progress(trainings * cfg.epochs, f"{kind} fit ({len(cands)} candidates)", "epoch") as bar:
        if on_val:
            g, state, stats, scores, info = _on_val(arch, cfg, data, bar)
        elif data.folds:
            g, scores, info = _on_folds(arch, cfg, data, bar)
            state, stats, refit = _train_all(arch, cfg, data, cands[g], int(info["best_epoch"]), bar)
            info.update(refit_epochs=info["best_epoch"], refit_seconds=round(refit, 3), fits=info["fits"] + 1)
        else:  # nothing to select on: the middle candidate, all epochs
            g, scores = len(cands) // 2, {}
            stats = _stats(S_tr, arch["inputs"], int(arch["components"]))
            sw = train_candidates(arch, cfg, [cands[g]], (S_tr, data.y), None, stats, seed=data.seed, progress=bar)
            state = sw.states[0]
            info = {"fits": 1, "epochs": int(sw.epochs_run), "steps": sw.steps, "sweep_seconds": sw.seconds}
    info["seconds"] = time.perf_counter() - t0
    head = TemporalHead(arch, {**state, **stats}, data.classes)
    return FitResult(head, list(data.classes), {"lr": cands[g][0], "wd": cands[g][1]}, scores, info)


def _scores(cands: Sequence[tuple[float, float]], acc: np.ndarray) -> dict[str, float]:
    return {f"lr={c[0]:g},wd={c[1]:g}": float(a) for c, a in zip(cands, acc)}


def _best(acc: np.ndarray, loss: np.ndarray) -> int:
    """Best accuracy, then lower loss, then the earlier listed."""
    return min(range(len(acc)), key=lambda i: (-round(float(acc[i]), 12), float(loss[i]), i))


def _on_val(arch: dict[str, Any], cfg: TemporalSettings, data: TrainingSet, bar: Any = None):
    """Sweep on train, choose on val; refit the winner on train+val for the epochs it needed on val."""
    S_tr, cands = data.X, cfg.candidates
    inputs, components = arch["inputs"], int(arch["components"])
    stats = _stats(S_tr, inputs, components)
    val = (data.X_val, data.y_val)
    sw = train_candidates(arch, cfg, cands, (S_tr, data.y), val, stats, seed=data.seed, progress=bar)
    g = _best(sw.val_acc, sw.val_loss)
    epochs, state = int(sw.best_epoch[g]), sw.states[g]
    info: dict[str, Any] = {
        "candidates": len(cands),
        "sweep_seconds": round(sw.seconds, 3),
        "sweep_epochs": int(sw.epochs_run),
        "sweep_steps": sw.steps,
        "best_epoch": epochs,
        "val_loss": float(sw.val_loss[g]),
        "precision": sw.precision,
    }
    if data.refit:  # the winner again on train+val, for the epochs it needed on val
        both = (FrameSequences.concat([S_tr, val[0]]), np.concatenate([data.y, val[1]]))
        stats = _stats(both[0], inputs, components)
        rf = train_candidates(arch, cfg, [cands[g]], both, None, stats, seed=data.seed, stop_after=epochs, progress=bar)
        state = rf.states[0]
        info.update(refit_epochs=epochs, refit_seconds=round(rf.seconds, 3))
    info["fits"] = len(cands) + int(data.refit)
    return g, state, stats, _scores(cands, sw.val_acc), info


def _on_folds(arch: dict[str, Any], cfg: TemporalSettings, data: TrainingSet, bar: Any = None):
    """The batched sweep once per fold (early stopping on the fold's held-out clips); a candidate's score is
    its accuracy pooled over every held-out clip, its epochs the mean of its folds' best epochs."""
    assert data.folds is not None
    cands, G = cfg.candidates, len(cfg.candidates)
    correct, loss, epochs = np.zeros(G), np.zeros(G), []
    seconds, n = 0.0, 0
    for tr, va in data.folds:
        S_f = data.X[tr]
        stats = _stats(S_f, arch["inputs"], int(arch["components"]))
        val = (data.X[va], data.y[va])
        sw = train_candidates(arch, cfg, cands, (S_f, data.y[tr]), val, stats, seed=data.seed, progress=bar)
        correct += np.round(sw.val_acc * len(va))
        loss += sw.val_loss * len(va)
        epochs.append(sw.best_epoch)
        seconds, n = seconds + sw.seconds, n + len(va)
    g = _best(correct / n, loss / n)
    best_epoch = max(1, int(round(float(np.mean([e[g] for e in epochs])))))
    info = {
        "candidates": G,
        "cv_folds": len(data.folds),
        "sweep_seconds": round(seconds, 3),
        "best_epoch": best_epoch,
        "val_loss": float(loss[g] / n),
        "fits": G * len(data.folds),
    }
    return g, _scores(cands, correct / n), info


def _train_all(arch: dict[str, Any], cfg: TemporalSettings, data: TrainingSet, cand, epochs: int, bar: Any = None):
    """One candidate on every row of ``data`` for ``epochs`` epochs: (weights, input stats, seconds)."""
    stats = _stats(data.X, arch["inputs"], int(arch["components"]))
    rf = train_candidates(
        arch, cfg, [cand], (data.X, data.y), None, stats, seed=data.seed, stop_after=epochs, progress=bar
    )
    return rf.states[0], stats, rf.seconds


__all__ = ["SweepResult", "fit_temporal", "train_candidates", "train_precision"]
