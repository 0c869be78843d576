"""Stage 4, the HDF5 feature store: layout, crash-safe shard writing, locks, streaming reads, the clip-index
and pooled-feature caches (``cache``), verify/compact, Parquet/npy export (``export``).

Nothing here imports torch (``torch_dataset`` does, on demand). The read API::

    from pipeline.store import open_store
"""

from __future__ import annotations

from .layout import PROVENANCE_FILE, clip_key
from .reader import Batch, FeatureStore, check_appendable, create_or_open, open_store
from .runs import write_run_record, writer_prefix, writer_progress
from .writer import ShardWriter

__all__ = [
    "PROVENANCE_FILE",
    "Batch",
    "FeatureStore",
    "ShardWriter",
    "clip_key",
    "check_appendable",
    "create_or_open",
    "open_store",
    "write_run_record",
    "writer_prefix",
    "writer_progress",
]
