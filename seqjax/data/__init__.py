"""Data for seqjax: bundled corpora, text readers, SentencePiece tokenizers, bucketed batching.

Prepared datasets (``seqjax.data.prepare``, ``seqjax.data.pipeline``) are imported from their
modules, so that importing ``seqjax.data`` does not pull in Grain.
"""

from seqjax.data.batching import (
    BatchPlan,
    TokenizedPairs,
    batch_shapes,
    batches_per_epoch,
    bucket_for,
    epoch_batches,
    filter_long,
    host_plan,
    iterate_batches,
    make_batch,
    needed_lengths,
    pad_batch,
    plan_epoch,
    rows_for,
    tokenize_pairs,
)
from seqjax.data.corpus import (
    bundled_meta,
    bundled_names,
    bundled_splits,
    load_bundled,
    write_bundled,
)
from seqjax.data.reader import (
    DataError,
    ParallelText,
    decode_lines,
    drop_empty_pairs,
    iter_lines,
    iter_parallel,
    read_lines,
    read_lines_counted,
    read_parallel,
)
from seqjax.data.tokenizer import Tokenizer, load_tokenizers, train_tokenizer, train_tokenizers

__all__ = [
    "BatchPlan",
    "DataError",
    "ParallelText",
    "TokenizedPairs",
    "Tokenizer",
    "batch_shapes",
    "batches_per_epoch",
    "bucket_for",
    "bundled_meta",
    "bundled_names",
    "bundled_splits",
    "decode_lines",
    "drop_empty_pairs",
    "iter_lines",
    "iter_parallel",
    "epoch_batches",
    "filter_long",
    "host_plan",
    "iterate_batches",
    "load_bundled",
    "load_tokenizers",
    "make_batch",
    "needed_lengths",
    "pad_batch",
    "plan_epoch",
    "read_lines",
    "read_lines_counted",
    "read_parallel",
    "rows_for",
    "tokenize_pairs",
    "train_tokenizer",
    "train_tokenizers",
    "write_bundled",
]
