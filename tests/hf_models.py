"""Small randomly initialised HuggingFace Marian/BART models for the parity tests.

Needs torch and transformers (the ``hf`` extra); nothing is downloaded. The weights are
made "peaky" and varied on purpose: random tiny models otherwise emit one token over
and over and near-uniform logits make ties, so equal outputs would prove little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 96
MARIAN_PAD = VOCAB - 1  # opus-mt layout: </s> = 0, <unk> = 1, <pad> = last id = decoder start

VARIANTS: dict[str, dict[str, Any]] = {
    # tied embeddings, swish, scaled embeddings (the opus-mt layout)
    "marian": dict(kind="marian", activation_function="swish", scale_embedding=True, seed=0),
    # separate source/target tables and an untied output projection, relu
    "marian_untied": dict(
        kind="marian",
        activation_function="relu",
        scale_embedding=False,
        share_encoder_decoder_embeddings=False,
        tie_word_embeddings=False,
        seed=1,
    ),
    "bart": dict(kind="bart", activation_function="gelu", scale_embedding=False, seed=5),
    "bart_scaled": dict(kind="bart", activation_function="gelu_new", scale_embedding=True, seed=3),
}


def build(variant: str, out_dir: Path) -> Any:
    """Build, perturb and ``save_pretrained`` one variant; returns the torch model."""
    import torch
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
    )

    spec = dict(VARIANTS[variant])
    kind, seed = spec.pop("kind"), spec.pop("seed")
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        init_std=0.2,  # larger than HF's 0.02: outputs then depend on the source
        forced_eos_token_id=None,
        no_repeat_ngram_size=0,
        **spec,
    )
    if kind == "marian":
        cfg = MarianConfig(
            **common, pad_token_id=MARIAN_PAD, decoder_start_token_id=MARIAN_PAD, eos_token_id=0
        )
        model = MarianMTModel(cfg)
    else:
        cfg = BartConfig(
            **common,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            forced_bos_token_id=None,
        )
        model = BartForConditionalGeneration(cfg)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layernorm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)  # non-trivial biases and LNs
        for table in {id(t): t for t in _token_tables(model)}.values():
            table.mul_(5.0)  # peaked output distributions
        model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=gen))
        _calibrate_eos(model, cfg)
    model.save_pretrained(out_dir)
    return model


def _token_tables(model: Any) -> list:
    tables = [model.model.encoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight]
    return tables + [model.lm_head.weight]


def _calibrate_eos(model: Any, cfg: Any) -> None:
    """Raise the EOS bias so EOS is the argmax at about one position in five of the
    model's own greedy outputs.

    Then hypotheses end at different lengths, and length penalties and min/max lengths
    matter in the comparison.
    """
    import torch

    rng = np.random.default_rng(0)
    src = torch.tensor(rng.integers(3, VOCAB - 2, (16, 9)))
    tgt = model.generate(
        input_ids=src,
        do_sample=False,
        num_beams=1,
        max_new_tokens=10,
        min_new_tokens=10,
        bad_words_ids=[[cfg.pad_token_id]],
    )
    logits = model(input_ids=src, decoder_input_ids=tgt).logits
    gap = logits.max(-1).values - logits[..., cfg.eos_token_id]
    # the first positions are skipped: the tests ban EOS there (min length)
    model.final_logits_bias[0, cfg.eos_token_id] += torch.quantile(gap[:, 3:].flatten(), 0.2)


def sources(pad: int, eos: int, lengths: list[int], width: int, seed: int) -> np.ndarray:
    """``[B, width]`` random sources ending in EOS, padded to different lengths."""
    rng = np.random.default_rng(seed)
    src = rng.integers(3, VOCAB - 2, (len(lengths), width))
    for i, n in enumerate(lengths):
        src[i, n - 1] = eos
        src[i, n:] = pad
    return src
