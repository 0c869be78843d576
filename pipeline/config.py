"""Extraction settings: dataclasses loaded from YAML with ``key=value`` overrides, and the one settings machinery.

Settings are plain data so they can be recorded in a store's provenance and compared: a store refuses
to grow with different sampling or encoder settings. Unknown keys are errors that name the key, so a
typo never silently falls back to a default.

Every settings dataclass of vidprobe (these, each head kind's settings, ``SplitSpec``, the benchmark's entries)
declares what each field may hold next to the field (``field(..., metadata=rule(min=1))``), and one
walker (``check_settings``) coerces and checks them all, naming the dotted key in every message;
``build`` makes one from a mapping with the one coercer (``coerce``) and unknown-key check (``check_known``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError, allowed_values

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SAMPLING_STRATEGIES = ("uniform", "fps", "every_n", "keyframes", "multiclip", "sliding")
WINDOWED_STRATEGIES = ("multiclip", "sliding")  # several clips (windows) per manifest item
SEEK_MODES = ("exact", "keyframe")
# encoder precision; auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (encoders.base.resolve_precision)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Choices of the probe stage, here so that `vidprobe --help` builds its parser without importing numpy
# (the head kinds: pipeline.probe.heads.registry).
SOLVERS = ("torch", "sklearn")  # torch L-BFGS (CPU or CUDA) | scikit-learn's (the reference)
EVAL_SPLITS = ("test", "val", "train", "all")  # what ``evaluate`` can score
AUTO = "auto"
# Caps that bound memory. One clip's frames are decoded, held and embedded together: 4096 frames are
# ~600 MiB of 224x224 RGB uint8 and 21 MiB of 1280-d float32 embeddings, far above any clip model's
# input (8-64 frames) yet small enough that a typo (num_frames=1000000000) cannot exhaust the machine.
MAX_FRAMES_PER_CLIP = 4096
# One video's windows (multiclip / sliding) are planned and their embeddings held until the video is
# done: 4096 windows x 8 frames x 1280-d float32 is ~170 MiB; a stride of 0.01 s over an hour is 360k.
MAX_WINDOWS_PER_VIDEO = 4096
# A YAML document may name a value once and reuse it by alias; safe_load expands aliases into shared
# references, so a few lines can stand for 10**9 values. Settings files are small: refuse more values.
MAX_YAML_VALUES = 100_000

T = TypeVar("T", bound="DataclassInstance")  # the settings classes are dataclasses


# -- declared rules, one validator, one coercer ----------------------------------------------------


DEVICE_FORMS = "auto, cpu, cuda or cuda:K"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Rule:
    """What one setting may hold; a sequence setting applies it to each of its values."""

    choices: tuple = ()
    min: float | None = None  # value >= min
    gt: float | None = None  # value > gt
    max: float | None = None  # value <= max
    lt: float | None = None  # value < lt
    zero_or_min: float | None = None  # 0 (off, the default) or >= this
    auto: bool = False  # "auto" is also allowed (int | str fields)
    finite: bool = False
    nonempty: bool = False  # sequences: at least one value
    most: int | None = None  # sequences: at most this many values (each one is a fit, a pass, a prompt...)
    device: bool = False  # a device name (auto | cpu | cuda | cuda:K), checked without torch
    key: str | None = None  # name in messages where it is not the field's name
    note: str = ""  # said after the range, e.g. "(0 = no cap)" or "seconds"

    def _range(self) -> str:
        if self.device:
            return f"must be {DEVICE_FORMS}"
        if self.zero_or_min is not None:
            text = f"0 (the default) or >= {self.zero_or_min:g}"
        elif self.min is not None and self.max is not None:
            text = f"{self.min:g}..{self.max:g}"
        else:
            bounds = (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<"))
            text = " and ".join(f"{op} {getattr(self, n):g}" for n, op in bounds if getattr(self, n) is not None)
        if self.auto:
            text = f"auto or an integer {text}"
        elif self.finite:
            text = f"a finite number {text}"
        return f"must be {text}" + (f" {self.note}" if self.note else "")

    def _ok(self, v: Any) -> bool:
        if self.device:
            return isinstance(v, str) and _DEVICE.fullmatch(v) is not None
        if self.choices:
            return v in self.choices
        if self.auto and v == AUTO:
            return True
        if self.finite and not math.isfinite(v):
            return False
        if self.zero_or_min is not None:
            return v == 0 or v >= self.zero_or_min
        return (
            (self.min is None or v >= self.min)
            and (self.gt is None or v > self.gt)
            and (self.max is None or v <= self.max)
            and (self.lt is None or v < self.lt)
        )

    def problem(self, value: Any) -> str | None:
        """Why ``value`` breaks the rule (the text after ``key=value: ``), or None when it does not.
        A float setting is always finite: NaN or Infinity would be written into provenance and fail later."""
        if value is None:
            return None
        if any(
            isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))
        ):
            return "must be a finite number"
        if isinstance(value, tuple):
            if self.nonempty and not value:
                return "need one or more values"
            if self.most is not None and len(value) > self.most:
                return f"need at most {self.most} values (got {len(value)})"
            bad = [v for v in value if not self._ok(v)]
            return None if not bad else allowed_values(self.choices) if self.choices else f"each value {self._range()}"
        if self._ok(value):
            return None
        return allowed_values(self.choices) if self.choices else self._range()


_NO_RULE = Rule()


def rule(**kw: Any) -> dict[str, Rule]:
    """Field metadata declaring a setting's allowed values: ``field(default=1, metadata=rule(min=1))``."""
    return {"rule": Rule(**kw)}


def _shown(value: Any) -> str:
    """A value as messages show it: a tuple as a list, a long one cut short (one line, whatever its length)."""
    if not isinstance(value, tuple):
        return repr(value)
    if len(value) <= 8:
        return repr(list(value))
    return "[" + ", ".join(map(repr, value[:3])) + f", ... ({len(value)} values)]"


def check_device(value: Any, key: str = "device") -> None:
    """A device name as the settings check it (no torch import: CUDA's presence is checked when used)."""
    problem = Rule(device=True).problem(value)
    if problem:
        raise ConfigError(f"{key}={value!r}: {problem}")


def check_settings(obj: Any, prefix: str = "") -> None:
    """Coerce every field of the settings dataclass ``obj`` to its type and check its rule (nested ones too),
    then the class's own cross-field check (``_check(prefix)``, if any); ConfigError names the dotted key."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        r = f.metadata.get("rule", _NO_RULE)
        key = prefix + (r.key or f.name)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_settings(value, key + ".")
            continue
        value = coerce(value, hints[f.name], key)
        setattr(obj, f.name, value)
        problem = r.problem(value)
        if problem:
            raise ConfigError(f"{key}={_shown(value)}: {problem}")
    if hasattr(obj, "_check"):
        obj._check(prefix)


def check_known(data: Mapping[str, Any], known: Iterable[str], *, prefix: str = "", what: str = "setting") -> None:
    """The one unknown-key check: a typo is an error naming the dotted key and the known ones."""
    known = list(known)
    bad = [k for k in data if k not in known]
    if bad:
        names = ", ".join(repr(f"{prefix}{k}") for k in bad)
        listed = ", ".join(sorted(prefix + n for n in known))
        raise ConfigError(f"unknown {what}{'s' if len(bad) > 1 else ''} {names}; known: {listed}")


def _number(value: Any, typ: type, key: str) -> int | float:
    expected = "an integer" if typ is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key}={value!r}: expected {expected}")
    if isinstance(value, int):
        return typ(value)
    try:
        number = float(value)  # YAML reads 1e-3 as text
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected {expected}") from None
    if typ is int:
        if not number.is_integer():
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return int(number)
    return number


def coerce(value: Any, typ: Any, key: str) -> Any:
    """The one coercer: a YAML, JSON or command-line value as the field type ``typ``, naming ``key`` if it cannot."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if set(rest) == {int, str}:  # "auto" or a count
            if isinstance(value, str) and value.strip().lower() == AUTO:
                return AUTO
            return _number(value, int, key)
        return coerce(value, rest[0], key) if len(rest) == 1 else value
    if origin is tuple:  # tuple[X, ...]: a YAML list, or one value
        return tuple(coerce(v, args[0], key) for v in (value if isinstance(value, (list, tuple)) else [value]))
    if isinstance(typ, type) and dataclasses.is_dataclass(typ):
        return value if isinstance(value, typ) else build(typ, value, prefix=key + ".")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ in (int, float):
        return _number(value, typ, key)
    if typ is str:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{key}: expected a single value, got {type(value).__name__}")
        return str(value)
    return value


def build(cls: type[T], data: Any, *, prefix: str = "", what: str = "setting") -> T:
    """A settings dataclass from a mapping: unknown keys, missing required keys, types and rules are checked."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or what}: expected a mapping of settings")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_known(data, fields, prefix=prefix, what=what)
    missing = [
        n
        for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing {what} {prefix + missing[0]!r}")
    hints = typing.get_type_hints(cls)
    obj = cls(**{k: coerce(v, hints[k], prefix + k) for k, v in data.items()})
    check_settings(obj, prefix)
    return obj


# -- extraction settings ------------------------------------------------------------------------------


DEFAULT_FRAME_RATE = 25.0  # frame folders: the PAL rate UCF101/HMDB51 frame dumps are mostly made at


@dataclass
class SamplingConfig:
    """Which frames of a clip are embedded (see ``pipeline.data.sampling``); all of it is store provenance."""

    strategy: str = field(default="uniform", metadata=rule(choices=SAMPLING_STRATEGIES))  # see configs/default.yaml
    # T for uniform, frames per window for multiclip / sliding
    num_frames: int = field(default=8, metadata=rule(min=1, max=MAX_FRAMES_PER_CLIP))
    # rate for fps (at most 1000: no camera in use films faster, and it bounds the times planned per clip)
    fps: float = field(default=1.0, metadata=rule(gt=0, max=1000))
    # cap for fps / every_n / keyframes, spread evenly over the clip (0 = no cap)
    max_frames: int = field(default=0, metadata=rule(min=0, max=MAX_FRAMES_PER_CLIP, note="(0 = no cap)"))
    every_n: int = field(default=1, metadata=rule(min=1))  # N for every_n: every N-th frame in presentation order
    num_clips: int = field(default=1, metadata=rule(min=1, max=MAX_WINDOWS_PER_VIDEO))  # K for multiclip
    # window seconds: multiclip (0 = duration / K) and sliding (required)
    clip_length: float = field(default=0.0, metadata=rule(zero_or_min=0.01, note="seconds"))
    # sliding: seconds between window starts (0 = clip_length, no overlap)
    stride: float = field(default=0.0, metadata=rule(zero_or_min=0.01, note="seconds"))
    # exact | keyframe (snap to the nearest keyframe, decode keyframes only)
    seek_mode: str = field(default="exact", metadata=rule(choices=SEEK_MODES))
    # frames per second of a frame folder (frame i is shown at i / frame_rate s); videos carry their own
    frame_rate: float = field(default=DEFAULT_FRAME_RATE, metadata=rule(gt=0, max=1000))

    def validate(self) -> SamplingConfig:
        check_settings(self, "sampling.")
        return self

    def _check(self, prefix: str) -> None:
        if self.strategy == "sliding" and self.clip_length <= 0:
            raise ConfigError(
                f"{prefix}clip_length must be > 0 seconds for strategy=sliding (e.g. {prefix}clip_length=2)"
            )

    @property
    def windowed(self) -> bool:
        """True when one manifest item expands into several clip windows."""
        return self.strategy in WINDOWED_STRATEGIES


@dataclass
class ExtractConfig:
    """How the extraction engine runs; none of this changes the embeddings, so it is not provenance
    (``auto`` values: ``pipeline.extract.resolve_runtime``)."""

    # frames per encoder call, packed across clips (auto: 16 on CPU, 128 on CUDA)
    batch_size: int | str = field(default=AUTO, metadata=rule(auto=True, min=1))
    # decoder processes (auto: one per core); 0 = decode in a main-process thread
    num_workers: int | str = field(default=AUTO, metadata=rule(auto=True, min=0))
    device: str = field(default="auto", metadata=rule(device=True))  # auto | cpu | cuda | cuda:K
    precision: str = field(default="auto", metadata=rule(choices=PRECISIONS))  # auto: per device
    # clips per shard file; a killed job loses at most one unfinished shard
    shard_size: int = field(default=512, metadata=rule(min=1))
    # FFmpeg threads per decoder process (0 = FFmpeg decides)
    decode_threads: int | str = field(default=AUTO, metadata=rule(auto=True, min=0))
    # intra-op threads of the encoder on CPU (0 = torch decides)
    torch_threads: int | str = field(default=AUTO, metadata=rule(auto=True, min=0))
    # seconds one clip may take to decode before its worker is replaced
    decode_timeout: float = field(default=120.0, metadata=rule(gt=0, note="seconds"))
    # decoded frames buffered ahead of the encoder (0 = 4 batches)
    prefetch_frames: int = field(default=0, metadata=rule(min=0, note="(0 = 4 batches)"))
    # a video at a URL: further tries of a read that failed transiently (timeout, reset, truncated, 5xx)
    remote_retries: int = field(default=3, metadata=rule(min=0, max=10))
    # seconds a connection or read of a URL may wait for the server before it counts as failed
    remote_timeout: float = field(default=30.0, metadata=rule(gt=0, note="seconds"))
    # bytes fetched per ranged request at least: the read-ahead of a URL's decoder
    remote_block_size: int = field(default=1 << 18, metadata=rule(min=4096, max=1 << 30, note="bytes"))

    def validate(self) -> ExtractConfig:
        check_settings(self, "extract.")
        return self


STORE_DTYPES = ("float32", "float16")
STORE_COMPRESSIONS = ("none", "gzip", "lzf")


@dataclass
class StoreConfig:
    """How embeddings are written to shard files. ``dtype`` is part of a store's identity (one store never
    mixes the two); ``compression`` is recorded per shard by HDF5 and may differ between appending runs."""

    # float32 | float16 (half the size; relative rounding error <= 2**-11)
    dtype: str = field(default="float32", metadata=rule(choices=STORE_DTYPES))
    # none | gzip | lzf (lossless; embeddings compress little, see benchmarks/store_read.py)
    compression: str = field(default="none", metadata=rule(choices=STORE_COMPRESSIONS))
    compression_level: int = field(default=4, metadata=rule(min=1, max=9, note="(used by gzip)"))

    def validate(self) -> StoreConfig:
        check_settings(self, "store.")
        return self


@dataclass
class Config:
    """Everything ``vidprobe extract`` needs besides the source and the store path."""

    # one spec, or a list of them: one decode feeds every encoder, each writing its own store
    encoder: str | tuple[str, ...] = "effnet-lite0"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def validate(self) -> Config:
        check_settings(self)
        return self

    def _check(self, prefix: str) -> None:
        many = isinstance(self.encoder, (list, tuple))
        specs: list[Any] = list(self.encoder) if many else [self.encoder]
        if not specs or not all(isinstance(s, str) and s.strip() for s in specs):
            raise ConfigError(
                "encoder: must be a non-empty spec string such as effnet-lite0 or openclip:ViT-B-32@openai, "
                "or a list of them"
            )
        if many:
            self.encoder = tuple(specs)

    @property
    def encoders(self) -> tuple[str, ...]:
        """The encoder specs of this extraction (one, or several sharing one decode)."""
        return self.encoder if isinstance(self.encoder, tuple) else (self.encoder,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DuplicateKey(Exception):
    """A YAML mapping names one key twice (``key``; ``line`` and ``first`` 1-based). PyYAML keeps the last
    value silently, so a setting written twice would quietly lose one of its values."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first})")
        self.key, self.line, self.first = key, line, first


@functools.lru_cache(maxsize=1)
def _strict_loader() -> type:
    """``yaml.SafeLoader`` that refuses a mapping with a duplicate key (merge keys ``<<`` may still be
    overridden, as YAML means them to be). Built on first use: importing config does not import yaml."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise DuplicateKey(key, line, seen[key])
                        seen[key] = line
                    except TypeError:  # an unhashable key: SafeLoader refuses it itself
                        continue
            return super().construct_mapping(node, deep)

    return StrictLoader


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate mapping keys (``DuplicateKey``): every YAML vidprobe reads."""
    import yaml

    return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. sampling.num_frames=16")
    key, raw = text.split("=", 1)
    import yaml

    try:
        value = load_yaml(raw) if raw else ""
    except DuplicateKey as exc:
        raise ConfigError(f"override {key.strip()}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    check_yaml_size(value, f"override {key.strip()}")
    return key.strip().split("."), value


def check_yaml_size(data: Any, where: str, limit: int = MAX_YAML_VALUES) -> None:
    """Refuse a loaded YAML document holding more than ``limit`` values once its aliases are expanded
    (an alias bomb); the walk stops at the limit, so it costs at most ``limit`` steps."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(
                f"{where}: the YAML expands to more than {limit} values (aliases repeating anchors?); "
                "a settings file is small: write the values out"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError naming the file and ``what`` it should be."""
    import yaml

    p = Path(path)
    try:
        data = load_yaml(p.read_text(encoding="utf-8")) or {}
    except DuplicateKey as exc:
        raise ConfigError(f"{p}: {exc}; YAML would keep only the last value: remove one") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {exc.start}); save the {what} as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply to be a {what}") from None
    check_yaml_size(data, str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a {what} must be a mapping of settings")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides; validated."""
    data: dict[str, Any] = read_yaml_mapping(path, "config file") if path is not None else {}
    for text in overrides:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return build(Config, data)
