"""What every encoder shares: the preprocessing contract with the decoder, and the frozen forward pass.

The decoder resizes frames (cheaply, inside FFmpeg) to ``Preprocess.frame_size`` and may centre-crop
them with ``Preprocess.center_crop``; the encoder then only converts, crops if still needed, and
normalises batched uint8 tensors on the device. The geometry reproduces the model's own PIL transform
(torchvision ``Resize(int)`` + ``CenterCrop``, as used by timm and open_clip), so cached embeddings
match what the library would give for the same resized image.

torch is imported inside methods, not at module level, so the decoder and the store can use
``Preprocess`` without paying for (or depending on) torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..config import PRECISIONS
from ..errors import ConfigError, EncoderError, check_choice
from ..versions import versions

if TYPE_CHECKING:  # pragma: no cover
    import torch

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash", "longest")


def _center_crop_geometry(h: int, w: int, size: int) -> tuple[tuple[int, int, int, int], int, int]:
    """(pad_top, pad_bottom, pad_left, pad_right), top, left exactly as torchvision ``center_crop``."""
    pt, pb = ((size - h) // 2, (size - h + 1) // 2) if size > h else (0, 0)
    pl, pr = ((size - w) // 2, (size - w + 1) // 2) if size > w else (0, 0)
    ph, pw = h + pt + pb, w + pl + pr
    return (pt, pb, pl, pr), int(round((ph - size) / 2.0)), int(round((pw - size) / 2.0))


@dataclass(frozen=True)
class Preprocess:
    """How frames must be resized, cropped and normalised for one model.

    ``resize_short`` is the edge length the resize targets: the short side for ``resize_mode``
    "shortest" (timm/open_clip default: aspect kept, then centre crop), both sides for "squash"
    (aspect dropped), the long side for "longest" (aspect kept, then zero padding to a square).
    """

    size: int
    resize_short: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "resize_short", int(self.resize_short))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.size <= 0 or self.resize_short <= 0:
            raise ConfigError(
                f"Preprocess: size and resize_short must be positive, got {self.size}, {self.resize_short}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"Preprocess: mean/std need 3 values (std > 0), got mean={self.mean} std={self.std}")
        check_choice(self.interpolation, INTERPOLATIONS, "Preprocess: interpolation")
        check_choice(self.resize_mode, RESIZE_MODES, "Preprocess: resize_mode")

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the decoder should resize a ``height`` x ``width`` frame to (torchvision rounding)."""
        t = self.resize_short
        if self.resize_mode == "squash":
            return t, t
        if self.resize_mode == "longest":  # open_clip ResizeKeepRatio(longest=1): round()
            ratio = max(height / t, width / t)
            return round(height / ratio), round(width / ratio)
        # torchvision Resize(int): short side exact, long side truncated with int()
        if width <= height:
            return int(t * height / width), t
        return t, int(t * width / height)

    def is_resized(self, height: int, width: int) -> bool:
        """True if a frame of this size already went through ``frame_size`` (or the crop)."""
        if (height, width) == (self.size, self.size):
            return True
        if self.resize_mode == "squash":
            return height == width == self.resize_short
        if self.resize_mode == "longest":
            return max(height, width) == self.resize_short
        return min(height, width) == self.resize_short

    def center_crop(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> (N, size, size, 3), zero-padding short sides like torchvision."""
        if frames.ndim != 4:
            raise EncoderError(f"center_crop expects (N, H, W, 3) frames, got shape {frames.shape}")
        h, w = frames.shape[1:3]
        (pt, pb, pl, pr), top, left = _center_crop_geometry(h, w, self.size)
        if pt or pb or pl or pr:
            frames = np.pad(frames, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        return frames[:, top : top + self.size, left : left + self.size]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(**d)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a weights file; cached per (path, size, mtime) because it is asked for often."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


def library_versions(*dists: str) -> dict[str, str]:
    """Versions an encoder's provenance records: torch, torchvision and its backend's ``dists``."""
    return versions("torch", "torchvision", *dists)


def no_cuda_driver() -> bool:
    """True where this machine certainly has no NVIDIA driver (Linux without /proc/driver/nvidia, libcuda or
    nvidia-smi): there ``cuda`` is refused without importing torch (seconds). False where one may exist."""
    if not sys.platform.startswith("linux") or os.path.exists("/proc/driver/nvidia/version"):
        return False
    import ctypes.util
    import shutil

    return ctypes.util.find_library("cuda") is None and shutil.which("nvidia-smi") is None


def check_device(device: Any, key: str = "device") -> None:
    """Refuse a device name that is wrong, or a CUDA device this machine lacks, before any work: without torch
    where there is no NVIDIA driver at all, else by ``resolve_device`` (imports torch). None, auto and cpu pass."""
    from ..config import check_device as check_name

    check_name(device, key)
    if device in (None, "auto", "cpu"):
        return
    if no_cuda_driver():
        raise ConfigError(f"{key}={device!r} but CUDA is not available here (no NVIDIA driver); use auto or cpu")
    resolve_device(device)


def resolve_device(device: Any = "auto") -> torch.device:
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(device))
        except RuntimeError:
            raise ConfigError(f"device={device!r} is not a device; allowed: auto, cpu, cuda, cuda:K") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r}: only auto, cpu, cuda and cuda:K are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but CUDA is not available here; use device=auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of a native bf16 matmul
BF16_ENV = "VIDPROBE_CPU_BF16"  # "1" / "0" overrides the detection (tests; a CPU whose flags mislead)
_warned_slow_bf16 = False


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[str, ...]:
    """The native bf16 matmul features of this CPU (``BF16_CPU_FLAGS`` present), () if none.

    Read from /proc/cpuinfo, which costs no torch import (and is what oneDNN dispatches on: it ignores
    ``ATEN_CPU_CAPABILITY``); elsewhere from torch's own CPU checks.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        return tuple(x for x in BF16_CPU_FLAGS if x in flags)
    try:
        import torch.cpu as tc

        found = {"amx_bf16": tc._is_amx_tile_supported(), "avx512_bf16": tc._is_avx512_bf16_supported()}
    except (ImportError, AttributeError):
        return ()
    return tuple(x for x in BF16_CPU_FLAGS if found[x])


def cpu_has_native_bf16(override: bool | None = None) -> bool:
    """True where bf16 matmuls run natively (AMX-BF16 or AVX512-BF16): there bf16 weights are
    faster than fp32, without them several times slower (docs/performance.md#precision).
    ``override``, else ``$VIDPROBE_CPU_BF16`` (1/0), wins."""
    if override is not None:
        return bool(override)
    env = os.environ.get(BF16_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "0", "false", "no"):
        return env in ("1", "true", "yes")
    return bool(cpu_bf16_support())


@functools.lru_cache(maxsize=1)
def cpu_bf16_attention_needs_math() -> bool:
    """Whether bf16 attention must avoid torch's fused CPU kernel: on a CPU with AMX tiles whose ATen kernels
    run below AVX-512 (``ATEN_CPU_CAPABILITY=avx2``), that kernel picks the AMX packing its AVX2 build lacks
    and raises "pack_vnni2 is only supported when avx512 is supported" (torch 2.14, head dim >= 32). The math
    kernel computes the same attention there."""
    import torch

    return "AVX512" not in torch.backends.cpu.get_cpu_capability() and "amx_bf16" in cpu_bf16_support()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> fp16 (autocast) on CUDA; on CPU bf16 where it is native (``cpu_has_native_bf16``), else fp32.

    On CPU reduced precision means bf16 weights and inputs, not autocast (slower than fp32 there);
    fp16 is refused there (conv kernels missing or slow), forced bf16 without native support warns once.
    """
    global _warned_slow_bf16
    check_choice(precision, PRECISIONS, "precision")
    if device.type == "cuda":
        return "fp16" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16":
        raise ConfigError("precision='fp16' is for CUDA only; on CPU use precision=auto, fp32 or bf16")
    if precision == "bf16" and not cpu_has_native_bf16() and not _warned_slow_bf16:
        _warned_slow_bf16 = True
        warnings.warn(
            "precision=bf16 on a CPU without AMX-BF16/AVX512-BF16: expect it to be several times slower "
            "than fp32; precision=auto picks the fast one",
            stacklevel=2,
        )
    return precision


def is_conv_net(model: Any) -> bool:
    """Heuristic for the channels_last default: many Conv2d layers (a ViT has one, its patch embedding)."""
    import torch

    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


class FrameEncoder(Protocol):
    """What extraction needs of an encoder (``Encoder`` is one; a test may pass its own)."""

    spec: str
    weights_id: str
    dim: int
    device: Any  # a torch.device (or its name): where ``encode`` runs
    preprocess_cfg: Preprocess
    precision: str  # fp32 | bf16 | fp16, as resolved: part of the store's identity

    def encode(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, dim)."""
        ...

    def provenance(self) -> dict[str, Any]:
        """What produced the embeddings (stored with them)."""
        ...


class Encoder:
    """A frozen image model: uint8 frames in, float32 embeddings out.

    Subclasses set ``backend`` and implement ``_features`` (and ``_logits`` / ``encode_text`` when they
    can). The base class owns everything device-, precision- and layout-related, so there is one code
    path for CPU and GPU.
    """

    backend: str = ""
    supports_text: bool = False

    def __init__(
        self,
        *,
        spec: str,
        model: Any,
        model_name: str,
        preprocess_cfg: Preprocess,
        weights_id: str,
        device: Any = "auto",
        precision: str = "auto",
        channels_last: bool | None = None,
        versions: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        import torch

        self.spec = spec
        self.model_name = model_name
        self.preprocess_cfg = preprocess_cfg
        self.weights_id = weights_id
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        self.channels_last = is_conv_net(model) if channels_last is None else bool(channels_last)
        self._versions = versions or library_versions()
        self._extra = extra or {}

        self._convert = self.device.type == "cpu" and self.precision != "fp32"
        model.eval().requires_grad_(False)
        model.to(self.device, dtype=self.dtype if self._convert else None)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        # Normalisation folded onto the 0..255 scale: (x - 255*mean) / (255*std) == Normalize(ToTensor(x)).
        shape = (1, 3, 1, 1)
        self._mean255 = torch.tensor(preprocess_cfg.mean, device=self.device).mul_(255).view(shape)
        self._std255 = torch.tensor(preprocess_cfg.std, device=self.device).mul_(255).view(shape)
        # One real forward pass: gives the embedding size for any architecture and fails early.
        s = preprocess_cfg.size
        self.dim = int(self.encode(np.zeros((1, s, s, 3), np.uint8)).shape[1])

    # -- subclass hooks -------------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise EncoderError(f"encoder {self.spec!r} has no classifier head; classify() is not available")

    def encode_text(self, texts: list[str]) -> np.ndarray:
        raise EncoderError(f"encoder {self.spec!r} has no text tower; zero-shot needs an openclip:MODEL spec")

    def _derive(self, features: torch.Tensor, name: str) -> torch.Tensor:
        """Another output computed from this forward's ``features`` (``encode_outputs``); none by default."""
        raise EncoderError(f"encoder {self.spec!r} has no output {name!r} besides its embedding")

    def _outputs(self, x: torch.Tensor, derived: tuple[str, ...]) -> list[torch.Tensor]:
        """[embedding, *derived outputs] of one forward over the preprocessed batch ``x``: by default the
        embedding, then each output computed from it (``_derive``); a backend whose other outputs come from
        inside the network (timm's ``#blockK``) overrides this."""
        features = self._features(x)
        return [features, *(self._derive(features, name) for name in derived)]

    # -- public API ---------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) on any device -> normalised float32 (N, 3, size, size) on ``self.device``.
        Frames not resized for this model are resized here, so a wrong size cannot become a tiny centre crop."""
        import torch
        import torch.nn.functional as F

        self._check_frames(frames)
        non_blocking = self.device.type == "cuda" and frames.device.type == "cpu" and frames.is_pinned()
        x = frames.to(self.device, non_blocking=non_blocking).permute(0, 3, 1, 2)  # NCHW view
        cfg = self.preprocess_cfg
        h, w = x.shape[-2:]
        if (h, w) != (cfg.size, cfg.size):
            if not cfg.is_resized(h, w):
                mode = cfg.interpolation
                x = F.interpolate(
                    x.float(),
                    size=cfg.frame_size(h, w),
                    mode=mode,
                    antialias=mode != "nearest",
                    align_corners=False if mode != "nearest" else None,
                )
                x = x.clamp_(0, 255) if mode == "bicubic" else x
                h, w = x.shape[-2:]
            (pt, pb, pl, pr), top, left = _center_crop_geometry(h, w, cfg.size)
            if pt or pb or pl or pr:
                x = F.pad(x, (pl, pr, pt, pb))
            x = x[:, :, top : top + cfg.size, left : left + cfg.size]
        x = (x.float() - self._mean255) / self._std255
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def encode(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, dim) embeddings (not L2-normalised)."""
        return self._run(frames, self._features, "dim")

    def encode_outputs(self, frames: np.ndarray | torch.Tensor, derived: tuple[str, ...] = ()) -> list[np.ndarray]:
        """[the embeddings, then each ``derived`` output], all from one forward pass: how several stores
        share one model (``pipeline.encoders.group``)."""
        if not derived:
            return [self.encode(frames)]
        return self._run(frames, lambda x: self._outputs(x, derived), None)

    def classify(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, num_classes) logits, where the model has a classifier."""
        return self._run(frames, self._logits, None)

    def provenance(self) -> dict[str, Any]:
        """What produced the embeddings. ``runtime`` does not change the model, only its numerics."""
        return {
            "spec": self.spec,
            "backend": self.backend,
            "model": self.model_name,
            "weights_id": self.weights_id,
            "dim": self.dim,
            "preprocess": self.preprocess_cfg.to_dict(),
            **self._extra,
            "versions": dict(self._versions),
            "runtime": {"device": self.device.type, "precision": self.precision, "channels_last": self.channels_last},
        }

    def __repr__(self) -> str:
        dim = getattr(self, "dim", "?")
        return f"{type(self).__name__}(spec={self.spec!r}, dim={dim}, device={self.device}, precision={self.precision})"

    # -- helpers --------------------------------------------------------------------------------
    def _autocast(self):
        """The precision context of a forward pass: autocast on CUDA; on CPU none (bf16 there means bf16
        weights, ``_convert``), except the attention kernel where ``cpu_bf16_attention_needs_math``."""
        import torch

        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=self.dtype)
        if self.device.type == "cpu" and self.precision == "bf16" and cpu_bf16_attention_needs_math():
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def _run(self, frames: Any, fn: Any, dim_attr: str | None) -> Any:
        """``fn`` on the preprocessed batch: one float32 array, or a list of them if ``fn`` returns a list."""
        import torch

        x = self._as_tensor(frames)
        if x.shape[0] == 0 and dim_attr is not None and hasattr(self, dim_attr):
            return np.zeros((0, getattr(self, dim_attr)), np.float32)
        with torch.inference_mode(), self._autocast():
            x = self.preprocess(x)
            out = fn(x.to(self.dtype) if self._convert else x)
        if isinstance(out, (list, tuple)):
            return [o.float().cpu().numpy() for o in out]
        return out.float().cpu().numpy()

    def _as_tensor(self, frames: Any) -> torch.Tensor:
        import torch

        if isinstance(frames, np.ndarray):
            if not frames.flags.writeable:  # torch.from_numpy warns on read-only arrays (h5py, mmap)
                frames = frames.copy()
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        elif not isinstance(frames, torch.Tensor):
            raise EncoderError(
                f"encoder {self.spec!r}: frames must be a numpy array or torch tensor, got {type(frames).__name__}"
            )
        self._check_frames(frames)
        return frames

    def _check_frames(self, frames: torch.Tensor) -> None:
        import torch

        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise EncoderError(
                f"encoder {self.spec!r}: expected uint8 frames shaped (N, H, W, 3), "
                f"got {str(frames.dtype).replace('torch.', '')} {tuple(frames.shape)}"
            )
