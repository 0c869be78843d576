"""Stage 1, what to extract: manifests (folder, CSV/JSONL, official splits), clip keys, path safety,
train/val/test splits and pure sampling (which timestamps). Imports nothing from later stages."""
