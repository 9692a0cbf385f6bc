"""The data a run trains on: a prepared directory (``seqjax prepare``) read through Grain.

``seqjax train --data DIR`` trains on a directory ``seqjax prepare`` wrote. On raw text
(``--src/--tgt``, or the bundled corpus when neither is given) ``train`` prepares it into
``RUN/data`` first; the content key makes a rerun or a resume find it ready. Only process 0
prepares; the others wait and read (a shared filesystem is assumed, as for checkpoints).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from seqjax import sharding
from seqjax.config import ModelConfig, TrainConfig
from seqjax.data import DataError, Tokenizer, write_bundled
from seqjax.data.pipeline import BatchSpec, eval_batches, split_stats, train_iterator
from seqjax.data.prepare import PrepareOptions, is_prepared, prepare
from seqjax.data.shards import read_manifest, read_text
from seqjax.data.tokenizer import load_tokenizers

DATA_DIR = "data"  # RUN/data: what `train` prepared from raw text
Log = Callable[[str], None]


def batch_spec(cfg: TrainConfig, model_cfg: ModelConfig, mesh: Any) -> BatchSpec:
    """How the run cuts its data into batches, and which rows this process reads.

    A Transformer cannot see positions past its sinusoid table (``model.max_len``), so for that
    family the length limits and buckets are capped there: longer pairs are dropped and
    counted like any pair over ``train.max_src_len`` (the RNN has no such table).
    """
    max_src, max_tgt, buckets = cfg.max_src_len, cfg.max_tgt_len, tuple(cfg.length_buckets)
    if model_cfg.family == "transformer":
        cap = model_cfg.max_len
        max_src, max_tgt = min(max_src, cap), min(max_tgt, cap)
        buckets = tuple(b for b in buckets if b < cap) + (cap,) if max(buckets) > cap else buckets
    return BatchSpec(
        cfg.batch_tokens, buckets, max_src, max_tgt,
        seed=cfg.seed, row_multiple=sharding.data_size(mesh),
        process_index=jax.process_index(), process_count=jax.process_count(),
        pad_id=model_cfg.pad_id, bos_id=model_cfg.bos_id, eos_id=model_cfg.eos_id,
    )  # fmt: skip


def _text_files(cfg: TrainConfig, tmp: Path) -> dict[str, Path | str]:
    """The raw files to prepare: the user's, or the bundled corpus written out to ``tmp``."""
    if cfg.src is not None:
        files: dict[str, Path | str] = {"src": cfg.src, "tgt": cfg.tgt}
        if cfg.valid_src is not None:
            files.update(valid_src=cfg.valid_src, valid_tgt=cfg.valid_tgt)
        return files
    src, tgt = write_bundled(cfg.corpus, "train", tmp)
    valid_src, valid_tgt = write_bundled(cfg.corpus, "valid", tmp)
    return {"src": src, "tgt": tgt, "valid_src": valid_src, "valid_tgt": valid_tgt}


def _options(model_cfg: ModelConfig, cfg: TrainConfig, tokenizer: Path | None) -> PrepareOptions:
    return PrepareOptions(
        vocab_size=model_cfg.vocab_size,
        joint_vocab=cfg.joint_vocab,
        seed=cfg.seed,
        tokenizer=None if tokenizer is None else str(tokenizer),
    )


def _prepare_raw(
    out: Path, model_cfg: ModelConfig, cfg: TrainConfig, tokenizer: Path | None,
    keep_tokenizer: Path | None, log: Log,
) -> None:  # fmt: skip
    """Prepare the run's raw text into ``out`` unless it is there already.

    ``tokenizer``: use it instead of training one (fine-tuning). ``keep_tokenizer`` (a
    resumed run's): reuse ``out`` if the first run prepared these files, else prepare them
    again with that tokenizer, so the run keeps its vocabulary.
    """
    with tempfile.TemporaryDirectory() as tmp:
        files = _text_files(cfg, Path(tmp))
        opts = _options(model_cfg, cfg, tokenizer)
        if keep_tokenizer is not None and not is_prepared(out, **files, options=opts):
            opts = _options(model_cfg, cfg, keep_tokenizer)
        res = prepare(files.pop("src"), files.pop("tgt"), out, **files, options=opts, log=log)
    if not res.reused:
        train = res.manifest["splits"]["train"]
        log(
            f"prepared {train['pairs']} training pairs into {out} in {res.manifest['seconds']}s"
            f" (tokenizer sample: {res.manifest['tokenizer']['sample_sentences']} sentences)"
        )


def ensure_prepared(
    run: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    tokenizer: Path | None = None,
    keep_tokenizer: Path | None = None,
    primary: bool = True,
    log: Log = lambda msg: None,
) -> Path:
    """The prepared directory the run trains on: ``cfg.data``, or ``RUN/data`` made from text."""
    if cfg.data is not None:
        read_manifest(cfg.data)  # one-line error now if it is not a (complete) dataset
        return Path(cfg.data)
    out = run / DATA_DIR
    if primary:
        _prepare_raw(out, model_cfg, cfg, tokenizer, keep_tokenizer, log)
    sharding.sync("seqjax-data-prepared")
    return out


def tokenizer_dir(data_dir: Path) -> Path:
    """Where a prepared directory keeps its tokenizer (the run copies it)."""
    return Path(data_dir) / "tokenizer"


def check_tokenizer(data_dir: Path, run_tokenizers: tuple[Tokenizer, Tokenizer]) -> None:
    """The data must be tokenised with the run's tokenizer (ids are meaningless otherwise)."""
    if load_tokenizers(tokenizer_dir(data_dir)) != run_tokenizers:
        raise DataError(
            f"{data_dir} was prepared with another tokenizer than this run's; prepare it with "
            "`seqjax prepare --tokenizer RUN/tokenizer` (or train a new run)"
        )


def log_counts(data_dir: Path, spec: BatchSpec, log: Log) -> None:
    """What was skipped while preparing and what the length limits drop, as log lines."""
    train = read_manifest(data_dir)["splits"]["train"]
    if train["control_chars_replaced"]:
        log(f"warning: replaced {train['control_chars_replaced']} control character(s) in the "
            "training data")  # fmt: skip
    if train["skipped"]["empty_side"]:
        log(f"skipped {train['skipped']['empty_side']} training pairs with an empty side")
    _, kept, n_long = split_stats(data_dir, "train", spec)
    limits = f"{spec.max_src_len}/{spec.max_tgt_len} source/target tokens"
    log(f"train: {kept} pairs" + (f" ({n_long} longer than {limits} dropped)" if n_long else ""))


@dataclasses.dataclass
class ValidData:
    """Validation batches (loss) and text (BLEU) of a prepared directory, if it has them."""

    data_dir: Path
    spec: BatchSpec
    src: list[str]
    tgt: list[str]

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        for b in eval_batches(self.data_dir, self.spec):
            yield {k: b[k] for k in ("src", "tgt_in", "tgt_out")}

    def __len__(self) -> int:
        return split_stats(self.data_dir, "valid", self.spec)[1]


def valid_data(data_dir: Path, spec: BatchSpec) -> ValidData | None:
    if "valid" not in read_manifest(data_dir)["splits"]:
        return None
    return ValidData(data_dir, spec, *read_text(data_dir, "valid"))


class TrainBatches:
    """``next()`` gives ``(epoch, index, batch)`` like ``iterate_batches``; ``state()`` is what
    the checkpoint keeps so that a resume continues with exactly the next batch.

    The state holds Grain's iterator state, the worker count it belongs to and the position
    the iterator was started from (Grain's state counts from there). With another worker
    count the ``(epoch, index)`` position, kept in the checkpoint too, gives the same batches.
    """

    def __init__(
        self, data_dir: Path, spec: BatchSpec, *, workers: int, epoch: int, index: int,
        state: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        grain_state = None
        if state is not None and state.get("workers") == workers:
            (epoch, index), grain_state = state["from"], state["grain"]
        self._from, self.workers = [epoch, index], workers
        self._it = train_iterator(
            data_dir, spec, start_epoch=epoch, start_index=index, workers=workers,
            state=grain_state,
        )  # fmt: skip

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> tuple[int, int, dict[str, np.ndarray]]:
        b = next(self._it)
        return int(b.pop("epoch")), int(b.pop("index")), b

    def state(self) -> dict[str, Any]:
        return {"workers": self.workers, "from": self._from, "grain": self._it.get_state()}

    def close(self) -> None:
        self._it.close()
