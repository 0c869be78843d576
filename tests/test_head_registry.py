"""The head registry: heads saved before it still load and predict the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.probe.heads.files import load_head
from pipeline.probe.sequences import FrameSequences

OLD = Path(__file__).parent / "fixtures" / "old_heads"


def test_old_heads_still_predict():
    expected = np.load(OLD / "expected.npz")
    logreg = load_head(OLD / "logreg.npz")
    assert logreg.classes == ["c0", "c1", "c2"]
    assert np.allclose(logreg.predict_proba(expected["logreg_X"]), expected["logreg_proba"], rtol=1e-6, atol=1e-9)
    attn = load_head(OLD / "attn.npz")
    seqs = FrameSequences(*(expected[f"attn_{k}"] for k in ("x", "t", "mask", "times")))
    assert attn.classes == ["k0", "k1"] and attn.meta["model"]["kind"] == "attn"
    assert np.allclose(attn.predict_proba(seqs), expected["attn_proba"], rtol=1e-5, atol=1e-7)
