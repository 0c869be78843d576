"""open_clip backend: ``openclip:MODEL[@WEIGHTS]``.

MODEL: an open_clip model name (``ViT-B-32``), ``hf-hub:org/repo``, or a path to a JSON model config
(``{"embed_dim", "vision_cfg", "text_cfg"}``), registered with ``open_clip.add_model_config`` under the
file's stem. WEIGHTS: an existing checkpoint file, else a pretrained tag (hub download), or absent for
random init. The embedding is ``model.encode_image`` *un-normalised* (heads normalise as they need;
normalising here would throw away the norm for good). ``encode_text`` returns L2-normalised text
embeddings for zero-shot heads.

``#pre`` embeds with the image tower's output *before* its final projection into the joint space (what
and why: docs/extraction.md, "Pre-projection features"). The projection is detached from this encoder's own
model copy, so the spec (recorded in the store) says which features a store holds; sharing a forward, the
``#pre`` model derives the joint embedding with it (``encode_outputs(frames, ("joint",))``).

Preprocessing is the model's own (``open_clip.get_model_preprocess_cfg``). open_clip only applies a
tag's preprocessing (mean/std, interpolation, resize mode) when it loads that *tag*; with a local
checkpoint it falls back to OpenAI CLIP defaults, which is wrong for e.g. SigLIP or MobileCLIP weights.
So for a local checkpoint of a built-in model we apply the preprocessing all of that model's tags agree
on (warning when they disagree), and record where it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EncoderError
from .base import Encoder, Preprocess, library_versions, sha256_file

_TAG_KEYS = ("mean", "std", "interpolation", "resize_mode")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_REGISTERED: dict[str, str] = {}  # config stem -> JSON path we registered it from
HUB_CONNECT_S = 2.0  # how long a tag's download may take to reach the hub before it counts as offline


class OpenClipEncoder(Encoder):
    backend = "openclip"
    supports_text = True

    def __init__(self, *, features: str = "joint", **kwargs: Any) -> None:
        self._tokenizer: Callable[..., Any] | None = None  # open_clip tokenizer, built on first use
        self.features = features
        self.projection = None  # (width, dim) matrix removed for #pre: pre @ projection = joint embedding
        self._projection_here = None  # the projection on the model's device and dtype (``_derive``)
        if features == "pre":
            self.projection = _detach_projection(kwargs["model"], kwargs["spec"])
        elif features != "joint":
            raise ConfigError(f"encoder spec {kwargs['spec']!r}: features={features!r}; allowed: joint, pre")
        kwargs["extra"] = {**(kwargs.get("extra") or {}), "features": features}
        super().__init__(**kwargs)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (exp of the logit_scale parameter): zero-shot logits = scale * cosine."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp()) if scale is not None else 100.0

    def _features(self, x):
        return self.model.encode_image(x)

    def _derive(self, features, name: str):
        """``joint`` from ``#pre`` features: the detached projection applied as the tower applies it."""
        if name != "joint" or self.projection is None:
            return super()._derive(features, name)
        if self._projection_here is None:  # on the model's device and in its dtype (bf16 weights on CPU)
            self._projection_here = self.projection.to(self.device, dtype=features.dtype)
        return features @ self._projection_here

    def encode_text(self, texts: list[str] | str) -> np.ndarray:
        """L2-normalised float32 (len(texts), dim) text embeddings (zero-shot class prompts)."""
        import open_clip
        import torch
        import torch.nn.functional as F

        if isinstance(texts, str):
            texts = [texts]
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            z = self.model.encode_text(tokens)
        return F.normalize(z.float(), dim=-1).cpu().numpy()


def _detach_projection(model: Any, spec: str):
    """Make ``model.encode_image`` return pre-projection features; returns the removed projection."""
    import torch

    visual = model.visual
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.nn.Parameter):  # open_clip VisionTransformer: pooled @ proj
        visual.proj = None
        return proj.detach().clone()
    head_proj = getattr(getattr(visual, "head", None), "proj", None)
    if isinstance(head_proj, torch.nn.Linear) and head_proj.bias is None:  # timm trunk + linear projection
        visual.head.proj = torch.nn.Identity()
        return head_proj.weight.detach().T.clone()
    raise EncoderError(
        f"encoder spec {spec!r}: #pre is available for open_clip ViT towers and timm trunks with a linear "
        f"projection; {type(visual).__name__} has neither (its projection is part of its pooling)"
    )


def _register_config(path: Path, spec: str) -> tuple[str, str]:
    """Register a JSON model config with open_clip; returns (model name, sha256 of the file)."""
    import open_clip

    try:
        raw = path.read_bytes()
        cfg = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"encoder spec {spec!r}: cannot read model config {path} ({exc})") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError(
            f"encoder spec {spec!r}: {path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)"
        )
    name = path.stem
    owner = _REGISTERED.get(name)
    if owner is None and name in open_clip.list_models():
        raise ConfigError(
            f"encoder spec {spec!r}: config name {name!r} clashes with open_clip's built-in model; rename {path}"
        )
    if owner is not None and owner != str(path):
        raise ConfigError(
            f"encoder spec {spec!r}: config name {name!r} is already registered from {owner}; rename {path}"
        )
    if owner is None or open_clip.get_model_config(name) != cfg:
        open_clip.add_model_config(path)
        _REGISTERED[name] = str(path)
    return name, hashlib.sha256(raw).hexdigest()


def _tag_preprocess(name: str) -> tuple[dict[str, Any] | None, str]:
    """Preprocessing every pretrained tag of ``name`` shares, for weights loaded from a local file."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    found: dict[str, list[str]] = {}
    for tag in tags:
        cfg = open_clip.get_pretrained_cfg(name, tag)
        key = json.dumps(
            {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in _TAG_KEYS}, sort_keys=True
        )
        found.setdefault(key, []).append(tag)
    if len(found) == 1:
        return json.loads(next(iter(found))), f"shared by open_clip tags of {name}"
    if len(found) > 1:
        warnings.warn(
            f"open_clip tags of {name} disagree on preprocessing "
            f"({'; '.join(f'{k} ({v[0]}...)' for k, v in found.items())}); a local checkpoint gets open_clip's default "
            "(OpenAI CLIP) preprocessing",
            stacklevel=3,
        )
    return None, "open_clip default"


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or s.startswith((".", "~")) or s.lower().endswith(_CHECKPOINT_SUFFIXES)


def _preprocess_from_model(model: Any, spec: str) -> Preprocess:
    import open_clip

    pc = open_clip.get_model_preprocess_cfg(model)
    size = pc.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise EncoderError(f"encoder spec {spec!r}: non-square input size {tuple(size)} is not supported")
        size = size[0]
    mode = pc.get("resize_mode") or "shortest"
    if mode == "longest" and pc.get("fill_color", 0) != 0:
        raise EncoderError(
            f"encoder spec {spec!r}: resize_mode 'longest' with fill_color {pc['fill_color']} is not supported"
        )
    interpolation = pc.get("interpolation") or "bicubic"
    return Preprocess(
        size=int(size),
        resize_short=int(size),  # open_clip resizes straight to the input size (no crop_pct)
        mean=tuple(pc["mean"]),
        std=tuple(pc["std"]),
        interpolation="bilinear" if interpolation == "bilinear" else "bicubic",  # 'random' means bicubic at eval
        resize_mode=mode,
    )


def _no_download(spec: str, name: str, hub: bool, why: str) -> EncoderError:
    """The error of pretrained weights that cannot be fetched, with the local-checkpoint form to use instead."""
    local = (
        "openclip:MODEL_OR_CONFIG.json@/path/to/weights"
        if hub
        else f"openclip:{name}@/path/to/open_clip_model.safetensors"
    )
    return EncoderError(
        f"encoder spec {spec!r}: pretrained weights could not be downloaded ({why}); without network give a local "
        f"checkpoint: '{local}'"
    )


def _hub_unreachable(timeout: float = HUB_CONNECT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached now (offline mode, or no TCP connection to it or to the https
    proxy within ``timeout`` s), None when it can: a download attempt there spends a minute in retries."""
    import socket
    import threading
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    target = (
        urlsplit(proxy if "//" in proxy else f"http://{proxy}")
        if proxy and not urllib.request.proxy_bypass(host)
        else url
    )
    where = (target.hostname or host, target.port or (443 if target.scheme == "https" else 80))
    done, failed = threading.Event(), []

    def connect() -> None:  # in a thread: a name lookup can hang past any socket timeout
        try:
            socket.create_connection(where, timeout=timeout).close()
        except OSError as exc:
            failed.append(exc.strerror or type(exc).__name__)
        done.set()

    threading.Thread(target=connect, name="vidprobe-hub-check", daemon=True).start()
    if done.wait(timeout) and not failed:
        return None
    return f"no connection to {where[0]}:{where[1]} ({failed[0] if failed else f'none within {timeout:g} s'})"


def check(spec: str, model_ref: str, weights: str | None) -> None:
    """What is refused before torch and open_clip are imported (seconds): pretrained weights (a tag, an hf-hub
    model) that cannot be downloaded, unless the Hugging Face cache may hold them; then the hub is put in
    offline mode, so loading reads the cache without retrying the network for a minute (hf-hub:ORG/REPO is
    looked up exactly; a tag's repo only open_clip knows)."""
    hub = model_ref.startswith("hf-hub:")
    if not hub and (weights is None or _looks_like_path(weights) or Path(weights).expanduser().is_file()):
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # open_clip's own import error says what is missing
        return
    why = _hub_unreachable()
    if why is None:
        return
    cache = Path(constants.HF_HUB_CACHE)
    wanted = f"models--{model_ref[len('hf-hub:') :].replace('/', '--')}" if hub else "models--*"
    if not any(cache.glob(wanted)):
        what = f"{why}; not in the Hugging Face cache {cache}" + ("" if hub else f"; {weights!r} is not a file")
        raise _no_download(spec, model_ref.replace("/", "-"), hub, what)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def build(spec: str, model_ref: str, weights: str | None, **options: Any) -> OpenClipEncoder:
    import open_clip

    extra: dict[str, Any] = {}
    hub = model_ref.startswith("hf-hub:")
    if model_ref.lower().endswith(".json"):
        path = Path(model_ref).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"encoder spec {spec!r}: model config file {str(path)!r} not found")
        name, extra["model_config_sha256"] = _register_config(path, spec)
    elif hub:
        name = model_ref
        if weights is not None:
            raise ConfigError(f"encoder spec {spec!r}: hf-hub models bring their own weights; drop '@{weights}'")
    else:
        name = model_ref.replace("/", "-")
        if name not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
            raise ConfigError(
                f"encoder spec {spec!r}: open_clip has no model {name!r} ({hint}), and it is not a .json config path"
            )

    force_pp: dict[str, Any] | None = None
    tag = None
    if hub:
        pretrained, weights_id, source = None, f"pretrained:{name}", "hf-hub config"
    elif weights is None:
        pretrained, weights_id, source = None, "random-init", "open_clip default"
    elif Path(weights).expanduser().is_file():
        file = Path(weights).expanduser().resolve()
        pretrained, weights_id = str(file), sha256_file(file)
        extra["weights_file"] = str(file)
        force_pp, source = _tag_preprocess(name)
    elif _looks_like_path(weights):
        raise ConfigError(f"encoder spec {spec!r}: checkpoint file {weights!r} not found; give an existing file path")
    elif open_clip.get_pretrained_cfg(name, weights):
        tag = pretrained = weights
        weights_id, source = f"pretrained:{weights}", f"open_clip tag {weights}"
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"known tags: {', '.join(tags)}" if tags else f"{name} has no pretrained tags"
        raise ConfigError(
            f"encoder spec {spec!r}: {weights!r} is neither a checkpoint file nor a pretrained tag ({known})"
        )
    extra["preprocess_source"] = source

    try:
        model = open_clip.create_model(
            name, pretrained=pretrained, device="cpu", precision="fp32", force_preprocess_cfg=force_pp
        )
    except Exception as exc:
        if tag is not None or hub:
            raise _no_download(spec, name, hub, type(exc).__name__) from exc
        detail = " ".join(str(exc).split())[:300]
        raise EncoderError(
            f"encoder spec {spec!r}: cannot build the model or load "
            f"{pretrained or 'it'} ({type(exc).__name__}: {detail})"
        ) from exc
    return OpenClipEncoder(
        spec=spec,
        model=model,
        model_name=name,
        preprocess_cfg=_preprocess_from_model(model, spec),
        weights_id=weights_id,
        versions=library_versions("open_clip_torch"),
        extra=extra,
        **options,
    )
