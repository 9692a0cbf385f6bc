"""seqjax vs HuggingFace PyTorch ``generate()`` vs CTranslate2 on the same Marian weights.

One random transformer-base Marian model (6+6 layers, d512, 8 heads, ffn 2048, vocab
8000, swish, sinusoidal positions, scaled embeddings: the opus-mt architecture) is
built with transformers and saved; seqjax loads it with ``seqjax.interop.hf.load_hf``,
HF runs it in PyTorch, CTranslate2 runs its own conversion of the same directory
(``ctranslate2.converters.TransformersConverter``, float32). Every system decodes the
same sources (32 tokens, the last one ``</s>``) to exactly ``--new-tokens`` tokens:

- seqjax: ``min_len = max_len = N``; HF: ``min_new_tokens = max_new_tokens = N`` (and
  ``bad_words_ids=[[pad]]``, which seqjax and CT2 imply); CT2:
  ``min_decoding_length = max_decoding_length = N``.

Cells are batch 1/16/64 x greedy/beam 4. Within a cell the systems run interleaved
(seqjax, HF, CT2, seqjax, ...) for ``--repeats`` rounds after one warm-up call each,
so machine load hits all of them alike. Each system runs in **its own worker process**
(spawned; the call's time is taken inside the worker): in one process CTranslate2 ran at
half its speed on a 2-core Zen 3 EPYC (session 28: 103 vs 215 tokens/s at greedy batch 1
in the same interleaved rounds), its OpenMP bound to torch's runtime (session 29,
``bench_openmp_runtimes.py``), so every result before session 28 was taken with CT2
handicapped; ``--same-process`` keeps that old arrangement for
comparison. The table gives median tokens/s (batch x N output tokens; beams not
counted) and the ratios seqjax/peer computed within the run.
seqjax's first call (trace + compile + one run) is reported separately. Threads: torch
``set_num_threads`` and CT2 ``intra_threads`` = the CPU count (XLA uses every core).

Needs the optional peers (``pip install torch==2.13.0 && pip install -e '.[peers]'``);
not part of the test suite. Example (about 15 minutes on 2 cores)::

    python experiments/bench_vs_peers.py --repeats 5
    python experiments/bench_vs_peers.py --batches 1 --repeats 2 --out /tmp/smoke  # quick

``--isa AVX2`` caps every system at AVX2 (``results_io.cap_isa``) to emulate an AVX2-only
CPU on an AVX-512 one; with ``CT2_USE_MKL=0`` CT2 also takes oneDNN, its GEMM library on
non-Intel CPUs. The results record the caps and one GEMM's speed in JAX and torch::

    CT2_USE_MKL=0 python experiments/bench_vs_peers.py --isa AVX2 --repeats 3 --int8

``--bf16`` adds seqjax with ``--quantize bf16`` and HF PyTorch with its model in bfloat16
(CTranslate2 offers no bfloat16 on CPU), each in its own worker, in the same rounds::

    python experiments/bench_vs_peers.py --repeats 3 --bf16 --out /tmp/bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from peer_worker import Local, Worker
from results_io import cap_isa, write_results

from seqjax.decoding import beam_search, greedy
from seqjax.decoding.compile_options import decode_compiler_options, one_row_output_major
from seqjax.interop.hf import load_hf
from seqjax.models.quantize import QUANT_MODES, output_major, quantize_params

VOCAB, PAD, EOS, UNK = 8000, 7999, 0, 1  # opus-mt layout: </s> 0, <unk> 1, <pad> last


def build_marian(out: Path, seed: int) -> None:
    """Save a random transformer-base Marian model + a word-level tokenizer (for CT2)."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = MarianConfig(
        vocab_size=VOCAB,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        max_position_embeddings=512,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=PAD,
        decoder_start_token_id=PAD,
        eos_token_id=EOS,
        forced_eos_token_id=None,
        dropout=0.0,
    )
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():  # CT2 starts the decoder from a zero vector: make <pad> zero too
        model.model.shared.weight[PAD].zero_()
    model.save_pretrained(out)
    vocab = {"</s>": EOS, "<unk>": UNK, **{f"w{i}": i for i in range(2, PAD)}, "<pad>": PAD}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(out)


def model_dirs(workdir: str | None, seed: int = 0) -> tuple[Path, Path]:
    """``(hf_dir, ct2_dir)`` under ``workdir`` (a new temp dir when None), built when missing.

    Kept between runs with ``--workdir``; the peers' scripts share the one model.
    """
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_vs_peers_"))
    hf_dir, ct2_dir = work / "marian_hf", work / "marian_ct2"
    if not (hf_dir / "model.safetensors").is_file():
        build_marian(hf_dir, seed)
    if not (ct2_dir / "model.bin").is_file():
        convert_ct2(hf_dir, ct2_dir)
    return hf_dir, ct2_dir


def convert_ct2(hf_dir: Path, out: Path) -> None:
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir)).convert(str(out), quantization="float32", force=True)


class SeqjaxRunner:
    name = "seqjax"

    def __init__(self, hf_dir: Path, new_tokens: int, quantize: str | None = None) -> None:
        self.model, self.params, _ = load_hf(hf_dir)
        if quantize is not None:  # int8 or bf16 weights (models/quantize.py)
            self.params = quantize_params(self.params, quantize)
            # the results' key: seqjax_bf16, or seqjax_int8 for either int8 mode
            self.name = "seqjax_bf16" if quantize == "bf16" else "seqjax_int8"
        self.n = new_tokens
        self.fns: dict[tuple[str, int], Any] = {}
        self.traces = 0
        self._one_row: Any = None  # output-major copy for one-row decoders (on AVX2)

    def _params(self, rows: int) -> Any:
        """The params a ``rows``-row decoder reads, as ``Translator.decode_params`` chooses."""
        if not one_row_output_major(rows, self.params):
            return self.params
        if self._one_row is None:
            self._one_row = output_major(self.params)
        return self._one_row

    def _fn(self, method: str, beam: int, batch: int):
        key = (method, beam, batch)
        if key not in self.fns:
            model, n, c = self.model, self.n, self.model.config

            def run(params, src_BxS):
                self.traces += 1  # once per trace
                mask = src_BxS != c.pad_id
                cache = model.init_cache(params, model.encode(params, src_BxS, mask), mask, n)
                ids = dict(bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)
                common = dict(max_len=n, min_len=n, **ids)
                step = model.step_fn(params)
                if method == "greedy":
                    return greedy(step, cache, **common).tokens[:, 0]
                r = beam_search(
                    step, cache, beam_size=beam, alpha=1.0, length_penalty="hf", **common
                )
                return r.tokens[:, 0]

            # the library's per-size XLA:CPU matmul kernels, as ``Translator`` compiles
            rows = batch * (1 if method == "greedy" else beam)
            options = decode_compiler_options(rows, self._params(rows))
            self.fns[key] = jax.jit(run, compiler_options=options or None)
        return self.fns[key]

    def __call__(self, src_BxS: np.ndarray, method: str, beam: int) -> np.ndarray:
        fn = self._fn(method, beam, src_BxS.shape[0])
        rows = src_BxS.shape[0] * (1 if method == "greedy" else beam)
        return np.asarray(fn(self._params(rows), jnp.asarray(src_BxS, jnp.int32)))


WORKER_CLASSES = ("SeqjaxRunner", "HFRunner", "CT2Runner")  # what a worker may build


class Runner:
    """A runner behind a ``peer_worker.Worker`` (a process of its own, the default) or a
    ``peer_worker.Local`` (this process, ``--same-process``): the runners' call, with
    ``last_s`` timed where the call ran. Why a process each: in one process the peers lost
    up to half their speed (``bench_process_isolation.py``), CTranslate2's OpenMP calls
    bound to torch's runtime (``bench_openmp_runtimes.py``)."""

    def __init__(self, handle: Worker | Local) -> None:
        self.handle, self.name = handle, handle.name

    def __call__(self, src_BxS: np.ndarray, method: str, beam: int) -> np.ndarray:
        return self.handle.call("__call__", src_BxS, method, beam)

    @property
    def last_s(self) -> float:
        return self.handle.last_s

    @property
    def traces(self) -> int:
        return self.handle.attr("traces") or 0

    def close(self) -> None:
        self.handle.close()


def in_worker(cls_name: str, *args: Any) -> Runner:
    """``cls_name(*args)`` (one of ``WORKER_CLASSES``) in a worker process of its own."""
    return Runner(Worker("bench_vs_peers", cls_name, *args))


def gemm_probe(threads: int, m: int = 64, k: int = 512, n: int = 2048) -> dict[str, Any]:
    """GFLOP/s of one decode-shaped float32 GEMM in JAX and in torch (best of 5), and the
    kernel level torch picked: shows whether an ``--isa`` cap reached each library."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.random((m, k), dtype=np.float32)
    b = rng.random((k, n), dtype=np.float32)
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    mm = jax.jit(jnp.matmul)

    def best(f: Any, reps: int = 20) -> float:
        f()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times.append((time.perf_counter() - t0) / reps)
        return round(2 * m * k * n / min(times) / 1e9, 1)

    return {
        "jax": best(lambda: mm(aj, bj).block_until_ready()),
        "torch": best(lambda: at @ bt),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


class HFRunner:
    name = "hf_pytorch"

    def __init__(
        self,
        hf_dir: Path,
        new_tokens: int,
        threads: int,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        import torch
        from transformers import MarianMTModel

        torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        model = MarianMTModel.from_pretrained(hf_dir).eval()
        if dtype != "float32":  # the whole model in that dtype (oneDNN's bf16 GEMMs on CPU)
            model, self.name = model.to(getattr(torch, dtype)), f"hf_pytorch_{dtype}"
        self.model = model.to(device)
        self.n = new_tokens

    def __call__(self, src_BxS: np.ndarray, method: str, beam: int) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor(src_BxS, device=self.device),
                attention_mask=torch.ones(src_BxS.shape, dtype=torch.long, device=self.device),
                do_sample=False,
                num_beams=1 if method == "greedy" else beam,
                min_new_tokens=self.n,
                max_new_tokens=self.n,
                bad_words_ids=[[PAD]],
                length_penalty=1.0,
            )
        return out[:, 1:].cpu().numpy()  # the copy back also waits for the GPU


class CT2Runner:
    name = "ctranslate2"

    def __init__(
        self,
        ct2_dir: Path,
        new_tokens: int,
        threads: int,
        device: str = "cpu",
        compute_type: str = "float32",
    ) -> None:
        import ctranslate2

        if compute_type != "float32":
            self.name = f"ctranslate2_{compute_type}"
        self.tr = ctranslate2.Translator(
            str(ct2_dir), device=device, compute_type=compute_type, intra_threads=threads
        )
        self.n = new_tokens

    def __call__(self, src_BxS: np.ndarray, method: str, beam: int) -> np.ndarray:
        tokens = [[("</s>" if i == EOS else f"w{i}") for i in row] for row in src_BxS.tolist()]
        res = self.tr.translate_batch(
            tokens,
            beam_size=1 if method == "greedy" else beam,
            num_hypotheses=1,
            min_decoding_length=self.n,
            max_decoding_length=self.n,
            max_batch_size=0,
        )
        ids = [[EOS if t == "</s>" else int(t[1:]) for t in r.hypotheses[0]] for r in res]
        return np.array(ids)


def ct2_runs_on_gpu(ct2_dir: Path) -> bool:
    """Whether CT2 can translate on CUDA here: its wheel may see the GPU (its CUDA runtime is
    linked in) yet lack the cuBLAS/cuDNN of its CUDA major version, which only shows at the
    first translation. Tried in a child process, so a failed library load cannot take this
    run down with it."""
    probe = (
        "import ctranslate2, sys\n"
        "if ctranslate2.get_cuda_device_count() < 1: sys.exit(3)\n"
        f"tr = ctranslate2.Translator({str(ct2_dir)!r}, device='cuda')\n"
        "tr.translate_batch([['w5', '</s>']], max_decoding_length=2)\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return False
    if proc.returncode != 0:
        print("CTranslate2 on CUDA:", (proc.stderr.strip().splitlines() or ["no GPU"])[-1])
    return proc.returncode == 0


def _tps(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def sources(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    src = rng.integers(2, PAD, (batch, length))
    src[:, -1] = EOS
    return src


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def versions() -> dict[str, str]:
    import ctranslate2
    import torch
    import transformers

    return {
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ctranslate2": ctranslate2.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# seqjax vs HF PyTorch vs CTranslate2: random transformer-base Marian, "
        f"peers on {meta.get('peer_device', 'cpu')}",
        "",
        f"{meta['platform']}; source {meta['src_len']} tokens, exactly {meta['new_tokens']} "
        f"output tokens; median of {meta['repeats']} interleaved rounds; tokens/s = batch x "
        f"output tokens. Threads: {meta['threads']}. Processes: "
        f"{meta.get('processes', 'one')}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".",
        "",
        f"Load before: `{meta['uptime_before']}`; after: `{meta['uptime_after']}`. "
        f"ISA cap: {meta.get('isa_cap') or 'none'}; GEMM 64x512x2048 GFLOP/s: "
        f"{meta.get('gemm_probe')}.",
        "",
        "| method | batch | seqjax tok/s | HF PyTorch tok/s | CT2 fp32 tok/s | seqjax/HF | "
        "seqjax/CT2 | seqjax first call s | seqjax compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["tokens_per_s"]
        lines.append(
            f"| {r['method']} | {r['batch']} | {t['seqjax']:.0f} | {t['hf_pytorch']:.0f} | "
            f"{_tps(t.get('ctranslate2'))} | {r['ratio_vs_hf']:.2f}x | "
            f"{_ratio(r['ratio_vs_ct2'])} | "
            f"{r['seqjax_first_call_s']:.1f} | {r['seqjax_compile_s']:.1f} |"
        )
    if any("seqjax_int8" in r["tokens_per_s"] for r in rows):
        how = {
            "w8a8": "`--quantize w8a8`: int8 weights with per-output-channel scales and "
            "per-row dynamically quantised activations, int8 x int8 -> int32 dots",
            "int8": "`--quantize int8`: weight-only int8, per-output-channel scales, "
            "dequantised inside the matmul",
        }[meta.get("seqjax_int8_mode", "int8")]
        lines += [
            "",
            f"int8 (seqjax: {how}; CT2: `compute_type=int8`, its int8 GEMMs on quantised "
            "activations), same interleaved rounds:",
            "",
            "| method | batch | seqjax int8 tok/s | CT2 int8 tok/s | seqjax int8/CT2 int8 | "
            "seqjax int8/seqjax fp32 | CT2 int8/CT2 fp32 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            t = r["tokens_per_s"]
            si, ci = t["seqjax_int8"], t.get("ctranslate2_int8")
            cf = t.get("ctranslate2")
            lines.append(
                f"| {r['method']} | {r['batch']} | {si:.0f} | "
                f"{'n/a' if ci is None else f'{ci:.0f}'} | {_ratio(ci and si / ci)} | "
                f"{si / t['seqjax']:.2f}x | {_ratio(ci and cf and ci / cf)} |"
            )
    if any("seqjax_bf16" in r["tokens_per_s"] for r in rows):
        lines += [
            "",
            "bfloat16 (seqjax: `--quantize bf16`: bfloat16 weights, matmul inputs rounded to "
            "bfloat16, float32 sums, everything else float32; HF: the whole model "
            "`.to(torch.bfloat16)`; CT2 has no bfloat16 on this CPU), same interleaved "
            "rounds:",
            "",
            "| method | batch | seqjax bf16 tok/s | HF bf16 tok/s | seqjax bf16/HF bf16 | "
            "seqjax bf16/HF fp32 | seqjax bf16/CT2 fp32 | seqjax bf16/seqjax fp32 | "
            "HF bf16/HF fp32 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            t = r["tokens_per_s"]
            sb, hb, ct = t["seqjax_bf16"], t.get("hf_pytorch_bfloat16"), t.get("ctranslate2")
            lines.append(
                f"| {r['method']} | {r['batch']} | {sb:.0f} | {_tps(hb)} | "
                f"{_ratio(hb and sb / hb)} | {sb / t['hf_pytorch']:.2f}x | "
                f"{_ratio(ct and sb / ct)} | {sb / t['seqjax']:.2f}x | "
                f"{_ratio(hb and hb / t['hf_pytorch'])} |"
            )
    lines += [
        "",
        "Targets (issue 19): seqjax >= 3x HF PyTorch and >= 1.3x CTranslate2 fp32 in every "
        "cell; seqjax int8 >= 1.3x CTranslate2 int8. "
        f"Greedy outputs identical across systems (batch 1): {meta['greedy_agreement']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--methods", default="greedy,beam", help="greedy and/or beam")
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam method")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per row")
    p.add_argument("--new-tokens", type=int, default=64, help="output tokens of every system")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds per cell")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch and CT2 threads (default: CPUs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random Marian weights")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where HF PyTorch and CTranslate2 run (seqjax runs on JAX's default backend); "
        "with cuda, CT2 is skipped when it cannot translate on the GPU",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also time seqjax with int8 weights (--int8-mode) and CT2 with compute_type int8",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="also time seqjax with --quantize bf16 (bfloat16 weights and matmul inputs, "
        "float32 sums) and HF PyTorch with the model in bfloat16 (CT2 has no bfloat16 CPU "
        "path); fast only on CPUs with bfloat16 dot instructions (AVX512_BF16, AMX)",
    )
    p.add_argument(
        "--int8-mode",
        choices=[m for m in QUANT_MODES if m != "bf16"],
        default="w8a8",
        help="seqjax's --quantize mode for --int8: w8a8 (int8 activations too, like CT2's "
        "int8; default) or int8 (weight-only)",
    )
    p.add_argument(
        "--isa",
        choices=("AVX2", "AVX512"),
        help="cap every system's instruction set (XLA, CTranslate2, ATen, MKL, oneDNN) at this "
        "level, e.g. AVX2 to emulate an AVX2-only CPU such as issue 19's EPYC on an AVX-512 one",
    )
    p.add_argument(
        "--same-process",
        action="store_true",
        help="run every system in this one process (before session 28's default; CT2 "
        "loses about half its speed there, its OpenMP bound to torch's) instead of one "
        "worker process each",
    )
    p.add_argument("--workdir", help="where to keep the model dirs (default: a temp dir)")
    p.add_argument(
        "--out", default="experiments/results/bench_vs_peers", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args(argv)
    # several processes may hold the GPU (this one's GEMM probe, seqjax's workers, torch):
    # none may take JAX's default 75% of its memory up front (the workers inherit this)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.isa:
        cap_isa(args.isa)  # before JAX's backend, torch and CT2 initialise

    hf_dir, ct2_dir = model_dirs(args.workdir, args.seed)
    probe_gemm = gemm_probe(args.threads)
    print("GEMM 64x512x2048 GFLOP/s:", probe_gemm, flush=True)
    before = uptime()
    print("load:", before, flush=True)

    def runner(cls_name: str, *a: Any) -> Runner:
        if args.same_process:
            return Runner(Local(globals()[cls_name](*a)))
        return in_worker(cls_name, *a)

    sj = runner("SeqjaxRunner", hf_dir, args.new_tokens)
    peers: list[Any] = [runner("HFRunner", hf_dir, args.new_tokens, args.threads, args.device)]
    ct2_ok = args.device == "cpu" or ct2_runs_on_gpu(ct2_dir)
    if ct2_ok:
        peers.append(runner("CT2Runner", ct2_dir, args.new_tokens, args.threads, args.device))
    else:
        print("CTranslate2 cannot run on CUDA here: CT2 is left out of this run", flush=True)
    if args.int8:
        peers.append(runner("SeqjaxRunner", hf_dir, args.new_tokens, args.int8_mode))
        if ct2_ok:
            peers.append(
                runner("CT2Runner", ct2_dir, args.new_tokens, args.threads, args.device, "int8")
            )
    if args.bf16:
        peers.append(runner("SeqjaxRunner", hf_dir, args.new_tokens, "bf16"))
        peers.append(
            runner("HFRunner", hf_dir, args.new_tokens, args.threads, args.device, "bfloat16")
        )
    systems = [sj, *peers]
    rng = np.random.default_rng(args.seed)

    # Sanity: the three systems compute the same greedy tokens on one source.
    probe = sources(rng, 1, args.src_len)
    outs = {s.name: s(probe, "greedy", 1) for s in systems}
    agree = {name: float(np.mean(out[0] == outs["seqjax"][0])) for name, out in outs.items()}
    print("greedy token agreement with seqjax (b1):", agree, flush=True)

    rows = []
    for method in args.methods.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            beam = args.beam_size
            src = sources(rng, batch, args.src_len)
            sj_first = sj(src, method, beam)  # trace + compile + run (first call of this shape)
            first = sj.last_s
            for s in peers:
                out = s(src, method, beam)  # warm-up
                if out.shape != (batch, args.new_tokens):
                    raise RuntimeError(f"{s.name} {method} b{batch}: output shape {out.shape}")
            if sj_first.shape != (batch, args.new_tokens) or (sj_first == EOS).any(axis=1).any():
                raise RuntimeError(
                    f"seqjax {method} b{batch}: not exactly {args.new_tokens} tokens"
                )
            times: dict[str, list[float]] = {s.name: [] for s in systems}
            for _ in range(args.repeats):
                src = sources(rng, batch, args.src_len)
                for s in systems:
                    s(src, method, beam)
                    times[s.name].append(s.last_s)
            tokens = batch * args.new_tokens
            med = {k: statistics.median(v) for k, v in times.items()}
            tps = {k: tokens / v for k, v in med.items()}
            row = {
                "method": method if method == "greedy" else f"beam{beam}",
                "batch": batch,
                "tokens_per_s": tps,
                "tokens_per_s_runs": {k: [tokens / t for t in v] for k, v in times.items()},
                "ratio_vs_hf": tps["seqjax"] / tps["hf_pytorch"],
                "ratio_vs_ct2": tps["seqjax"] / tps["ctranslate2"]
                if "ctranslate2" in tps
                else None,
                "seqjax_first_call_s": first,
                "seqjax_compile_s": max(first - med["seqjax"], 0.0),
            }
            rows.append(row)
            print(
                f"{row['method']:>6} b{batch:<3} "
                + "  ".join(f"{k} {v:7.0f}" for k, v in tps.items())
                + f"  seqjax/HF {row['ratio_vs_hf']:.2f}x  seqjax/CT2 {_ratio(row['ratio_vs_ct2'])}"
                + f"  first call {first:.1f}s",
                flush=True,
            )
    meta = {
        "model": "random Marian transformer-base (6+6, d512, 8 heads, ffn 2048, vocab 8000)",
        "src_len": args.src_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "beam_size": args.beam_size,
        "threads": args.threads,
        "peer_device": args.device,
        "platform": f"{platform.machine()}, {os.cpu_count()} CPUs, jax backend "
        f"{jax.default_backend()}",
        "versions": versions(),
        "uptime_before": before,
        "uptime_after": uptime(),
        "greedy_agreement": agree,
        "seqjax_traces": sj.traces,
        "processes": "one" if args.same_process else "one worker process per system",
        "seqjax_int8_mode": args.int8_mode if args.int8 else None,
        "bf16": args.bf16,
        "isa_cap": args.isa,
        "gemm_probe": probe_gemm,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for s in systems:
        s.close()
    write_results(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
