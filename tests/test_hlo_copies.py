"""experiments/hlo_copies.py: the copies and transposes of a compiled step, read from its HLO."""

import doctest
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import hlo_copies  # noqa: E402

HLO = """HloModule m

%fused_computation (p0: f32[64,64]) -> f32[64,64] {
  %p0 = f32[64,64]{1,0} parameter(0)
  ROOT %copy.9 = f32[64,64]{0,1} copy(%p0)
}

ENTRY %main (p: f32[4,8], q: bf16[300,300]) -> f32[8,4] {
  %p = f32[4,8]{1,0} parameter(0)
  %q = bf16[300,300]{1,0} parameter(1)
  %copy.3 = f32[8,4]{1,0} copy(%p)
  %copy_bitcast_fusion.7 = bf16[300,300]{0,1} fusion(%q), kind=kLoop, calls=%fused_computation
  %copy_bitcast_fusion.8 = bf16[300,300]{0,1} fusion(%q), kind=kLoop, calls=%fused_computation
  %transpose.2 = f32[8,4]{0,1} transpose(%p), dimensions={1,0}
  %tuple.1 = (f32[8,4], f32[8,4]) tuple(%copy.3, %transpose.2)
  ROOT %add.1 = f32[8,4]{1,0} add(%copy.3, %transpose.2)
}
"""


def test_entry_copies_and_transposes_with_their_bytes():
    moves = hlo_copies.layout_moves(HLO)
    assert [(m["kind"], m["shape"], m["bytes"]) for m in moves] == [
        ("copy", (8, 4), 128),
        ("copy_bitcast_fusion", (300, 300), 180_000),  # bf16: 2 bytes an element
        ("copy_bitcast_fusion", (300, 300), 180_000),
        ("transpose", (8, 4), 128),
    ]  # the copy inside %fused_computation is the fusion's body, not a second copy


def test_grouped_by_shape_largest_first_above_the_threshold():
    rows = hlo_copies.grouped(hlo_copies.layout_moves(HLO), min_elements=32)
    assert [(r["kind"], r["count"], r["bytes"]) for r in rows] == [
        ("copy_bitcast_fusion", 2, 360_000),
        ("copy", 1, 128),
        ("transpose", 1, 128),
    ]
    assert [r["kind"] for r in hlo_copies.grouped(hlo_copies.layout_moves(HLO), 33)] == [
        "copy_bitcast_fusion"
    ]


def test_no_entry_computation_is_an_error():
    with pytest.raises(ValueError, match="no ENTRY"):
        hlo_copies.layout_moves("HloModule m\n")


def test_the_docstring_example_runs():
    assert doctest.testmod(hlo_copies).failed == 0


def test_every_copy_of_a_real_compiled_step_is_found():
    """On XLA's own output (tiny preset): the parser sees every ``copy(`` of the entry
    computation, so a jax upgrade that changes the text format fails here."""
    hlo = hlo_copies.compiled_train_step_hlo("tiny", batch=2, src_len=6, tgt_len=5)
    entry = hlo_copies.entry_computation(hlo)
    plain = [m for m in hlo_copies.layout_moves(hlo) if m["kind"] == "copy"]
    assert len(plain) == entry.count(" copy(") - entry.count(") copy(")  # tuple-shaped ones
    assert plain, "a train step with no copy at all: the format may have changed"


def test_bad_sizes_are_refused(capsys):
    with pytest.raises(SystemExit):
        hlo_copies.main(["--batch", "0", "--out", "/nonexistent/x"])
    assert "--batch must be at least 1, got 0" in capsys.readouterr().err
