"""Stage 3, frames to embeddings: decoding (PyAV), decoder worker processes, the extraction job shared
by the local and the Ray engine, and job sharding. Modules are imported on demand (``pipeline.extract.entry``
for ``extract()``), so a decoder process starts with only what it needs."""
