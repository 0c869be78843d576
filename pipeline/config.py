"""Extraction settings: dataclasses loaded from YAML with ``key=value`` overrides.

Settings are plain data so they can be recorded in a store's provenance and compared: a store refuses
to grow with different sampling or encoder settings. Unknown keys are errors that name the key, so a
typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

SAMPLING_STRATEGIES = ("uniform", "fps", "every_n", "keyframes", "multiclip", "sliding")
WINDOWED_STRATEGIES = ("multiclip", "sliding")  # several clips (windows) per manifest item
SEEK_MODES = ("exact", "keyframe")


@dataclass
class SamplingConfig:
    """Which frames of a clip are embedded (see ``pipeline.data.sampling``); all of it is store provenance."""

    strategy: str = "uniform"  # one of SAMPLING_STRATEGIES (see configs/default.yaml)
    num_frames: int = 8  # T for uniform, and frames per window for multiclip / sliding
    fps: float = 1.0  # rate for fps
    max_frames: int = 0  # cap for fps / every_n / keyframes, spread evenly over the clip (0 = no cap)
    every_n: int = 1  # N for every_n: every N-th frame in presentation order
    num_clips: int = 1  # K for multiclip
    clip_length: float = 0.0  # window seconds: multiclip (0 = duration / K) and sliding (required)
    stride: float = 0.0  # sliding: seconds between window starts (0 = clip_length, no overlap)
    seek_mode: str = "exact"  # exact | keyframe (snap to the nearest keyframe, decode keyframes only)

    def validate(self) -> None:
        if self.strategy not in SAMPLING_STRATEGIES:
            raise ConfigError(f"sampling.strategy={self.strategy!r}: allowed values are {', '.join(SAMPLING_STRATEGIES)}")
        if self.num_frames < 1:
            raise ConfigError(f"sampling.num_frames={self.num_frames}: must be >= 1")
        if self.fps <= 0:
            raise ConfigError(f"sampling.fps={self.fps}: must be > 0")
        if self.max_frames < 0:
            raise ConfigError(f"sampling.max_frames={self.max_frames}: must be >= 0 (0 = no cap)")
        if self.every_n < 1:
            raise ConfigError(f"sampling.every_n={self.every_n}: must be >= 1")
        if self.num_clips < 1:
            raise ConfigError(f"sampling.num_clips={self.num_clips}: must be >= 1")
        for name in ("clip_length", "stride"):
            value = getattr(self, name)
            if value != 0 and not value >= 0.01:
                raise ConfigError(f"sampling.{name}={value}: must be 0 (the default) or >= 0.01 seconds")
        if self.strategy == "sliding" and self.clip_length <= 0:
            raise ConfigError("sampling.clip_length must be > 0 seconds for strategy=sliding (e.g. sampling.clip_length=2)")
        if self.seek_mode not in SEEK_MODES:
            raise ConfigError(f"sampling.seek_mode={self.seek_mode!r}: allowed values are {', '.join(SEEK_MODES)}")

    @property
    def windowed(self) -> bool:
        """True when one manifest item expands into several clip windows."""
        return self.strategy in WINDOWED_STRATEGIES


AUTO = "auto"


@dataclass
class ExtractConfig:
    """How the extraction engine runs; none of this changes the embeddings, so it is not provenance.

    ``auto`` values are resolved for the machine by ``pipeline.extract.resolve_runtime`` (see there and
    the README for the measured reasoning).
    """

    batch_size: int | str = AUTO  # frames per encoder call, packed across clips (auto: 16 on CPU, 128 on CUDA)
    num_workers: int | str = AUTO  # decoder processes (auto: one per core); 0 = decode in a main-process thread
    device: str = "auto"  # auto | cpu | cuda | cuda:K
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    shard_size: int = 512  # clips per shard file; a killed job loses at most one unfinished shard
    decode_threads: int | str = AUTO  # FFmpeg threads per decoder process (0 = FFmpeg decides)
    torch_threads: int | str = AUTO  # intra-op threads of the encoder on CPU (0 = torch decides)
    decode_timeout: float = 120.0  # seconds one clip may take to decode before its worker is replaced
    prefetch_frames: int = 0  # decoded frames buffered ahead of the encoder (0 = 4 batches)

    def validate(self) -> None:
        _auto_or_int(self.batch_size, "extract.batch_size", minimum=1)
        _auto_or_int(self.num_workers, "extract.num_workers", minimum=0)
        _auto_or_int(self.decode_threads, "extract.decode_threads", minimum=0)
        _auto_or_int(self.torch_threads, "extract.torch_threads", minimum=0)
        if self.shard_size < 1:
            raise ConfigError(f"extract.shard_size={self.shard_size}: must be >= 1")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"extract.precision={self.precision!r}: allowed values are auto, fp32, fp16, bf16")
        if not self.decode_timeout > 0:
            raise ConfigError(f"extract.decode_timeout={self.decode_timeout}: must be > 0 seconds")
        if self.prefetch_frames < 0:
            raise ConfigError(f"extract.prefetch_frames={self.prefetch_frames}: must be >= 0 (0 = 4 batches)")


def _auto_or_int(value: Any, key: str, minimum: int) -> None:
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be auto or an integer >= {minimum}")


STORE_DTYPES = ("float32", "float16")
STORE_COMPRESSIONS = ("none", "gzip", "lzf")


@dataclass
class StoreConfig:
    """How embeddings are written to shard files.

    ``dtype`` is part of a store's identity (float16 halves the size but rounds every value to ~3
    significant digits, so one store never mixes the two); ``compression`` is lossless, recorded per
    shard by HDF5 itself, and may differ between runs appending to one store.
    """

    dtype: str = "float32"  # float32 | float16 (half the size; relative rounding error <= 2**-11)
    compression: str = "none"  # none | gzip | lzf (lossless; embeddings compress little, see benchmarks/store_read.py)
    compression_level: int = 4  # gzip level 1..9

    def validate(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise ConfigError(f"store.dtype={self.dtype!r}: allowed values are {', '.join(STORE_DTYPES)}")
        if self.compression not in STORE_COMPRESSIONS:
            raise ConfigError(f"store.compression={self.compression!r}: allowed values are {', '.join(STORE_COMPRESSIONS)}")
        if not 1 <= self.compression_level <= 9:
            raise ConfigError(f"store.compression_level={self.compression_level}: must be 1..9 (used by gzip)")


@dataclass
class Config:
    """Everything ``vidprobe extract`` needs besides the source and the store path."""

    encoder: str = "effnet-lite0"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def validate(self) -> "Config":
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ConfigError("encoder: must be a non-empty spec string such as effnet-lite0 or openclip:ViT-B-32@openai")
        self.sampling.validate()
        self.extract.validate()
        self.store.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type, naming the key when it cannot."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            number = typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected {'an integer' if typ is int else 'a number'}") from None
        if typ is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return number
    if set(typing.get_args(typ)) == {int, str}:  # "auto" or a count
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        return _coerce(value, int, key)
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a single value, got {type(value).__name__}")
        return str(value)
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown setting {dotted!r}; known: {', '.join(sorted(prefix + n for n in names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping of settings")
            _apply(current, value, prefix=dotted + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. sampling.num_frames=16")
    key, raw = text.split("=", 1)
    import yaml

    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError naming the file and ``what`` it should be."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read {what} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a {what} must be a mapping of settings")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides; validated."""
    cfg = Config()
    if path is not None:
        _apply(cfg, read_yaml_mapping(path, "config file"))
    for text in overrides:
        keys, value = _parse_override(text)
        nested: dict[str, Any] = {keys[-1]: value}
        for k in reversed(keys[:-1]):
            nested = {k: nested}
        _apply(cfg, nested)
    return cfg.validate()
