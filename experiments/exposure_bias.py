"""Exposure bias: teacher forcing vs scheduled sampling vs MRT vs self-distillation.

One teacher-forced base model, trained to convergence (``--base RUN_DIR``, or trained here
with exactly ``seqjax train --steps BASE_STEPS --set train.schedule=cosine``: the learning
rate anneals to 1/100 of its peak, so the curve flattens by the end of the budget; whether it
has plateaued is judged and reported, see ``plateau_judgment``), is fine-tuned from its best
checkpoint by each objective for the **same number of updates on the same batches** (same
batch size, learning-rate schedule and seed, hence the same data order) as a
teacher-forcing continuation, the control:

- ``tf``: more teacher forcing (the control: same extra updates, no remedy);
- ``ss``: scheduled sampling, *sequential* (exact: each position is fed the gold token with
  probability eps or the model's own argmax from the previous position, Bengio et al. 2015's
  setting on an LSTM), inverse-sigmoid eps from 1 to ``--ss-end`` at the last update; the
  loss is taken by a teacher-forced pass over the fed tokens *with dropout*, as the control
  (the library's default sequential loss is dropout-free; without dropout the two give the
  same gradient, so only the dropout differs);
- ``ss-par``: (Transformer family only) the parallel two-pass approximation;
- ``mrt``: minimum risk training, S sampled candidates + the reference, sentence-BLEU risk
  (an MRT update costs about S+1 teacher-forced passes plus sampling);
- ``distill``: self-distillation from the base model (top-p 0.9 samples, KL at T=2).

Each fine-tune runs for every seed in the plan. The seed sets dropout, sampling *and the
data order*: within a seed every variant sees the same batches; across seeds the batches
differ, so the seed spread covers data order as well. Every model (and the base) is
evaluated on the whole test set with greedy decoding (where exposure bias bites; ``--beam 4``
adds beam search, the default of ``--full``: about 1.7 more minutes per model on 2 CPUs):
sacrebleu BLEU/chrF, BLEU per reference-length bucket (words), teacher-forced vs
free-running token accuracy (``tf_acc``, ``fr_acc``, ``fr_lcs``), the share of truncated
greedy outputs (no EOS within the length cap) and of *degenerate* ones (a word 3-gram that
occurs 3 or more times: the looping failure; references have it at ``ref_rep3``). Each remedy
is compared with the control by sacrebleu's paired bootstrap (1,000 resamples; Koehn 2004),
per seed (remedy seed s vs control seed s: same batches) and pooled over seeds (the seeds'
outputs concatenated, each remedy output paired with the control output of its seed).

Budget of the standard mode on a quiet 2-core CPU (base given): teacher forcing takes about
0.44 s per update (the main job: 1,500 updates in 11 min) and, per update, sequential SS
costs 1.24x, self-distillation 2.6x and MRT (S=8) 11.5x that (CPU seconds,
experiments/bench_objectives.py), so the 12 fine-tunes of 150 updates take about 58 min
(MRT 38 of them) and the 13 greedy test evaluations about 15 min: about 75 minutes
(measured in session 12: tf + ss + distill, fine-tune and evaluation, about 12 min per seed).
The base (6,000 updates) takes about 65 more minutes when trained here (0.64 s per update
on a 2-core Intel Xeon VM).

Writes ``exposure_bias{,_quick,_full}.{md,csv,png}`` (+ ``_buckets.png``, ``_accuracy.png``,
``_base_curve.png``, ``_runs.csv``) to ``--out``. Runs live in ``--work``: a finished
fine-tune or evaluation is never redone, so an interrupted run resumes with the same command.
The base run directory is only read.

    python experiments/exposure_bias.py --base runs/eb_rnn_base   # standard: <= 90 min, 2 CPUs
    python experiments/exposure_bias.py                           # + trains the base (~65 min)
    python experiments/exposure_bias.py --quick                   # smoke test, <= 10 min
    python experiments/exposure_bias.py --full                    # one GPU
    python experiments/exposure_bias.py --base runs/eb_small_base  # a Transformer base: *_transformer.*
    python experiments/exposure_bias.py --full --preset small --work runs/eb_full_small  # Transformer
    python experiments/exposure_bias.py --mrt-sweep --base runs/eb_rnn_base   # MRT on valid
    python experiments/exposure_bias.py --base runs/eb_rnn_base --mrt-config best  # + its winner

On a GPU, ``BASE=RUN bash experiments/gpu_exposure_bias.sh`` runs the sweep and the test
table of its winner in one call (``--full`` tables; see the script's --help).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from significance import paired_bootstrap  # noqa: E402

from seqjax.app import run_dir  # noqa: E402
from seqjax.app.train import train  # noqa: E402
from seqjax.app.translate import load as load_translator  # noqa: E402
from seqjax.app.translate import output_max_len  # noqa: E402
from seqjax.config import DecodeConfig, TrainConfig  # noqa: E402
from seqjax.data import load_bundled  # noqa: E402
from seqjax.data.batching import TokenizedPairs, make_batch  # noqa: E402
from seqjax.decoding import greedy  # noqa: E402
from seqjax.metrics import corpus_scores  # noqa: E402
from seqjax.sharding import enable_compile_cache  # noqa: E402
from seqjax.training import objectives  # noqa: E402

# Reference-length buckets in words: (label, lowest, highest).
BUCKETS = (("1-15", 1, 15), ("16-30", 16, 30), ("31-45", 31, 45), ("46+", 46, 10**9))
SKIP = ("sentences", "which", "beam", "base", "steps")  # columns the "every run" table leaves out


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one experiment."""

    preset: str
    base_steps: int  # the base is exactly `seqjax train --steps base_steps` + base_schedule
    ft_steps: int  # updates of every fine-tune (MRT included: same batches as the control)
    batch_tokens: int  # the base's batch size (seqjax train's default)
    mrt_samples: int
    ft_lr: float  # peak of the fine-tunes' cosine schedule
    ft_warmup: int
    seeds: tuple[int, ...]
    eval_sentences: int  # 0 = the whole test set
    beam: int  # 0 = greedy only
    sweep_steps: int  # MRT sweep: updates per configuration (validation only)
    # The base's lr schedule: cosine anneals to lr/100 at base_steps, so the curve flattens
    # within the budget (with the default inverse square root the validation BLEU was still
    # rising by ~0.5 per 1,000 updates at 11,000 updates).
    base_schedule: str = "cosine"


QUICK = Plan("rnn_small", 300, 10, 2048, 4, 3e-4, 2, (0,), 100, 0, 5)
STANDARD = Plan("rnn_small", 6000, 150, 2048, 8, 3e-4, 15, (0, 1, 2), 0, 0, 150)
FULL = Plan("rnn_small", 20000, 2000, 2048, 8, 3e-4, 100, (0, 1, 2, 3, 4), 0, 4, 1000)


def inverse_sigmoid_k(steps: int, eps_end: float) -> float:
    """``k`` with ``k / (k + exp(steps / k)) = eps_end`` (bisection; eps falls with k)."""
    lo, hi = 1.0, 1e7
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        eps = 1.0 / (1.0 + math.exp(min(steps / mid, 700.0)) / mid)
        lo, hi = (mid, hi) if eps < eps_end else (lo, mid)
    return math.sqrt(lo * hi)


def variants(plan: Plan, base: str, family: str, ss_end: float) -> dict[str, dict[str, Any]]:
    """TrainConfig overrides per fine-tuned variant (all start from ``base``'s best params)."""
    k = inverse_sigmoid_k(plan.ft_steps, ss_end)
    ss = dict(objective="scheduled-sampling", ss_warmup=0, ss_schedule="inverse_sigmoid", ss_k=k)
    out: dict[str, dict[str, Any]] = {
        "tf": {},
        "ss": {**ss, "ss_mode": "sequential"},
        "mrt": {"objective": "mrt", "mrt_samples": plan.mrt_samples},
        "distill": {"objective": "distill", "teacher": base},
    }
    if family == "transformer":
        out["ss-par"] = {**ss, "ss_mode": "parallel"}
    return out


def mrt_sweep_configs(plan: Plan) -> dict[str, dict[str, Any]]:
    """One knob at a time around the default MRT (S, alpha, lr, MLE mix, candidates)."""
    d = {"objective": "mrt", "mrt_samples": plan.mrt_samples}
    return {
        "tf": {},
        "mrt": d,
        "mrt-S4": {**d, "mrt_samples": 4},
        "mrt-S16": {**d, "mrt_samples": 16},
        "mrt-a0.05": {**d, "mrt_alpha": 0.05},
        "mrt-a0.001": {**d, "mrt_alpha": 0.001},
        "mrt-lr1e-4": {**d, "learning_rate": 1e-4},
        "mrt-lr1e-3": {**d, "learning_rate": 1e-3},
        "mrt-mle0.3": {**d, "mrt_mle_weight": 0.3},
        "mrt-mle1": {**d, "mrt_mle_weight": 1.0},
        "mrt-beam": {**d, "mrt_candidates": "beam"},
        # Edunov et al. (2018)'s best sequence-level setting: beam candidates, token NLL mixed in.
        "mrt-beam-mle0.3": {**d, "mrt_candidates": "beam", "mrt_mle_weight": 0.3},
    }


def sweep_stem(mode: str, family: str = "rnn") -> str:
    """File stem of a mode's MRT sweep table (``mrt_sweep`` for the standard mode, RNN base).

    >>> sweep_stem("full", "transformer")
    'mrt_sweep_full_transformer'
    """
    stem = "mrt_sweep" if mode == "standard" else f"mrt_sweep_{mode}"
    return stem if family == "rnn" else f"{stem}_{family}"


def best_sweep_config(path: Path) -> str:
    r"""The MRT configuration with the highest validation BLEU in a sweep CSV (``tf`` excluded).

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "s.csv"
    >>> _ = f.write_text("config,greedy_bleu\ntf,28.3\nmrt,28.1\nmrt-beam,28.6\n")
    >>> best_sweep_config(f)
    'mrt-beam'
    """
    if not path.is_file():
        sys.exit(f"--mrt-config best: no sweep table {path}; run --mrt-sweep with this --out first")
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["config"] != "tf" and r.get("greedy_bleu")]
    if not rows:
        sys.exit(f"--mrt-config best: {path} has no MRT row yet")
    return max(rows, key=lambda r: float(r["greedy_bleu"]))["config"]


@functools.cache
def _base_config(base: str) -> tuple[Any, TrainConfig]:
    return run_dir.read_run_config(base)


def _ss_with_dropout(original: Any) -> Any:
    """The app's scheduled-sampling step with the loss from a dropout pass (see docstring)."""

    def make(*args: Any, **kw: Any) -> Any:
        if kw.get("mode") == "sequential":
            kw["loss_pass"] = "forward"
        return original(*args, **kw)

    return make


def train_variant(
    name: str, run: Path, overrides: dict[str, Any], plan: Plan, base: str, seed: int
) -> dict[str, Any]:
    """Fine-tune ``base`` into ``run``; returns seconds and load averages."""
    _, base_cfg = _base_config(base)
    data = Path(base) / "data"
    values: dict[str, Any] = dict(
        preset=base_cfg.preset,
        corpus=base_cfg.corpus,
        data=str(data) if (data / "manifest.json").exists() else None,
        init_from=base,
        total_steps=plan.ft_steps,
        max_minutes=0,
        learning_rate=plan.ft_lr,
        warmup_steps=plan.ft_warmup,
        schedule="cosine",
        batch_tokens=plan.batch_tokens,
        seed=seed,
        eval_every=10**9,  # validated (loss only) once, at the end
        save_every=max(25, plan.ft_steps // 10),  # resumable; few saves on a GPU
        keep_last=1,
        valid_bleu_sentences=0,
    )
    cfg = TrainConfig(**{**values, **overrides})
    model_cfg, _ = _base_config(base)
    load0, t0 = os.getloadavg()[0], time.monotonic()
    print(f"[{name}] fine-tuning {cfg.total_steps} steps from {base}", flush=True)
    original = objectives.make_scheduled_sampling_step
    objectives.make_scheduled_sampling_step = _ss_with_dropout(original)
    try:
        train(model_cfg, cfg, run, log=lambda m: print(f"[{name}] {m}", flush=True))
    finally:
        objectives.make_scheduled_sampling_step = original
    return {
        "train_s": round(time.monotonic() - t0, 1),
        "load_start": round(load0, 2),
        "load_end": round(os.getloadavg()[0], 2),
    }


def trained(
    name: str, run: Path, overrides: dict[str, Any], plan: Plan, base: str, seed: int
) -> dict[str, Any]:
    """Fine-tune once: ``run/exposure_bias_train.json`` marks a finished fine-tune."""
    info_path = run / "exposure_bias_train.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("steps") != plan.ft_steps or info.get("base") != str(base):
            sys.exit(
                f"{run} was fine-tuned for {info.get('steps')} steps from {info.get('base')}, "
                f"not {plan.ft_steps} from {base}: use another --work"
            )
        return info
    info = train_variant(name, run, overrides, plan, base, seed)
    info.update(
        steps=plan.ft_steps, base=str(base), step_s=round(info["train_s"] / plan.ft_steps, 2)
    )
    info_path.write_text(json.dumps(info))
    return info


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def _tf_and_greedy(model: Any, params: Any, batch: dict, max_len: int):
    """Teacher-forced argmax ``[B, T]``, greedy output ``[B, max_len]`` and its EOS flag ``[B]``."""
    mc = model.config
    src = batch["src"]
    mask = src != mc.pad_id
    tf_pred = jnp.argmax(model.forward(params, src, mask, batch["tgt_in"]), axis=-1)
    cache = model.init_cache(params, model.encode(params, src, mask), mask, max_len)
    ids = dict(bos_id=mc.bos_id, eos_id=mc.eos_id, pad_id=mc.pad_id)
    out = greedy(model.step_fn(params), cache, max_len=max_len, **ids)
    tokens = out.tokens[:, 0]
    return tf_pred, tokens, jnp.any(tokens == mc.eos_id, axis=1)


def lcs_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence of two id lists (O(len(a) * len(b)))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def repeats_ngram(text: str, n: int = 3, times: int = 3) -> bool:
    """Whether some word ``n``-gram occurs ``times`` or more times in ``text`` (a loop).

    >>> repeats_ngram("j'ai fait de vous, j'ai fait de vous, j'ai fait de vous.")
    True
    >>> repeats_ngram("et il dit : et il dit")
    False
    """
    w = text.split()
    grams = Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def greedy_outputs(
    run: Path, which: str, src: list[str], ref: list[str], rows: int = 64
) -> tuple[list[str], dict[str, Any]]:
    """Greedy hypotheses and the token-level counts (TF / free-running accuracy, truncation)."""
    model, params = run_dir.load_model(run, which=which)
    src_tok, tgt_tok = run_dir.read_tokenizers(run)
    mc = model.config
    cap = mc.max_len - 1
    pairs = TokenizedPairs(
        [x[:cap] for x in src_tok.encode(src)], [y[:cap] for y in tgt_tok.encode(ref)]
    )
    order = sorted(range(len(src)), key=lambda i: -max(len(pairs.src[i]), len(pairs.tgt[i])))
    hyps = [""] * len(src)
    tf_hits = fr_hits = lcs_hits = total = truncated = 0
    for start in range(0, len(order), rows):
        chunk = order[start : start + rows]
        need = max(max(len(pairs.src[i]), len(pairs.tgt[i])) for i in chunk) + 1
        length = min(16 * math.ceil(need / 16), mc.max_len)
        batch = make_batch(pairs, chunk, length, rows)
        max_len = output_max_len(DecodeConfig(), length, mc.max_len)
        tf_pred, fr, ended = jax.device_get(
            _tf_and_greedy(model, params, {k: jnp.asarray(v) for k, v in batch.items()}, max_len)
        )
        gold = batch["tgt_out"]
        real = gold != mc.pad_id
        fr = np.pad(fr, ((0, 0), (0, max(0, length - fr.shape[1]))), constant_values=-1)
        tf_hits += int(np.sum((tf_pred == gold) & real))
        fr_hits += int(np.sum((fr[:, :length] == gold) & real))
        total += int(np.sum(real))
        truncated += int(np.sum(~ended[: len(chunk)]))
        for r in range(len(chunk)):
            lcs_hits += lcs_length(fr[r][fr[r] > 0].tolist(), gold[r][real[r]].tolist())
        for r, text in enumerate(tgt_tok.decode(np.maximum(fr, 0)[: len(chunk)])):
            hyps[chunk[r]] = text
    counts = {
        "tf_acc": round(100 * tf_hits / total, 2),
        "fr_acc": round(100 * fr_hits / total, 2),
        "fr_lcs": round(100 * lcs_hits / total, 2),
        "trunc_pct": round(100 * truncated / len(src), 2),
    }
    return hyps, counts


def text_scores(hyps: list[str], ref: list[str]) -> dict[str, Any]:
    """BLEU, chrF, BLEU per reference-length bucket, length ratio, degenerate share."""
    s = corpus_scores(hyps, ref)
    out: dict[str, Any] = {"bleu": round(s.bleu, 2), "chrf": round(s.chrf, 2)}
    words = [len(r.split()) for r in ref]
    for label, lo, hi in BUCKETS:
        sel = [i for i, w in enumerate(words) if lo <= w <= hi]
        out[f"bleu_{label}"] = (
            round(corpus_scores([hyps[i] for i in sel], [ref[i] for i in sel]).bleu, 2)
            if sel
            else None
        )
    out["len_ratio"] = round(sum(len(h.split()) for h in hyps) / max(sum(words), 1), 3)
    out["rep3_pct"] = round(100 * sum(map(repeats_ngram, hyps)) / len(hyps), 2)
    out["empty_pct"] = round(100 * sum(not h.strip() for h in hyps) / len(hyps), 2)
    return out


def evaluate(run: Path, which: str, where: Path, split: str, n: int, beam: int) -> dict[str, Any]:
    """Evaluate ``run`` (its ``which`` params) on ``split``; hypotheses and row saved in ``where``.

    Done once: a later call reads ``where/eval_{split}.json``.
    """
    done = where / f"eval_{split}.json"
    if done.exists():
        row = json.loads(done.read_text())
        if row.get("sentences") == n and row.get("beam") == beam:
            return row
        if row.get("sentences") == n and beam == 0:  # greedy is all that is asked for
            return {k: v for k, v in row.items() if not k.startswith("beam_")} | {"beam": 0}
    data = load_bundled("bible_en_fr", split)
    src, ref = data.src[: n or None], data.tgt[: n or None]
    t0 = time.monotonic()
    hyps, counts = greedy_outputs(run, which, src, ref)
    row: dict[str, Any] = {"sentences": len(src), "beam": beam, "which": which}
    row.update({f"greedy_{k}": v for k, v in text_scores(hyps, ref).items()})
    row.update(counts)
    where.mkdir(parents=True, exist_ok=True)
    (where / f"hyps_greedy_{split}.txt").write_text("".join(h + "\n" for h in hyps))
    if beam:
        tr = load_translator(run, which=which)
        bh = tr.translate(src, DecodeConfig(beam_size=beam))
        row.update({f"beam_{k}": v for k, v in text_scores(bh, ref).items()})
        (where / f"hyps_beam{beam}_{split}.txt").write_text("".join(h + "\n" for h in bh))
    row["eval_s"] = round(time.monotonic() - t0, 1)
    done.write_text(json.dumps(row))
    return row


def read_hyps(where: Path, kind: str, split: str) -> list[str]:
    return (where / f"hyps_{kind}_{split}.txt").read_text().split("\n")[:-1]


# -- the base --------------------------------------------------------------------------------


def train_base(work: Path, plan: Plan) -> str:
    """``seqjax train --steps BASE_STEPS --set train.schedule=cosine --out WORK/base``.

    Every other option is its default. ``--no-test`` skips only the final test decoding (this
    script evaluates the base itself); the model is the same.
    """
    run = work / "base"
    ckpts = run / "checkpoints"
    if not (ckpts / str(plan.base_steps)).exists():
        cmd = ["seqjax", "train", "--steps", str(plan.base_steps), "--out", str(run), "--no-test"]
        if plan.base_schedule != "inverse_sqrt":
            cmd += ["--set", f"train.schedule={plan.base_schedule}"]
        if plan.preset != "rnn_small":
            cmd += ["--preset", plan.preset]
        print(f"[base] {' '.join(cmd)}", flush=True)
        # seqjax train prints its own one-line error; a traceback from here would bury it.
        if subprocess.run(cmd).returncode != 0:
            sys.exit("exposure_bias.py: training the base failed (command above); fix and rerun")
    return str(run)


def base_curve(base: str) -> list[dict[str, Any]]:
    """The base's validation records (one per validated step, the latest wins)."""
    path = Path(base) / "metrics.jsonl"
    by_step: dict[int, dict[str, Any]] = {}
    minutes: dict[int, float] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "valid_bleu" in r:
            by_step[r["step"]] = r
        elif "minutes" in r:
            minutes[r["step"]] = r["minutes"]
    return [by_step[s] for s in sorted(by_step)]


def base_facts(base: str, curve: list[dict[str, Any]]) -> str:
    """Which checkpoint the fine-tunes start from, and the run it comes from."""
    best = sorted(int(d.name) for d in (Path(base) / "best").iterdir() if d.name.isdigit())
    _, cfg = _base_config(base)
    last = curve[-1]["step"] if curve else "?"
    return (
        f"best checkpoint (the fine-tunes' start) at step {best[-1] if best else '?'}, "
        f"validated up to step {last} (a `seqjax train` run, preset {cfg.preset}, "
        f"seed {cfg.seed}, defaults otherwise: {cfg.batch_tokens} tokens per batch, lr "
        f"{cfg.learning_rate} {cfg.schedule})"
    )


def plateau_judgment(curve: list[dict[str, Any]], window: int = 4, tol: float = 0.5) -> str:
    """Plateaued when the last ``window`` validations raised the best valid BLEU by < ``tol``."""
    if len(curve) <= window:
        return f"not judged: only {len(curve)} validations"
    bleu = [r["valid_bleu"] for r in curve]
    before, last = max(bleu[:-window]), max(bleu[-window:])
    steps = curve[-window]["step"], curve[-1]["step"]
    gain = last - before
    verdict = "plateaued" if gain < tol else "NOT plateaued"
    nll = [r.get("valid_nll") for r in curve]
    nll_note = (
        f"; validation NLL (whole set) {nll[-window - 1]:.3f} -> {nll[-1]:.3f} over the window"
        if None not in (nll[-window - 1], nll[-1])
        else ""
    )
    return (
        f"{verdict}: the best validation BLEU of steps {steps[0]}-{steps[1]} ({last:.2f}) is "
        f"{gain:+.2f} over the best before ({before:.2f}); rule: < {tol} BLEU over the last "
        f"{window} validations (BLEU on {curve[-1].get('valid_sentences', 200)} sentences)"
        + nll_note
    )


# -- tables and plots ------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    if not values:
        return ""
    m = float(np.mean(values))
    return f"{m:.2f} ± {float(np.std(values, ddof=1)):.2f}" if len(values) > 1 else f"{m:.2f}"


def compare(
    runs: dict[tuple[str, int], Path], kind: str, ref: list[str], base_eval: Path | None = None
) -> list[dict[str, Any]]:
    """Paired bootstrap of every remedy against ``tf``, per seed and pooled over shared seeds.

    With ``base_eval`` (the base's outputs) a first row compares the control, pooled over its
    seeds, with the base: the convergence check (more teacher forcing should not help).
    """
    out = []
    ctl_seeds = sorted(s for v, s in runs if v == "tf")
    if ctl_seeds and base_eval and (base_eval / f"hyps_{kind}_test.txt").exists():
        ctl = [h for s in ctl_seeds for h in read_hyps(runs[("tf", s)], kind, "test")]
        row = _bs_row(
            ctl, read_hyps(base_eval, kind, "test") * len(ctl_seeds), ref * len(ctl_seeds)
        )
        out.append(
            {"method": "tf vs base", "seed": "pooled " + ",".join(map(str, ctl_seeds)), **row}
        )
    names = sorted({v for v, _ in runs if v != "tf"})
    for name in names:
        seeds = sorted(s for v, s in runs if v == name and ("tf", s) in runs)
        pairs = [
            (read_hyps(runs[(name, s)], kind, "test"), read_hyps(runs[("tf", s)], kind, "test"))
            for s in seeds
        ]
        for s, (sys_h, ctl_h) in zip(seeds, pairs, strict=True):
            out.append({"method": name, "seed": s, **_bs_row(sys_h, ctl_h, ref)})
        if len(seeds) > 1:
            sys_all = [h for p in pairs for h in p[0]]
            ctl_all = [h for p in pairs for h in p[1]]
            row = _bs_row(sys_all, ctl_all, ref * len(seeds))
            out.append({"method": name, "seed": "pooled " + ",".join(map(str, seeds)), **row})
    return out


def _bs_row(sys_h: list[str], ctl_h: list[str], ref: list[str]) -> dict[str, Any]:
    r = paired_bootstrap(sys_h, ctl_h, ref, n_samples=1000)
    row: dict[str, Any] = {}
    for m in ("bleu", "chrf"):
        row[f"d_{m}"] = round(r[m]["delta"], 2)
        row[f"d_{m}_ci"] = f"[{r[m]['delta_lo']:+.2f}, {r[m]['delta_hi']:+.2f}]"
        row[f"p_{m}"] = round(r[m]["p"], 4)
    return row


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def md_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" + "---:|" * (len(cols) - 1) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def summary_rows(rows: list[dict[str, Any]], kinds: list[str]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per method, of the headline numbers."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        s: dict[str, Any] = {"method": method, "seeds": ",".join(str(r["seed"]) for r in sel)}
        for kind in kinds:
            for m in ("bleu", "chrf"):
                s[f"{kind} {m}"] = _ms([r[f"{kind}_{m}"] for r in sel if f"{kind}_{m}" in r])
        for k in ("tf_acc", "fr_acc", "fr_lcs", "greedy_rep3_pct", "trunc_pct"):
            s[k] = _ms([r[k] for r in sel])
        s["train min"] = _ms([r.get("train_s", 0) / 60 for r in sel])
        out.append(s)
    return out


def plots(out: Path, stem: str, rows, comps, curve, kinds) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[experiments]'): no plots")
        return
    # 1. the headline: each remedy minus the control, pooled, with its 95% CI
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        pooled = [c for c in comps[kind] if str(c["seed"]).startswith("pooled")]
        pooled = pooled or comps[kind]
        for i, c in enumerate(pooled):
            lo, hi = (float(x) for x in c["d_bleu_ci"].strip("[]").split(","))
            ax.errorbar(i, c["d_bleu"], yerr=[[c["d_bleu"] - lo], [hi - c["d_bleu"]]], fmt="o")
            ax.annotate(f"p={c['p_bleu']}", (i, hi), ha="center", va="bottom", fontsize=8)
        ax.axhline(0, color="gray", ls="--")
        ax.set_xticks(range(len(pooled)), [f"{c['method']}\n{c['seed']}" for c in pooled])
        ax.set_ylabel(f"test BLEU difference ({kind})")
        ax.set_title(
            f"Remedy - TF control (tf vs base: control - base), {kind}, 95% CI", fontsize=9
        )
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=80)
    plt.close(fig)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    x = np.arange(len(methods))
    # 2. BLEU by reference length (greedy), mean over seeds
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(BUCKETS)
    for j, (label, _, _) in enumerate(BUCKETS):
        vals = [
            np.mean([r[f"greedy_bleu_{label}"] or 0 for r in rows if r["method"] == m])
            for m in methods
        ]
        ax.bar(x + (j - (len(BUCKETS) - 1) / 2) * width, vals, width, label=f"{label} words")
    ax.set_xticks(x, methods)
    ax.set_ylabel("test BLEU (greedy), mean over seeds")
    ax.set_title("BLEU by reference length")
    ax.legend(fontsize=8, ncol=4, loc="lower center")
    fig.tight_layout()
    fig.savefig(out / f"{stem}_buckets.png", dpi=80)
    plt.close(fig)
    # 3. teacher-forced vs free-running accuracy, degenerate outputs
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for off, key, label in ((-0.27, "tf_acc", "teacher-forced"), (0, "fr_lcs", "free, LCS"),
                            (0.27, "fr_acc", "free, same position")):  # fmt: skip
        vals = [np.mean([r[key] for r in rows if r["method"] == m]) for m in methods]
        a.bar(x + off, vals, 0.27, label=label)
    a.set_ylabel("token accuracy (%)")
    a.set_title("Teacher-forced vs free-running accuracy")
    a.legend(fontsize=8)
    for off, key, label in ((-0.2, "greedy_rep3_pct", "3-gram x3 (loop)"),
                            (0.2, "trunc_pct", "no EOS (truncated)")):  # fmt: skip
        vals = [np.mean([r[key] for r in rows if r["method"] == m]) for m in methods]
        b.bar(x + off, vals, 0.4, label=label)
    b.set_ylabel("% of greedy test outputs")
    b.set_title("Degenerate outputs")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_xticks(x, methods)
    fig.tight_layout()
    fig.savefig(out / f"{stem}_accuracy.png", dpi=80)
    plt.close(fig)
    plot_curve(out / f"{stem}_base_curve.png", curve)


def plot_curve(path: Path, curve: list[dict[str, Any]]) -> None:
    """The base's validation BLEU (and NLL) by update."""
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["step"] for r in curve], [r["valid_bleu"] for r in curve], "o-", label="BLEU")
    ax.set_xlabel("update")
    ax.set_ylabel("validation BLEU (greedy, 200 sentences)")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in curve], [r["valid_nll"] for r in curve], "s--", color="C1")
    ax2.set_ylabel("validation NLL (dashed)")
    ax.set_title("Base (teacher forcing): validation curve")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_curve(base: str, out: Path) -> None:
    """``exposure_bias_base_curve.{md,png}``: the base's validation curve and the plateau rule."""
    curve = base_curve(base)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in curve]
    cmd = " ".join(["python", "experiments/exposure_bias.py", *sys.argv[1:]])
    (out / "exposure_bias_base_curve.md").write_text(
        f"# Base validation curve: `{base}`\n\nCommand: `{cmd}`\n\n"
        f"{base_facts(base, curve)}.\n\n{plateau_judgment(curve)}.\n\n"
        + md_table(rows, ["step", "valid_bleu", "valid_chrf", "valid_nll", "valid_acc"])
    )
    plot_curve(out / "exposure_bias_base_curve.png", curve)


# -- the two modes ---------------------------------------------------------------------------


def table_variants(
    todo: dict[str, dict[str, Any]],
    sweep: dict[str, dict[str, Any]],
    mrt_configs: list[str],
    only: list[str] | None,
    sweep_csv: Path,
) -> dict[str, dict[str, Any]]:
    """The table's variants: ``todo`` plus the named sweep configurations (``best``: the
    sweep's validation winner), cut to ``only``; a configuration named here always runs.

    >>> sweep = {"tf": {}, "mrt-S4": {"mrt_samples": 4}}
    >>> list(table_variants({"tf": {}, "ss": {}}, sweep, ["mrt-S4"], ["tf"], Path("-")))
    ['tf', 'mrt-S4']
    """
    todo = dict(todo)
    only = list(only) if only else None
    for name in mrt_configs:
        if name == "best":
            name = best_sweep_config(sweep_csv)
            print(f"--mrt-config best: {name} (highest validation BLEU of the sweep)")
        if name not in sweep:
            sys.exit(f"--mrt-config {name}: unknown; choose from {', '.join(sweep)}")
        todo[name] = sweep[name]
        only = only and [*only, name]
    return {k: v for k, v in todo.items() if only is None or k in only}


def run_table(args: argparse.Namespace, plan: Plan, mode: str, base: str, work: Path) -> None:
    """Fine-tune every variant x seed (seed-major), evaluate, compare, write the outputs."""
    model_cfg, _ = _base_config(base)
    todo = table_variants(
        variants(plan, base, model_cfg.family, args.ss_end),
        mrt_sweep_configs(plan),
        args.mrt_config.split(",") if args.mrt_config else [],
        args.only.split(",") if args.only else None,
        Path(args.out) / f"{sweep_stem(mode, model_cfg.family)}.csv",
    )
    stem = {"standard": "exposure_bias"}.get(mode, f"exposure_bias_{mode}")
    if model_cfg.family != "rnn":
        stem += f"_{model_cfg.family}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_bundled("bible_en_fr", "test")
    n = plan.eval_sentences or len(test.src)
    ref = test.tgt[:n]
    t_start = time.monotonic()
    base_dir = work / "base_eval"
    base_eval = evaluate(Path(base), "best", base_dir, "test", n, plan.beam)
    rows = [{"method": "base", "seed": "-", **base_eval}]
    runs: dict[tuple[str, int], Path] = {}
    for seed in plan.seeds:
        for name, overrides in todo.items():
            run = work / f"{name}-s{seed}"
            info = trained(name, run, overrides, plan, base, seed)
            row = evaluate(run, "latest", run, "test", n, plan.beam)
            print(f"[{name}-s{seed}] {row}", flush=True)
            rows.append({"method": name, "seed": seed, **row, **info})
            runs[(name, seed)] = run
            write_all(args, plan, mode, stem, out, base, rows, runs, ref, t_start, base_dir)
    print(f"done in {(time.monotonic() - t_start) / 60:.1f} min; wrote {out}/{stem}.*")


def write_all(args, plan, mode, stem, out, base, rows, runs, ref, t_start, base_dir) -> None:
    kinds = ["greedy"] + ([f"beam{plan.beam}"] if plan.beam else [])
    for r in rows:  # column names by decoder
        for k in list(r):
            if k.startswith("beam_"):
                r[f"beam{plan.beam}_" + k[5:]] = r.pop(k)
    comps = {kind: compare(runs, kind, ref, base_dir) for kind in kinds}
    curve = base_curve(base)
    write_csv(out / f"{stem}_runs.csv", rows)
    flat = [{"decoder": k, **c} for k in kinds for c in comps[k]]
    if flat:
        write_csv(out / f"{stem}.csv", flat)
    summary = summary_rows(rows, kinds)
    done = ", ".join(f"{v}-s{s}" for v, s in runs)
    load = os.getloadavg()
    cmd = " ".join(["python", "experiments/exposure_bias.py", *sys.argv[1:]])
    text = [
        f"# Exposure bias ({mode}): {plan.preset} base, {plan.ft_steps} fine-tuning updates each\n",
        f"Command: `{cmd}`\n",
        f"Base: `{base}`, {base_facts(base, curve)}; {plateau_judgment(curve)}.\n",
        f"Included fine-tunes (variant-seed): {done or 'none yet'}; plan seeds "
        f"{list(plan.seeds)}. Elapsed {(time.monotonic() - t_start) / 60:.1f} min of this "
        f"invocation; load average now {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} (1/5/15 min); "
        f"2-CPU machine shared with other jobs.\n",
        f"Fine-tunes: cosine lr from {plan.ft_lr} (warm-up {plan.ft_warmup}), "
        f"{plan.batch_tokens} target tokens per batch (the base's), MRT S={plan.mrt_samples}, "
        f"scheduled sampling eps 1 -> {args.ss_end} (inverse sigmoid). Same seed = same "
        "batches for every variant; the seed also sets dropout and sampling.\n",
        "## Remedy minus control (paired bootstrap, 1,000 resamples, 95% CI)\n",
        "Per seed: the remedy and the control of that seed (same batches) on the "
        f"{len(ref)} test sentences. Pooled: the seeds' outputs concatenated "
        f"({len(ref)} x seeds segments), each remedy output paired with its seed's control; "
        "p: sacrebleu's paired-bs p-value (two-sided, centred). `tf vs base`: the control "
        "minus the base it starts from (the base's outputs repeated per seed): the convergence "
        "check, since a converged base gains nothing from more teacher forcing.\n",
        md_table(flat, list(flat[0])) if flat else "(no comparison yet)\n",
        "## Mean ± std over seeds\n",
        md_table(summary, list(summary[0])),
        "## Every run\n",
        md_table(rows, [c for c in dict.fromkeys(k for r in rows for k in r) if c not in SKIP]),
        "\nColumns: `tf_acc` teacher-forced token accuracy; `fr_acc` free-running (greedy) "
        "token accuracy at the same reference positions; `fr_lcs` share of reference tokens "
        "in the LCS with the greedy output; `*_bleu_a-b` corpus BLEU of the sentences whose "
        "reference has a..b words; `rep3_pct` share of outputs in which some word 3-gram "
        f"occurs >= 3 times (references: {ref_rep3(ref):.2f}%); `trunc_pct` greedy outputs "
        "without EOS within the length cap; `train_s`/`eval_s` seconds; `load_*` 1-min load "
        "average at the start/end of the fine-tune.\n",
        "## Base validation curve\n",
        md_table(
            [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in curve],
            ["step", "valid_bleu", "valid_chrf", "valid_nll", "valid_acc"],
        ),
    ]
    (out / f"{stem}.md").write_text("\n".join(text))
    plots(out, stem, [r for r in rows], comps, curve, kinds)


def ref_rep3(ref: list[str]) -> float:
    return 100 * sum(map(repeats_ngram, ref)) / len(ref)


def sweep_run(work: Path, plan: Plan, name: str) -> Path:
    """A sweep configuration's run: the table's seed-0 run of that name when the update
    counts agree (so the configuration chosen on validation is not trained twice)."""
    if plan.sweep_steps == plan.ft_steps:
        return work / f"{name}-s0"
    return work / f"sweep-{name}"


def merge_sweep_rows(
    new: list[dict[str, Any]], earlier: list[dict[str, Any]], order: list[str], steps: int
) -> list[dict[str, Any]]:
    """This invocation's sweep rows plus the earlier ones (read back from the CSV) that it
    did not rerun and that had the same number of updates, in the sweep's order.

    >>> merge_sweep_rows([{"config": "b", "steps": 150}],
    ...                  [{"config": "b", "steps": "150"}, {"config": "c", "steps": "150"},
    ...                   {"config": "a", "steps": "20"}], ["a", "b", "c"], 150)
    [{'config': 'b', 'steps': 150}, {'config': 'c', 'steps': '150'}]
    """
    done = {r["config"] for r in new}
    keep = [
        r
        for r in earlier
        if r["config"] in order and r["config"] not in done and str(r.get("steps")) == str(steps)
    ]
    return sorted(new + keep, key=lambda r: order.index(r["config"]))


def run_sweep(args: argparse.Namespace, plan: Plan, mode: str, base: str, work: Path) -> None:
    """MRT knobs on the validation set (seed 0, ``sweep_steps`` updates each) vs ``tf``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    valid = load_bundled("bible_en_fr", "valid")
    n = plan.eval_sentences or len(valid.src)
    configs = mrt_sweep_configs(plan)
    # Rows of earlier invocations (other --only subsets, maybe other sessions whose run dirs
    # are gone) are kept unless rerun here, so the sweep table accumulates.
    earlier: list[dict[str, Any]] = []
    stem = sweep_stem(mode, _base_config(base)[0].family)
    if (out / f"{stem}.csv").is_file():
        with (out / f"{stem}.csv").open(newline="") as f:
            earlier = list(csv.DictReader(f))
    rows: list[dict[str, Any]] = []
    swept = dataclasses.replace(plan, ft_steps=plan.sweep_steps)
    for name, overrides in configs.items():
        if args.only and name not in args.only.split(","):
            continue
        run = sweep_run(work, plan, name)
        info = trained(name, run, overrides, swept, base, 0)
        row = evaluate(run, "latest", run, "valid", n, 0)
        row = {"config": name, **{k: v for k, v in row.items() if k != "beam"}, **info}
        ctl = sweep_run(work, plan, "tf")
        if name != "tf" and (ctl / "eval_valid.json").exists():
            hyps = read_hyps(run, "greedy", "valid"), read_hyps(ctl, "greedy", "valid")
            row.update(_bs_row(*hyps, valid.tgt[:n]))
        rows.append(row)
        kept = merge_sweep_rows(rows, earlier, list(configs), plan.sweep_steps)
        write_csv(out / f"{stem}.csv", kept)
        cols = ["config", "greedy_bleu", "d_bleu", "d_bleu_ci", "p_bleu", "greedy_chrf", "d_chrf"]
        cols += ["p_chrf", "fr_acc", "greedy_len_ratio", "greedy_rep3_pct"]
        (out / f"{stem}.md").write_text(
            f"# MRT sweep on the validation set ({n} sentences, greedy)\n\n"
            f"Last command: `python experiments/exposure_bias.py {' '.join(sys.argv[1:])}` "
            "(rows of earlier invocations with other `--only` subsets are kept).\n\n"
            f"Each configuration fine-tunes the base `{base}` for {plan.sweep_steps} updates "
            "(seed 0, the same batches as `tf`, the teacher-forcing control). One knob at a "
            "time around S=8, alpha=0.005, lr 3e-4, no MLE mix, sampled candidates "
            "(`mrt-beam-mle0.3` turns two: Edunov et al. 2018's setting). `d_*`: "
            "minus `tf`, paired bootstrap (1,000 resamples) on validation.\n\n"
            + md_table(kept, cols + ["train_s", "load_start", "load_end"])
        )
        print(f"[sweep {name}] {row}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smoke test: <= 10 min on 2 CPU cores")
    g.add_argument("--full", action="store_true", help="the GPU plan (more updates and seeds)")
    p.add_argument("--mrt-sweep", action="store_true", help="MRT knobs on validation instead")
    p.add_argument(
        "--base-curve", action="store_true", help="only the --base run's validation curve"
    )
    p.add_argument("--base", help="teacher-forced run directory to start from (default: train)")
    p.add_argument("--work", help="run directories (default runs/exposure_bias[_MODE])")
    p.add_argument("--out", default="experiments/results", help="where tables and plots go")
    p.add_argument("--ss-end", type=float, default=0.5, help="gold-token prob. at the last step")
    p.add_argument("--only", help="comma-separated subset of variants (tf, ss, mrt, distill)")
    for field in ("ft_steps", "eval_sentences", "beam", "sweep_steps"):
        p.add_argument("--" + field.replace("_", "-"), type=int, help=f"override {field}")
    p.add_argument("--seeds", help="comma-separated seeds (override the plan's)")
    p.add_argument("--preset", help="the base's preset when trained here (e.g. small: Transformer)")
    p.add_argument(
        "--mrt-config",
        help="add sweep configuration(s) chosen on validation, e.g. mrt-lr1e-3 (run whatever "
        "--only says); 'best': the one with the highest validation BLEU in this mode's sweep "
        "table in --out",
    )
    args = p.parse_args()
    mode = "quick" if args.quick else "full" if args.full else "standard"
    plan = {"quick": QUICK, "full": FULL, "standard": STANDARD}[mode]
    over = {f: getattr(args, f) for f in ("ft_steps", "eval_sentences", "beam", "sweep_steps")}
    plan = dataclasses.replace(plan, **{k: v for k, v in over.items() if v is not None})
    if args.preset:
        plan = dataclasses.replace(plan, preset=args.preset)
    if args.seeds:
        plan = dataclasses.replace(plan, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.base_curve:
        if not args.base:
            sys.exit("--base-curve needs --base RUN_DIR")
        write_curve(args.base, Path(args.out))
        return
    work = Path(args.work or ("runs/exposure_bias" + ("" if mode == "standard" else f"_{mode}")))
    work.mkdir(parents=True, exist_ok=True)
    # Every fine-tune builds its own jitted steps: the persistent cache compiles each
    # program once per invocation (seeds of a variant, the evaluations) instead of per run.
    enable_compile_cache()
    base = args.base or train_base(work, plan)
    # A given base decides the family and preset (tables are titled and named after them).
    plan = dataclasses.replace(plan, preset=_base_config(base)[1].preset)
    if args.mrt_sweep:
        run_sweep(args, plan, mode, base, work)
    else:
        run_table(args, plan, mode, base, work)


if __name__ == "__main__":
    main()
