"""The README's main job, end to end (~14 minutes on 2 CPU cores): run with ``pytest -m slow``."""

import json

import pytest

from seqjax.app.cli import main


@pytest.mark.slow
def test_default_training_reaches_bleu_20(tmp_path):
    run = tmp_path / "default"
    assert main(["train", "--out", str(run)]) == 0
    results = json.loads((run / "test_results.json").read_text())
    assert results["sentences"] == 1028
    assert results["bleu"] >= 20.0, results
    steps = [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 1500  # a fixed number of updates
