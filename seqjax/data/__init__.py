"""Data for seqjax: bundled corpora, text readers, SentencePiece tokenizers, bucketed batching."""

from seqjax.data.batching import (
    BatchPlan,
    TokenizedPairs,
    batch_shapes,
    bucket_for,
    epoch_batches,
    filter_long,
    host_plan,
    iterate_batches,
    make_batch,
    pad_batch,
    rows_for,
    tokenize_pairs,
)
from seqjax.data.corpus import bundled_meta, bundled_names, bundled_splits, load_bundled
from seqjax.data.reader import (
    DataError,
    ParallelText,
    decode_lines,
    drop_empty_pairs,
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
    "bucket_for",
    "bundled_meta",
    "bundled_names",
    "bundled_splits",
    "decode_lines",
    "drop_empty_pairs",
    "epoch_batches",
    "filter_long",
    "host_plan",
    "iterate_batches",
    "load_bundled",
    "load_tokenizers",
    "make_batch",
    "pad_batch",
    "read_lines",
    "read_lines_counted",
    "read_parallel",
    "rows_for",
    "tokenize_pairs",
    "train_tokenizer",
    "train_tokenizers",
]
