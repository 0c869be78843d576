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

SAMPLING_STRATEGIES = ("uniform", "fps")


@dataclass
class SamplingConfig:
    """Which frames of a clip are embedded (see ``pipeline.sampling``)."""

    strategy: str = "uniform"  # uniform: T frames, one per equal segment (TSN); fps: a fixed rate
    num_frames: int = 8  # T for ``uniform``
    fps: float = 1.0  # rate for ``fps``
    max_frames: int = 0  # cap for ``fps`` (0 = no cap)

    def validate(self) -> None:
        if self.strategy not in SAMPLING_STRATEGIES:
            raise ConfigError(f"sampling.strategy={self.strategy!r}: allowed values are {', '.join(SAMPLING_STRATEGIES)}")
        if self.num_frames < 1:
            raise ConfigError(f"sampling.num_frames={self.num_frames}: must be >= 1")
        if self.fps <= 0:
            raise ConfigError(f"sampling.fps={self.fps}: must be > 0")
        if self.max_frames < 0:
            raise ConfigError(f"sampling.max_frames={self.max_frames}: must be >= 0 (0 = no cap)")


@dataclass
class ExtractConfig:
    """How the extraction engine runs; none of this changes the embeddings, so it is not provenance."""

    batch_size: int = 32  # frames per encoder call, packed across clips
    num_workers: int = 2  # decoder processes (0 = decode in the main process)
    device: str = "auto"  # auto | cpu | cuda | cuda:K
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    shard_size: int = 512  # clips per shard file; a killed job loses at most one unfinished shard
    decode_threads: int = 0  # FFmpeg threads per decoder (0 = let FFmpeg choose)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"extract.batch_size={self.batch_size}: must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"extract.num_workers={self.num_workers}: must be >= 0")
        if self.shard_size < 1:
            raise ConfigError(f"extract.shard_size={self.shard_size}: must be >= 1")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"extract.precision={self.precision!r}: allowed values are auto, fp32, fp16, bf16")
        if self.decode_threads < 0:
            raise ConfigError(f"extract.decode_threads={self.decode_threads}: must be >= 0")


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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides; validated."""
    import yaml

    cfg = Config()
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a config file must be a mapping of settings")
        _apply(cfg, data)
    for text in overrides:
        keys, value = _parse_override(text)
        nested: dict[str, Any] = {keys[-1]: value}
        for k in reversed(keys[:-1]):
            nested = {k: nested}
        _apply(cfg, nested)
    return cfg.validate()
