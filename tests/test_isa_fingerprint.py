"""experiments/isa_fingerprint.py: bit-level fingerprints of a run, and its arguments."""

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import isa_fingerprint  # noqa: E402

from seqjax.checkpoint import Checkpointer  # noqa: E402


def _run(path: Path, w: np.ndarray) -> Path:
    """A run directory as `seqjax train` leaves it: a checkpoint, metrics, a tokenizer."""
    path.mkdir()
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "spm.model").write_bytes(b"model")
    (path / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "valid_nll": 1.5})
        + "\n"
        + json.dumps({"step": 10, "valid_nll": 1.25, "final": True})
        + "\n"
    )
    ckpt = Checkpointer(path, async_save=False)
    params = {"enc": {"w": jnp.asarray(w)}, "b": jnp.zeros(3)}
    ckpt.save(10, params, {"mu": jnp.zeros(3)}, {"step": 10})
    ckpt.close()
    return path


def test_fingerprint_tells_one_ulp_apart(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    a, flat_a = isa_fingerprint.fingerprint(_run(tmp_path / "a", w))
    b, _ = isa_fingerprint.fingerprint(_run(tmp_path / "b", w.copy()))
    w2 = w.copy()
    w2[1, 2] = np.nextafter(w2[1, 2], np.float32(10))  # one unit in the last place
    c, flat_c = isa_fingerprint.fingerprint(_run(tmp_path / "c", w2))
    assert a == b  # equal bits, equal fingerprints
    assert c["params_sha"] != a["params_sha"] and c["tokenizer_sha"] == a["tokenizer_sha"]
    assert a["valid_nll"] == (1.25).hex()  # the final evaluation's, to the last bit
    assert 0 < np.max(np.abs(flat_c["['enc']['w']"] - flat_a["['enc']['w']"])) < 1e-6


def test_conditions_and_bad_arguments(capsys):
    for name, condition in isa_fingerprint.CONDITIONS.items():
        assert all(f.startswith("--xla_cpu_") for f in condition["flags"]), name
    with pytest.raises(SystemExit):
        isa_fingerprint.main(["--conditions", "native,avx9"])
    assert "--conditions: unknown ['avx9']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        isa_fingerprint.main(["--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_markdown_marks_matches_with_another_machine():
    row = {
        "condition": "native",
        "flags": [],
        "env": {},
        "cores": 2,
        "tokenizer_sha": "t",
        "params_sha": "p",
        "valid_nll": "0x1p+0",
        "max_abs_dparam": 0.0,
        "seconds": 1.0,
        "matches_other": "yes",
    }
    md = isa_fingerprint.markdown([row], 10, "other.json")
    assert "| native | `(none)` | - | 2 | t | p | 0x1p+0 | 0 | 1 | yes |" in md
    assert "`other.json`" in md
