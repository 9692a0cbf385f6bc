"""The README's main job, end to end (15 minutes on 2 CPU cores): run with ``pytest -m slow``."""

import json

import pytest

from seqjax.app.cli import main


@pytest.mark.slow
def test_default_training_reaches_bleu_8(tmp_path):
    run = tmp_path / "default"
    assert main(["train", "--out", str(run)]) == 0
    results = json.loads((run / "test_results.json").read_text())
    assert results["sentences"] == 1028
    assert results["bleu"] >= 8.0, results
