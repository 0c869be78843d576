"""Heads: classifiers on pooled clip features, saved without pickle next to a JSON sidecar.

Kinds (``HeadConfig.kind``):

* ``logreg`` — the CLIP linear-probe protocol: standardise, multinomial logistic regression, C chosen
  by a coarse-to-fine sweep on the validation split, refit on train+val (``pipeline.probe.logreg``: torch
  L-BFGS with warm starts by default; ``solver="sklearn"`` runs scikit-learn's L-BFGS instead). The
  candidate fits of the search stop at a 10x looser gradient tolerance (``sweep_tol``); the chosen C
  is refit to scikit-learn's default tolerance (``tol`` = 1e-4);
* ``mlp`` — scikit-learn MLP (one hidden layer), weight decay chosen on val, early stopping;
* ``knn`` — cosine k-nearest neighbours, k chosen on val;
* ``zeroshot`` — no training: class prompts ("a video of a person {label}.") through the open_clip
  text tower of the encoder that made the store; probabilities = softmax(logit_scale * cosine);
* ``attn`` — the attentive probe over a clip's frames (``temporal_models.AttentiveProbe``), and
* ``gru`` — a (bi)GRU over the frames: both read ``FrameSequences`` (pool ``frames``) instead of pooled
  vectors, are trained in torch with lr x weight decay chosen on val by one batched sweep and refit on
  train+val (``temporal_train``), and predict with numpy (``temporal_numpy.TemporalHead``); ``.npz`` only.

Every fitted head is a plain scikit-learn estimator (a torch solution is copied into a
``LogisticRegression``; a zero-shot head *is* a linear classifier on L2-normalised features). Files:

* ``.npz`` (default): the estimator's arrays (``pipeline.probe.native_heads``), its architecture in the
  sidecar's ``model`` entry; loaded by numpy with ``allow_pickle=False`` and predicted without
  scikit-learn, so ``vidprobe predict`` needs neither scikit-learn nor skops;
* ``.skops``: ``skops.io``, whose loader builds only audited scikit-learn/numpy types and refuses others;
* ``.joblib`` (pickle): written only when asked for, loaded only with ``trust=True``.

The sidecar records the encoder, sampling, pooling, labels, settings, metrics and the head file's
sha256, so ``predict`` can rebuild the extraction and a swapped file is caught.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import (
    AUTO,
    HEAD_KINDS,
    SOLVERS,
    TEMPORAL_HEADS,
    TEMPORAL_INPUTS,
    TEMPORAL_PRECISIONS,
    build,
    check_settings,
    rule,
)
from ..errors import ConfigError, HeadError
from ..versions import versions
from .logreg import (
    DEFAULT_COARSE_CS,
    DEFAULT_MAX_ITER,
    DEFAULT_PATIENCE,
    DEFAULT_REFINE,
    DEFAULT_TOL,
    make_solver,
    sweep_C,
)
from .native_heads import predictor_from_arrays, to_native
from .sequences import FrameSequences, HeadInput
from .temporal_numpy import TemporalHead, input_width  # (registers the attn and gru native kinds)

HEAD_FORMATS = {".npz": "npz", ".skops": "skops", ".joblib": "joblib"}
DEFAULT_TEMPLATES: tuple[str, ...] = ("a video of a person {label}.",)
DEFAULT_C = 1.0  # used when there is no validation split to sweep on (scikit-learn's default)

# Which HeadConfig fields each kind reads (the rest must keep their defaults).
_KIND_FIELDS = {
    "logreg": ("Cs", "refine", "patience", "solver", "tol", "sweep_tol", "max_iter", "device"),
    "mlp": ("hidden", "alphas", "max_iter"),
    "knn": ("ks",),
    "zeroshot": ("templates", "device"),
}
_TRAINING = ("lrs", "wds", "epochs", "batch_size", "dropout", "frame_dropout", "time_jitter", "label_smoothing")
_KIND_FIELDS["attn"] = (
    "precision",
    "inputs",
    "components",
    "width",
    "depth",
    "queries",
    "num_heads",
    "trend",
    *_TRAINING,
    "early_stop",
    "device",
)
_KIND_FIELDS["gru"] = (
    "precision",
    "inputs",
    "components",
    "width",
    "bidirectional",
    "trend",
    *_TRAINING,
    "early_stop",
    "device",
)


@dataclass
class HeadConfig:
    """What to fit; validated up front, and recorded (``to_dict``) with every head and benchmark row."""

    kind: str = field(default="logreg", metadata=rule(choices=HEAD_KINDS, key="head"))
    # logreg: coarse grid of C (scikit-learn's convention)
    Cs: tuple[float, ...] = field(default=DEFAULT_COARSE_CS, metadata=rule(gt=0, finite=True, nonempty=True))
    # logreg: log10 steps of the fine search
    refine: tuple[float, ...] = field(default=DEFAULT_REFINE, metadata=rule(gt=0))
    # logreg: stop climbing C after this many worse values (0 = all)
    patience: int = field(default=DEFAULT_PATIENCE, metadata=rule(min=0, note="(0 = try every C)"))
    solver: str = field(default="torch", metadata=rule(choices=SOLVERS))  # logreg: torch (CPU/CUDA) | sklearn
    # logreg: gradient tolerance of the final fit (scikit-learn's default)
    tol: float = field(default=DEFAULT_TOL, metadata=rule(gt=0))
    # logreg: looser tolerance for the candidate fits of the C search
    sweep_tol: float = field(default=10 * DEFAULT_TOL, metadata=rule(gt=0))
    max_iter: int = field(default=DEFAULT_MAX_ITER, metadata=rule(min=1))
    hidden: int = field(default=256, metadata=rule(min=1))  # mlp: hidden units
    # mlp: weight decays tried on val
    alphas: tuple[float, ...] = field(default=(1.0, 1e-2, 1e-4), metadata=rule(min=0, nonempty=True))
    # knn: neighbour counts tried on val
    ks: tuple[int, ...] = field(default=(1, 3, 5, 10, 20, 50), metadata=rule(min=1, nonempty=True))
    # zeroshot: prompts, each with {label}
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES, metadata=rule(nonempty=True))
    # logreg (torch solver), zeroshot (text tower), attn, gru: auto | cpu | cuda[:K]
    device: str = field(default="auto", metadata=rule(device=True))
    # attn, gru: precision of the training steps' matrix products: auto (bf16 autocast on CUDA and on CPUs
    # with native bf16, else fp32) | fp32 | bf16; weights, optimizer and the saved head stay fp32
    precision: str = field(default="auto", metadata=rule(choices=TEMPORAL_PRECISIONS))
    # attn, gru: per frame, its deviation from the clip mean + its step from the previous frame + the clip
    # mean (delta), without the step (residual), or the frame itself (frames)
    inputs: str = field(default="delta", metadata=rule(choices=TEMPORAL_INPUTS))
    # attn, gru: inputs PCA-whitened onto this many directions (per part); 0 = standardise each dimension;
    # auto = 0 on small sets (fewer than 4 clips per dimension, inputs within 1 GiB), else 64 (resolve_components)
    components: int | str = field(default=AUTO, metadata=rule(min=0, auto=True))
    width: int = field(default=64, metadata=rule(min=1))  # attn: embedding width; gru: hidden units
    depth: int = field(default=1, metadata=rule(min=1, max=12))  # attn: blocks (depth - 1 self-attention first)
    queries: int = field(default=1, metadata=rule(min=1, max=64))  # attn: learnable queries
    num_heads: int = field(default=4, metadata=rule(min=1))  # attn: attention heads (must divide width)
    bidirectional: bool = True  # gru: also read the clip backwards
    # attn, gru: add a linear readout of each clip's mean input and its slope over time to the logits (the
    # trend pooling's linear probe inside the head; demo how-task, attn: 0.872 -> 0.925 over 5 seeds, performance.md)
    trend: bool = True
    # attn, gru: learning rates and weight decays swept together on val (one batched model)
    lrs: tuple[float, ...] = field(default=(3e-3, 1e-3, 3e-4), metadata=rule(gt=0, finite=True, nonempty=True))
    wds: tuple[float, ...] = field(default=(0.01, 0.1, 0.4), metadata=rule(min=0, nonempty=True))
    epochs: int = field(default=80, metadata=rule(min=1))  # attn, gru: most epochs (early stopping on val)
    batch_size: int = field(default=64, metadata=rule(min=1))  # attn, gru: clips per step
    # attn: in the MLP and on the pooled queries; gru: on the frames and the final state. 0.3 (with 80 epochs and
    # early_stop 20) was chosen on demo seeds 0-2 (val and test) and checked on seeds 3-4: docs/performance.md
    dropout: float = field(default=0.3, metadata=rule(min=0, lt=1))
    # attn, gru: each cached frame left out of a training clip with this probability (augmentation)
    frame_dropout: float = field(default=0.1, metadata=rule(min=0, lt=1))
    # attn, gru: random shift of each frame's clip-relative time, in frame spacings (augmentation)
    time_jitter: float = field(default=0.25, metadata=rule(min=0, max=1))
    label_smoothing: float = field(default=0.1, metadata=rule(min=0, lt=1))  # attn, gru
    # attn, gru: stop after this many epochs without a better val score for any candidate (0 = never)
    early_stop: int = field(default=20, metadata=rule(min=0))

    def validate(self) -> HeadConfig:
        check_settings(self)
        return self

    def _check(self, prefix: str) -> None:
        """What the field rules cannot say: which settings a kind reads, and how they relate."""
        defaults = HeadConfig()
        for f in dataclasses.fields(self):
            if (
                f.name != "kind"
                and f.name not in _KIND_FIELDS[self.kind]
                and getattr(self, f.name) != getattr(defaults, f.name)
            ):
                raise ConfigError(
                    f"head setting {f.name!r} does not apply to head {self.kind!r} "
                    f"(its settings: {', '.join(_KIND_FIELDS[self.kind]) or 'none'})"
                )
        if self.sweep_tol < self.tol:
            raise ConfigError(
                f"sweep_tol={self.sweep_tol:g}: must be >= tol={self.tol:g} "
                "(the search may be looser than the final fit, not tighter)"
            )
        if self.width % self.num_heads:
            raise ConfigError(f"num_heads={self.num_heads}: must divide width={self.width}")
        if any("{label}" not in t for t in self.templates):
            raise ConfigError(f"templates={list(self.templates)!r}: every prompt template must contain {{label}}")

    def to_dict(self) -> dict[str, Any]:
        """The kind and the settings it uses (JSON-ready): what the sidecar and results.csv record."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in _KIND_FIELDS[self.kind]:
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> HeadConfig:
        """From a head name or a mapping (YAML); unknown keys are errors that name the key."""
        if isinstance(d, str):
            return cls(kind=d).validate()
        if not isinstance(d, dict):
            raise ConfigError(f"head: expected a name or a mapping of settings, got {d!r}")
        return build(cls, d, what="head setting")


@dataclass
class FitResult:
    estimator: Any
    classes: list[str]
    hparams: dict[str, Any]  # what selection chose (C, alpha, k) or built (templates)
    val_scores: dict[str, float] = field(default_factory=dict)  # "name=value" -> validation top-1
    info: dict[str, Any] = field(default_factory=dict)  # fits, solver iterations, seconds, device

    @property
    def C(self) -> float | None:
        return self.hparams.get("C")


def linear_classifier(W: np.ndarray, b: np.ndarray, classes: Sequence[str], C: float = 1.0):
    """A fitted scikit-learn ``LogisticRegression`` whose ``predict_proba`` is softmax(X W^T + b).

    Two classes: scikit-learn uses one vector and a sigmoid; sigmoid((w1-w0)x + b1-b0) is the same softmax.
    """
    from sklearn.linear_model import LogisticRegression

    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    if W.shape[0] != len(classes) or len(classes) < 2:
        raise HeadError(f"linear head: {W.shape[0]} weight rows for {len(classes)} classes")
    lr = LogisticRegression(C=C)
    if len(classes) == 2:
        W, b = W[1:] - W[:1], b[1:] - b[:1]
    lr.coef_, lr.intercept_ = W, b
    lr.classes_ = np.array(list(classes))
    lr.n_features_in_ = int(W.shape[1])
    lr.n_iter_ = np.zeros(1, dtype=np.int32)
    return lr


def _val_rows(classes: list[str], X_val, y_val) -> tuple[Any, np.ndarray | None]:
    """Validation rows whose label the head can predict (a label absent from train cannot be chosen for)."""
    if X_val is None or y_val is None or not len(y_val):
        return None, None
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([y in index for y in y_val], bool)
    if not keep.any():
        return None, None
    X_keep = X_val[np.flatnonzero(keep)] if isinstance(X_val, FrameSequences) else np.asarray(X_val)[keep]
    return X_keep, np.array([index[y] for y, k in zip(y_val, keep) if k])


def _select(candidates: Sequence[Any], make, X_tr, y_tr, X_va, y_va, name: str) -> tuple[Any, dict[str, float]]:
    """Fit ``make(value)`` per candidate on train, score on val; best = first with the highest top-1."""
    scores: dict[str, float] = {}
    best, best_acc = candidates[0], -1.0
    for v in candidates:
        est = make(v).fit(X_tr, y_tr)
        acc = float(np.mean(est.predict(X_va) == y_va))
        scores[f"{name}={v:g}"] = acc
        if acc > best_acc + 1e-12:
            best, best_acc = v, acc
    return best, scores


def _fit_logreg(cfg: HeadConfig, classes, X_tr, yi_tr, X_va, yi_va, refit: bool) -> FitResult:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    K = len(classes)
    opts = dict(device=cfg.device, tol=cfg.tol, max_iter=cfg.max_iter)
    scaler = StandardScaler().fit(X_tr)  # one C grid then fits every encoder, whatever its feature scale
    solver = make_solver(cfg.solver, scaler.transform(X_tr).astype(np.float32), yi_tr, K, **opts)
    info: dict[str, Any] = {"solver": cfg.solver, "device": str(getattr(solver, "device", "cpu"))}
    if X_va is not None:
        sweep = sweep_C(
            solver,
            scaler.transform(X_va).astype(np.float32),
            yi_va,
            coarse=cfg.Cs,
            refine=cfg.refine,
            patience=cfg.patience,
            tol=cfg.sweep_tol,
        )
        C, fit = sweep.C, sweep.fit
        val_scores = {f"C={c:.4g}": acc for c, (acc, _) in sweep.scores.items()}
        info.update(fits=sweep.fits, iterations=sweep.iterations)
        if refit:  # the CLIP protocol: refit on train+val at the chosen C, warm-started from the train fit
            X_all = np.concatenate([X_tr, X_va])
            scaler = StandardScaler().fit(X_all)
            solver = make_solver(
                cfg.solver, scaler.transform(X_all).astype(np.float32), np.concatenate([yi_tr, yi_va]), K, **opts
            )
        if refit or cfg.sweep_tol > cfg.tol:  # few-shot (no refit): still finish the chosen fit to full tolerance
            fit = solver.fit(C, fit)
            info.update(fits=info["fits"] + 1, iterations=info["iterations"] + fit.n_iter)
    else:
        C, val_scores = DEFAULT_C, {}
        fit = solver.fit(C)
        info.update(fits=1, iterations=fit.n_iter)
    info.update(converged=bool(fit.converged), seconds=time.perf_counter() - t0)
    est = make_pipeline(scaler, linear_classifier(fit.W, fit.b, classes, C))
    return FitResult(est, list(classes), {"C": float(C)}, val_scores, info)


# components=auto: standardise each dimension on sets of fewer than AUTO_CLIPS_PER_DIM clips per embedding
# dimension whose full-width inputs (float32) take at most AUTO_FULL_INPUT_BYTES, else PCA-whiten onto
# AUTO_COMPONENTS directions. On small sets whitening amplifies the directions a few hundred clips cannot
# estimate (demo how-task, attn: per dimension clearly above whitened onto 64; docs/performance.md); on big ones
# the covariance is well estimated and full width costs (3 x D) / (3 x 64) times the input product's work,
# or does not fit at all (1M clips x 8 frames x 3 x 1280 floats = 123 GB).
AUTO_CLIPS_PER_DIM = 4
AUTO_FULL_INPUT_BYTES = 1 << 30
AUTO_COMPONENTS = 64


def resolve_components(cfg: HeadConfig, dim: int, train_shape: tuple[int, int] | None = None) -> int:
    """The number of input directions a fit uses: ``cfg.components``, with ``auto`` decided on the training
    set's (clips, frames) ``train_shape`` (None: a small set)."""
    if cfg.components != AUTO:
        return min(int(cfg.components), dim)
    n, t = train_shape or (0, 0)
    full = n * t * input_width(cfg.inputs, dim, 0) * 4
    small = n < AUTO_CLIPS_PER_DIM * dim and full <= AUTO_FULL_INPUT_BYTES
    return 0 if small else min(AUTO_COMPONENTS, dim)


def temporal_arch(
    cfg: HeadConfig, dim: int, n_classes: int, train_shape: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The architecture record (sidecar ``model``) of an attn / gru head on ``dim``-d frame embeddings
    (``train_shape``: the training set's (clips, frames), which ``components=auto`` is decided on)."""
    components = resolve_components(cfg, dim, train_shape)
    arch: dict[str, Any] = {
        "kind": cfg.kind,
        "inputs": cfg.inputs,
        "dim": input_width(cfg.inputs, dim, components),  # what the module reads per frame
        "components": components,
        "embedding_dim": dim,
        "n_classes": n_classes,
        "width": cfg.width,
        "dropout": cfg.dropout,
        "trend": cfg.trend,
    }
    if cfg.kind == "attn":
        arch.update(depth=cfg.depth, queries=cfg.queries, num_heads=cfg.num_heads, time_bins=16)
    else:
        arch.update(bidirectional=cfg.bidirectional)
    return arch


def _fit_temporal(cfg: HeadConfig, classes, S_tr, yi_tr, S_va, yi_va, seed: int, refit: bool) -> FitResult:
    from .temporal_train import Recipe, fit_temporal

    if not isinstance(S_tr, FrameSequences):
        raise HeadError(f"{cfg.kind}: reads each clip's frames (FrameSequences), not pooled vectors (pool 'frames')")
    t0 = time.perf_counter()
    fields_ = ("lrs", "wds", "epochs", "batch_size", "frame_dropout", "time_jitter", "label_smoothing")
    recipe = Recipe(
        **{k: getattr(cfg, k) for k in fields_}, early_stop=cfg.early_stop, device=cfg.device, precision=cfg.precision
    )
    arch = temporal_arch(cfg, int(S_tr.x.shape[2]), len(classes), (len(S_tr), int(S_tr.x.shape[1])))
    val = (S_va, yi_va) if S_va is not None else None
    head, hparams, scores, info = fit_temporal(arch, recipe, list(classes), (S_tr, yi_tr), val, seed=seed, refit=refit)
    info["seconds"] = time.perf_counter() - t0
    return FitResult(head, list(classes), hparams, scores, info)


def _mlp(cfg: HeadConfig, alpha: float, seed: int, n: int):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Early stopping holds out 10% of the training rows; below ~100 rows that is too few to mean anything.
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(cfg.hidden,),
            alpha=alpha,
            max_iter=min(cfg.max_iter, 300),
            early_stopping=n >= 100,
            n_iter_no_change=10,
            random_state=seed,
        ),
    )


def _knn(k: int):
    from sklearn.neighbors import KNeighborsClassifier

    # brute force: exact cosine neighbours, and no tree object in the saved file
    return KNeighborsClassifier(n_neighbors=int(k), metric="cosine", algorithm="brute", weights="distance")


def _strip_training_state(est) -> None:
    """Drop optimiser state (not needed to predict; its type is not on skops' trusted list)."""
    for step in getattr(est, "steps", [("", est)]):
        if hasattr(step[1], "_optimizer"):
            step[1]._optimizer = None


def fit_head(
    config: HeadConfig | str,
    X_train: HeadInput,
    y_train: Sequence[str],
    X_val: HeadInput | None = None,
    y_val: Sequence[str] | None = None,
    *,
    seed: int = 0,
    refit: bool = True,
    classes: Sequence[str] | None = None,
    encoder: Any = None,
    encoder_spec: str | None = None,
) -> FitResult:
    """Fit one head: hyperparameter chosen on (X_val, y_val) when given, then refit on train+val.

    ``refit=False`` keeps the train-only fit (few-shot: the k shots are the whole training set).
    ``zeroshot`` trains nothing: it needs ``classes`` and the ``encoder`` (or ``encoder_spec``) whose
    text tower embeds the prompts.
    """
    cfg = HeadConfig.from_dict(config) if isinstance(config, str) else config.validate()
    if cfg.kind == "zeroshot":
        if not classes:
            raise HeadError("zeroshot: no class names to build prompts from")
        return zeroshot_head(
            list(classes), encoder=encoder, encoder_spec=encoder_spec, templates=cfg.templates, device=cfg.device
        )
    y_train = [str(y) for y in y_train]
    labels = sorted(set(y_train))
    if len(labels) < 2:
        raise HeadError(f"training needs at least 2 classes; the train split has {labels}")
    index = {c: i for i, c in enumerate(labels)}
    yi_tr = np.array([index[y] for y in y_train])
    X_va, yi_va = _val_rows(labels, X_val, [str(y) for y in y_val] if y_val is not None else None)
    if cfg.kind in TEMPORAL_HEADS:
        return _fit_temporal(cfg, labels, X_train, yi_tr, X_va, yi_va, seed, refit)
    X_tr = np.asarray(X_train, np.float32)
    if cfg.kind == "logreg":
        return _fit_logreg(cfg, labels, X_tr, yi_tr, X_va, yi_va, refit)

    t0 = time.perf_counter()
    y_tr = np.array(labels)[yi_tr]
    y_va = np.array(labels)[yi_va] if X_va is not None else None
    if cfg.kind == "mlp":
        name, candidates = "alpha", list(cfg.alphas)
        make = lambda a: _mlp(cfg, a, seed, len(y_tr) + (len(y_va) if refit and y_va is not None else 0))  # noqa: E731
    else:  # knn
        name = "k"
        candidates = [k for k in cfg.ks if k <= len(y_tr)] or [len(y_tr)]
        make = _knn
    scores: dict[str, float] = {}
    best: Any
    # Small problems: multi-threaded BLAS only adds sync cost, and under CPU contention its spinning
    # threads made a 180 x 2560 fit 70x slower (17 s vs 0.24 s measured). Large ones keep all threads.
    from threadpoolctl import threadpool_limits

    blas_threads = 1 if X_tr.size < 4_000_000 else None
    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads, user_api="blas"):
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        if X_va is not None and y_va is not None and len(candidates) > 1 and cfg.kind == "knn":
            from .knn_topk import select_k  # one blocked neighbour search scores every k

            best, scores = select_k([int(k) for k in candidates], X_tr, y_tr, X_va, y_va)
        elif X_va is not None and len(candidates) > 1:
            best, scores = _select(candidates, make, X_tr, y_tr, X_va, y_va, name)
        else:
            best = candidates[len(candidates) // 2]
        if refit and X_va is not None:
            X_fit, y_fit = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va])
        else:
            X_fit, y_fit = X_tr, y_tr
        est = make(best).fit(X_fit, y_fit)
    _strip_training_state(est)
    value = int(best) if name == "k" else float(best)
    return FitResult(est, labels, {name: value}, scores, {"fits": len(scores) + 1, "seconds": time.perf_counter() - t0})


# -- zero-shot ---------------------------------------------------------------------------------


def label_to_text(label: str) -> str:
    """Class name as words for a prompt.

    ``ApplyEyeMakeup`` / ``brush_hair`` -> ``apply eye makeup`` / ``brush hair``.
    """
    text = re.sub(r"[_\-]+", " ", label)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    return " ".join(text.split()).lower()


def zeroshot_head(
    classes: list[str],
    *,
    encoder: Any = None,
    encoder_spec: str | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str = "auto",
) -> FitResult:
    """Class embeddings = mean over templates of the normalised prompt embeddings, renormalised (CLIP).

    The head is ``Normalizer`` + a linear classifier with weights ``logit_scale * class_embeddings``, so
    its prediction is the argmax of cosine similarity, and it saves and loads like any other head.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    t0 = time.perf_counter()
    if encoder is None:
        encoder = zeroshot_encoder(encoder_spec, device=device)
    prompts = [[t.format(label=label_to_text(c)) for t in templates] for c in classes]
    flat = encoder.encode_text([p for ps in prompts for p in ps])  # L2-normalised rows
    T = flat.reshape(len(classes), len(templates), -1).mean(axis=1)
    T = T / np.linalg.norm(T, axis=1, keepdims=True)
    scale = float(getattr(encoder, "logit_scale", 100.0))
    est = make_pipeline(Normalizer(), linear_classifier(scale * T, np.zeros(len(classes)), classes))
    hparams = {"templates": list(templates), "logit_scale": scale, "example_prompt": prompts[0][0]}
    return FitResult(est, list(classes), hparams, {}, {"seconds": time.perf_counter() - t0, "encoder": encoder.spec})


def zeroshot_encoder(spec: str | None, *, weights_id: str | None = None, device: str = "auto"):
    """The store's encoder, rebuilt for its text tower; refused where the text tower cannot match the images."""
    from ..encoders import create_encoder, spec_options

    if not spec:
        raise HeadError("zeroshot: the store does not record its encoder spec")
    _, options = spec_options(spec)
    if "pre" in options:
        raise HeadError(
            f"zeroshot: store features are pre-projection ({spec!r}); "
            "prompts live in the joint space — use a store extracted without '#pre'"
        )
    if not spec.startswith("openclip:"):
        raise HeadError(
            f"zeroshot: encoder {spec!r} has no text tower; zero-shot needs a store extracted with an "
            "openclip:MODEL@WEIGHTS encoder"
        )
    if weights_id == "random-init":
        raise HeadError(
            f"zeroshot: the store was extracted with randomly initialised weights ({spec!r}); "
            "its text tower cannot be rebuilt"
        )
    encoder = create_encoder(spec, device=device)
    if weights_id is not None and encoder.weights_id != weights_id:
        raise HeadError(
            f"zeroshot: {spec!r} now loads weights {encoder.weights_id}, but the store was made with {weights_id}"
        )
    return encoder


# -- files ---------------------------------------------------------------------------------------


def sidecar_path(head_path: str | Path) -> Path:
    return Path(head_path).with_suffix(".json")


def head_format(path: str | Path) -> str:
    p = Path(path)
    if p.suffix not in HEAD_FORMATS:
        raise ConfigError(
            f"{p}: a head file must end in .npz (default: plain arrays), .skops (scikit-learn objects, audited "
            "types) or .joblib (pickle; loading it needs --trust)"
        )
    return HEAD_FORMATS[p.suffix]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_head(path: str | Path, result: FitResult, meta: dict[str, Any]) -> Path:
    """Write the head (format from the suffix) and its JSON sidecar beside it; returns the sidecar path."""
    p = Path(path)
    fmt = head_format(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    blob = {"estimator": result.estimator, "classes": list(result.classes)}
    if isinstance(result.estimator, TemporalHead) and fmt != "npz":
        raise HeadError(f"{p}: a {result.estimator.arch['kind']} head is saved as plain arrays; name the file NAME.npz")
    model = None
    if fmt == "npz":
        arrays, model = to_native(result.estimator)
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays, classes=np.array([str(c) for c in result.classes]))  # type: ignore[arg-type]
    elif fmt == "skops":
        import skops.io as sio

        sio.dump(blob, tmp)
    else:
        import joblib

        joblib.dump(blob, tmp)
    tmp.replace(p)
    side = {
        **meta,
        "format": fmt,
        **({"model": model} if model is not None else {}),
        "head_sha256": _sha256(p),
        "classes": result.classes,
        "hparams": result.hparams,
        "val_scores": [[k, v] for k, v in result.val_scores.items()],  # in the order tried
        "fit_info": result.info,
        "versions": versions("vidprobe", "scikit-learn", "skops", "numpy", "python"),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    sidecar_path(p).write_text(json.dumps(side, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return sidecar_path(p)


@dataclass
class LoadedHead:
    estimator: Any
    classes: list[str]
    meta: dict[str, Any]

    def predict_proba(self, X: HeadInput) -> np.ndarray:
        return self.estimator.predict_proba(X)


def load_head_meta(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """The checks of ``load_head`` that need no scikit-learn (which a .skops file imports broadly): head
    file and sidecar exist, the sidecar parses and its sha256 matches, pickle is trusted."""
    p = Path(path)
    side = sidecar_path(p)
    if not p.is_file():
        raise HeadError(f"{p}: no such head file; train one with `vidprobe train STORE -o {p}`")
    fmt = head_format(p)
    if not side.is_file():
        raise HeadError(f"{side}: sidecar missing; a head cannot be used without knowing its encoder and pooling")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HeadError(f"{side}: unreadable sidecar ({exc})") from None
    recorded = meta.get("head_sha256")
    if recorded and recorded != _sha256(p):
        raise HeadError(
            f"{p}: file does not match its sidecar's sha256 (replaced or damaged); retrain or restore the pair"
        )
    if fmt == "joblib" and not trust:
        raise HeadError(
            f"{p}: joblib (pickle) files can run code when loaded; load it only if you trust where it came from, "
            "with --trust"
        )
    return meta


def load_head(path: str | Path, *, trust: bool = False, meta: dict[str, Any] | None = None) -> LoadedHead:
    """Load a head and its sidecar without running code from the file (unless ``trust``).

    ``.npz``: numpy arrays only (``allow_pickle=False``), rebuilt as the numpy predictor that the
    sidecar's ``model`` entry names; no scikit-learn is imported. ``.skops``: only types on skops' trusted
    list (scikit-learn, numpy, builtins) are built; anything else is refused naming the types. ``.joblib``
    is pickle, which runs code while loading: refused unless ``trust=True``. HeadError names the file for
    every refusal or damage. ``meta``: what ``load_head_meta`` already returned for this file (its checks
    are then not repeated: a large kNN head is not read and hashed twice).
    """
    p = Path(path)
    if meta is None:
        meta = load_head_meta(p, trust=trust)
    fmt = head_format(p)
    if fmt == "npz":
        predictor = _load_npz(p, meta)
        return LoadedHead(predictor, list(predictor.classes), meta)
    try:
        if fmt == "skops":
            import skops.io as sio

            untrusted = sio.get_untrusted_types(file=p)
            if untrusted and not trust:
                raise HeadError(
                    f"{p}: refusing to load types that are not on the trusted list: {', '.join(untrusted)}; "
                    "load it only if you trust where it came from, with --trust"
                )
            blob = sio.load(p, trusted=untrusted or None)
        else:
            import joblib

            blob = joblib.load(p)
        estimator, classes = blob["estimator"], [str(c) for c in blob["classes"]]
    except HeadError:
        raise
    except Exception as exc:  # damaged or foreign files raise many types
        raise HeadError(f"{p}: cannot load head ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not callable(getattr(estimator, "predict_proba", None)):
        raise HeadError(
            f"{p}: holds a {type(estimator).__name__}, not a classifier with predict_proba; "
            "retrain it with `vidprobe train`"
        )
    return LoadedHead(estimator, classes, meta)


def _load_npz(p: Path, meta: dict[str, Any]):
    """The numpy predictor of an .npz head; every damage is a HeadError naming the file."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise HeadError(
            f"{sidecar_path(p)}: no 'model' entry describing the .npz head; retrain it with `vidprobe train`"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        classes = arrays.pop("classes")
        return predictor_from_arrays(arrays, model, classes.tolist())
    except HeadError as exc:
        raise HeadError(f"{p}: {exc}") from None
    except Exception as exc:  # not a zip, object arrays (pickle refused), bad shapes
        raise HeadError(f"{p}: cannot load head ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
