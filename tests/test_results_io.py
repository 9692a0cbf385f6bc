"""experiments/results_io.py: every benchmark result records the machine it ran on."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from results_io import ISA_CAP_VARS, ISA_FLAGS, cap_isa, machine_info, write_results  # noqa: E402


def test_results_record_the_machine(tmp_path, capsys):
    write_results(tmp_path / "bench", {"what": "x"}, [{"tok_s": 1.0}], "| a |\n|---|\n| 1 |\n")
    data = json.loads((tmp_path / "bench.json").read_text())
    machine = data["machine"]
    for key in ("cpu", "cores", "isa", "jax", "jaxlib", "xla_flags", "load_before", "load_after"):
        assert key in machine, key
    assert set(machine["isa"]) <= set(ISA_FLAGS) and machine["cores"] >= 1
    assert data["meta"] == {"what": "x"} and data["results"] == [{"tok_s": 1.0}]
    md = (tmp_path / "bench.md").read_text()
    assert md.startswith("_Machine: ") and machine["cpu"] in md and md.endswith("| 1 |\n")
    assert "| 1 |" in capsys.readouterr().out


def test_isa_flags_come_from_cpuinfo():
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    expected = [f for f in ISA_FLAGS if f in flags]
    assert machine_info()["isa"] == expected


def test_isa_cap_reaches_every_library_and_the_record(tmp_path, monkeypatch):
    for var in (*ISA_CAP_VARS, "XLA_FLAGS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    set_vars = cap_isa("avx2")
    assert set_vars["CT2_FORCE_CPU_ISA"] == "AVX2" and set_vars["ATEN_CPU_CAPABILITY"] == "avx2"
    # Appended, not replacing the user's own flags.
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_enable_fast_math=false",
        "--xla_cpu_max_isa=AVX2",
    ]
    write_results(tmp_path / "b", {}, [], "")
    machine = json.loads((tmp_path / "b.json").read_text())["machine"]
    assert machine["isa_caps"] == set_vars
    md = (tmp_path / "b.md").read_text()
    assert "--xla_cpu_max_isa=AVX2" in md and "MKL_ENABLE_INSTRUCTIONS=AVX2" in md
