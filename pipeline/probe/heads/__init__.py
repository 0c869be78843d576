"""Heads: classifiers on pooled clip features (or on a clip's frames), saved without pickle beside a JSON sidecar.

One module per kind (``logreg``, ``mlp``, ``knn``, ``zeroshot``, ``attn``, ``gru``) declares its settings as
data, its fit, its numpy predictor and its file form, and registers itself (``registry``). Shared:
``settings`` (``HeadConfig``), ``fitting`` (``fit_head``, ``FitResult``), ``native`` (the ``.npz`` forms)
and ``files`` (``save_head``, ``load_head``). Nothing is imported here, so the registry's list of names
costs no numpy.
"""
