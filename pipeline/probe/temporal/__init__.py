"""Temporal heads over a clip's frame sequence (``attn``, ``gru``): ``arch`` (shared settings, architecture
record, constants), ``inputs`` (per-frame features shared by training and prediction), ``models`` (the torch
reference modules, which also give the sweep its initial weights), ``batched`` (the sweep's forward for many
candidates at once), ``train`` (the recipe and the sweep) and ``predictor`` (the numpy forward)."""
