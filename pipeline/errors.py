"""One exception hierarchy, so the CLI can turn any failure into a one-line message and an exit code."""

from __future__ import annotations


class VidprobeError(Exception):
    """Base of every error vidprobe raises on purpose. Messages name the file/key and what to do."""

    exit_code = 1


class ConfigError(VidprobeError):
    """A setting, spec or command-line value is wrong."""

    exit_code = 2


class ManifestError(VidprobeError):
    """A manifest (folder, CSV, JSONL, split file) cannot be read or names an unsafe path."""

    exit_code = 2


class DecodeError(VidprobeError):
    """A video cannot be opened or the frames asked for cannot be decoded."""


class EncoderError(VidprobeError):
    """An encoder cannot be built or its weights cannot be loaded."""


class StoreError(VidprobeError):
    """A feature store is missing, damaged, or does not match the job that opens it."""


class StoreBusyError(StoreError):
    """Another live job holds the store's writer lock; retrying later can succeed (EX_TEMPFAIL)."""

    exit_code = 75


class OutputError(VidprobeError):
    """An output (a head, a plot, an export, a results folder) cannot be written where it was asked to go."""


class HeadError(VidprobeError):
    """A trained head cannot be fitted, saved or loaded."""


def allowed_values(choices: tuple) -> str:
    """The one wording of a choice error's tail: ``allowed values are a, b``."""
    return f"allowed values are {', '.join(map(str, choices))}"


def check_choice(value: object, choices: tuple | list, key: str, error: type[VidprobeError] = ConfigError) -> None:
    """The one hand-called choice check (values outside a settings dataclass): ``key=value: allowed values are ...``."""
    if value not in choices:
        raise error(f"{key}={value!r}: {allowed_values(tuple(choices))}")
