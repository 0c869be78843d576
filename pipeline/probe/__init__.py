"""Stage 5, heads over cached features: poolings, logreg/MLP/kNN/zero-shot heads, training, metrics,
prediction on new videos, benchmark grids and their tables and plots."""
