"""Optional distributed engines. Each module here imports its framework (Ray, ...) itself and is
imported only when chosen (``vidprobe extract --engine ray``), so the core never depends on one."""
