"""``zeroshot``: no training. Class prompts ("a video of a person {label}.") through the open_clip text tower
of the encoder that made the store; probabilities = softmax(logit_scale * cosine). Saved as ``linear``."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...config import rule
from ...errors import ConfigError, HeadError
from .fitting import FitResult, TrainingSet
from .logreg import linear_classifier
from .registry import HeadKind, register_head

__all__ = ["DEFAULT_TEMPLATES", "ZeroshotSettings", "label_to_text", "zeroshot_encoder", "zeroshot_head"]
DEFAULT_TEMPLATES: tuple[str, ...] = ("a video of a person {label}.",)


@dataclass
class ZeroshotSettings:
    templates: tuple[str, ...] = field(
        default=DEFAULT_TEMPLATES, metadata=rule(nonempty=True, most=256)
    )  # each with {label}
    device: str = field(default="auto", metadata=rule(device=True))  # of the text tower: auto | cpu | cuda[:K]

    def _check(self, prefix: str) -> None:
        if any("{label}" not in t for t in self.templates):
            raise ConfigError(f"templates={list(self.templates)!r}: every prompt template must contain {{label}}")


def fit(cfg: ZeroshotSettings, data: TrainingSet) -> FitResult:
    if not data.classes:
        raise HeadError("zeroshot: no class names to build prompts from")
    return zeroshot_head(
        data.classes, encoder=data.encoder, encoder_spec=data.encoder_spec, templates=cfg.templates, device=cfg.device
    )


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
    from ...encoders import create_encoder, spec_options

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


register_head(HeadKind("zeroshot", ZeroshotSettings, fit, trained=False))
