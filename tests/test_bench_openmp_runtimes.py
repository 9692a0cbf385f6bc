"""experiments/bench_openmp_runtimes.py: which OpenMP runtime a library's calls bind to."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_openmp_runtimes as bor  # noqa: E402


def test_torch_binds_its_own_bundled_libgomp() -> None:
    pytest.importorskip("torch")
    code = "import torch; torch.ones(512, 512).sum()"
    assert bor.binding_of("GOMP_parallel", "libtorch_cpu", code) == "torch/lib/libgomp.so.1"
    # a caller that is not loaded, or a symbol nobody calls, binds nowhere
    assert bor.binding_of("GOMP_parallel", "libnot_loaded", code) is None
    assert bor.binding_of("no_such_symbol_xyz", "libtorch_cpu", code) is None


def test_ctranslate2_binds_torchs_libgomp_only_when_torch_is_imported_first() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("ctranslate2")
    # CT2's import already calls omp_set_num_threads (lazy binding resolves at first call)
    first = {
        "torch-first": "import torch, ctranslate2",
        "ctranslate2-first": "import ctranslate2, torch",
    }
    got = {o: bor.binding_of("omp_set_num_threads", "libctranslate2", c) for o, c in first.items()}
    if got["ctranslate2-first"] is None:
        pytest.fail(f"no binding of omp_set_num_threads from libctranslate2 seen: {got}")
    assert got["torch-first"] == "torch/lib/libgomp.so.1"
    assert got["ctranslate2-first"].startswith("ctranslate2.libs/libgomp")


def test_summary_takes_medians_per_order_and_batch() -> None:
    def run(order: str, alone: float, after: float) -> dict:
        phase = {"tok_s": alone, "cpu_per_wall": 2.0}
        return {"order": order, "batch": 1, "alone": phase, "after XLA": phase,
                "after torch": {"tok_s": after, "cpu_per_wall": 1.2},
                "torch_gemm_ms": 1.0, "threads": 9}  # fmt: skip

    runs = [run("torch-first", a, b) for a, b in ((200, 90), (210, 100), (190, 500))]
    runs += [run("ctranslate2-first", 200, 195)]
    rows = bor.summarise(runs)
    assert [(r["order"], r["rounds"]) for r in rows] == [("torch-first", 3),
                                                         ("ctranslate2-first", 1)]  # fmt: skip
    assert rows[0]["alone"] == 200 and rows[0]["after torch"] == 100
    meta = {"repeats": 3, "calls": 5, "load_before": "-", "load_after": "-",
            "binding": {"torch-first": "a", "ctranslate2-first": "b"}}  # fmt: skip
    md = bor.markdown(rows, meta)
    assert "| torch-first | 1 | 200 (2.00) | 200 (2.00) | 100 (1.20) | 0.50x | 1.00 |" in md
