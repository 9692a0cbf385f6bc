"""experiments/bench_vs_peers.py: each system decodes in a worker process of its own."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_vs_peers as bvp  # noqa: E402
from peer_worker import Local  # noqa: E402


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Marian of the benchmark's vocabulary layout, small enough to load fast."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MarianConfig(
        vocab_size=bvp.VOCAB,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=bvp.PAD,
        decoder_start_token_id=bvp.PAD,
        eos_token_id=bvp.EOS,
        forced_eos_token_id=None,
    )
    out = tmp_path_factory.mktemp("marian")
    transformers.MarianMTModel(cfg).eval().save_pretrained(out)
    return out


def test_a_worker_decodes_what_the_runner_decodes_in_this_process(tiny_marian: Path) -> None:
    src = bvp.sources(np.random.default_rng(0), 2, 8)
    here = bvp.Runner(Local(bvp.SeqjaxRunner(tiny_marian, 5)))
    worker = bvp.in_worker("SeqjaxRunner", tiny_marian, 5)
    try:
        assert worker.name == here.name == "seqjax"
        for method in ("greedy", "beam"):
            expect = here(src, method, 2)
            got = worker(src, method, 2)
            np.testing.assert_array_equal(got, expect)
            assert got.shape == (2, 5)
            assert worker.last_s > 0 and here.last_s > 0  # timed where the work ran
        assert worker.traces == here.traces == 2  # one compile per decoder, as in-process
    finally:
        worker.close()
    assert not worker.handle.alive


def test_a_worker_that_cannot_start_names_the_runner_and_the_cause(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"SeqjaxRunner worker failed to start: \w+"):
        bvp.in_worker("SeqjaxRunner", tmp_path / "no_such_model", 5)
    with pytest.raises(RuntimeError, match="unknown runner os.system"):
        bvp.in_worker("os.system", "true")


def test_bf16_runners_decode_under_their_own_names(tiny_marian: Path) -> None:
    """``--bf16``'s two extra systems: seqjax with ``--quantize bf16`` and HF with the model
    in bfloat16 decode exactly N tokens under the names the bf16 table reads."""
    src = bvp.sources(np.random.default_rng(0), 2, 8)
    runners = [
        bvp.Runner(Local(bvp.SeqjaxRunner(tiny_marian, 5, "bf16"))),
        bvp.Runner(Local(bvp.HFRunner(tiny_marian, 5, 1, "cpu", "bfloat16"))),
    ]
    assert [r.name for r in runners] == ["seqjax_bf16", "hf_pytorch_bfloat16"]
    for r in runners:
        for method in ("greedy", "beam"):
            assert r(src, method, 2).shape == (2, 5)


def test_bf16_table_divides_the_same_rounds_medians() -> None:
    tps = {
        "seqjax": 100.0,
        "hf_pytorch": 50.0,
        "ctranslate2": 80.0,
        "seqjax_bf16": 150.0,
        "hf_pytorch_bfloat16": 60.0,
    }
    row = {"method": "greedy", "batch": 16, "tokens_per_s": tps, "ratio_vs_hf": 2.0}
    row |= {"ratio_vs_ct2": 1.25, "seqjax_first_call_s": 3.0, "seqjax_compile_s": 2.0}
    meta = {"src_len": 32, "new_tokens": 64, "repeats": 3, "threads": 2, "platform": "x"}
    meta |= {"versions": {}, "uptime_before": "", "uptime_after": "", "greedy_agreement": {}}
    md = bvp.markdown([row], meta)
    # seqjax bf16 / HF bf16, / HF fp32, / CT2 fp32, / seqjax fp32; HF bf16 / HF fp32
    assert "| greedy | 16 | 150 | 60 | 2.50x | 3.00x | 1.88x | 1.50x | 1.20x |" in md
