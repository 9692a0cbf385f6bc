"""Parity with transformers: imported Marian/BART weights compute what HF computes.

Small random models are built with transformers locally (no download), saved with
``save_pretrained``, loaded with ``seqjax.interop.hf.load_hf`` and compared with the
torch model: encoder outputs and teacher-forced logits to float tolerance, greedy and
beam outputs token for token against ``generate()``, on padded batches of different
source lengths with forced min/max lengths. Needs the ``hf`` extra
(``pip install torch==2.13.0 && pip install -e '.[hf]'``); skipped without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="parity tests need torch: pip install torch==2.13.0 && pip install -e '.[hf]'"
)
pytest.importorskip("transformers", reason="parity tests need transformers: pip install -e '.[hf]'")

import hf_models  # noqa: E402

from seqjax.decoding import beam_search, greedy, jitted  # noqa: E402
from seqjax.interop.hf import load_hf  # noqa: E402

MAX_NEW = 12
MIN_NEW = 3
BEAM = 4
SRC_LENGTHS = [9, 7, 4, 2, 6, 9]


@pytest.fixture(scope="module", params=sorted(hf_models.VARIANTS))
def pair(request, tmp_path_factory):
    """``(variant, torch model, seqjax model, params, src, mask)`` for one random model."""
    out = tmp_path_factory.mktemp(request.param)
    torch.set_num_threads(1)
    hf = hf_models.build(request.param, out)
    model, params, tokenizer = load_hf(out)
    assert tokenizer is None  # no tokenizer files: ids in/out
    c = model.config
    src = hf_models.sources(c.pad_id, c.eos_id, SRC_LENGTHS, 9, seed=len(request.param))
    return request.param, hf, model, params, src, src != c.pad_id


def _hf_generate(hf, src, mask, pad, **kw):
    """``generate()`` with the tests' lengths and PAD banned, unless ``kw`` replaces them
    (a ``None`` value leaves the setting unset)."""
    settings = dict(
        do_sample=False,
        max_new_tokens=MAX_NEW,
        min_new_tokens=MIN_NEW,
        bad_words_ids=[[pad]],  # seqjax never generates pad; HF 5 would
    )
    settings.update(kw)
    with torch.no_grad():
        return hf.generate(
            input_ids=torch.tensor(src),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            **{k: v for k, v in settings.items() if v is not None},
        )


def _hf_rows(sequences, eos: int, pad: int) -> list[list[int]]:
    """HF sequences (decoder start first, pad after EOS) as lists ending at EOS."""
    rows = []
    for r in sequences.tolist():
        row = []
        for t in r[1:]:
            row.append(t)
            if t == eos:
                break
        while row and row[-1] == pad:
            row.pop()
        rows.append(row)
    return rows


def _our_rows(tokens, lengths) -> list[list[int]]:
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [list(map(int, t[:n])) for t, n in zip(tokens, lengths, strict=True)]


def _prepare(model, params, src, mask, max_len=MAX_NEW):
    src, mask = jnp.asarray(src), jnp.asarray(mask)
    memory = model.encode(params, src, mask)
    return memory, model.init_cache(params, memory, mask, max_len)


def test_encoder_and_teacher_forced_logits_match(pair):
    _, hf, model, params, src, mask = pair
    c = model.config
    rng = np.random.default_rng(5)
    tgt = rng.integers(3, c.vocab_size - 2, (src.shape[0], 8))
    tgt[:, 0] = c.bos_id
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(src),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            decoder_input_ids=torch.tensor(tgt),
        )
    memory, _ = _prepare(model, params, src, mask)
    ref_memory = ref.encoder_last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(memory)[mask], ref_memory[mask], atol=1e-4, rtol=1e-4)
    logits = model.forward(params, jnp.asarray(src), jnp.asarray(mask), jnp.asarray(tgt))
    ref_logits = ref.logits.numpy()
    assert np.abs(ref_logits).max() > 5  # peaked: the comparison is not of near-zero numbers
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=2e-4, rtol=1e-4)
    # the cached incremental path (what every decoder runs) agrees too
    _, cache = _prepare(model, params, src, mask)
    step = jax.jit(model.step_fn(params))
    for t in range(tgt.shape[1]):
        step_logits, cache, _ = step(jnp.asarray(tgt[:, t]), jnp.int32(t), cache)
        np.testing.assert_allclose(np.asarray(step_logits), ref_logits[:, t], atol=2e-4, rtol=1e-4)


def test_greedy_is_token_identical_to_generate(pair):
    _, hf, model, params, src, mask = pair
    c = model.config
    ref = _hf_generate(hf, src, mask, c.pad_id, num_beams=1)
    _, cache = _prepare(model, params, src, mask)
    ours = jitted(greedy)(
        model.step_fn(params),
        cache,
        max_len=MAX_NEW,
        min_len=MIN_NEW,
        bos_id=c.bos_id,
        eos_id=c.eos_id,
        pad_id=c.pad_id,
    )
    expected = _hf_rows(ref, c.eos_id, c.pad_id)
    got = _our_rows(ours.tokens[:, 0], ours.lengths[:, 0])
    assert got == expected
    # the comparison means something: rows differ and respect the length limits
    assert len({tuple(r) for r in expected}) >= 2
    assert all(MIN_NEW < len(r) <= MAX_NEW for r in expected if r[-1] == c.eos_id)


@pytest.mark.parametrize("alpha", [1.0, 0.6, 0.0])
def test_beam_is_token_identical_to_generate(pair, alpha):
    """All 4 returned hypotheses per source, in order, with HF's length penalty.

    seqjax's beam stops only when no live beam can still win, which is HF's
    ``early_stopping="never"``; HF's default heuristic can stop sooner.
    """
    _, hf, model, params, src, mask = pair
    c = model.config
    ref = _hf_generate(
        hf,
        src,
        mask,
        c.pad_id,
        num_beams=BEAM,
        num_return_sequences=BEAM,
        length_penalty=alpha,
        early_stopping="never",
        output_scores=True,
        return_dict_in_generate=True,
    )
    _, cache = _prepare(model, params, src, mask)
    ours = jitted(beam_search)(
        model.step_fn(params),
        cache,
        beam_size=BEAM,
        n_best=BEAM,
        alpha=alpha,
        length_penalty="hf",
        max_len=MAX_NEW,
        min_len=MIN_NEW,
        bos_id=c.bos_id,
        eos_id=c.eos_id,
        pad_id=c.pad_id,
    )
    B = src.shape[0]
    expected = _hf_rows(ref.sequences, c.eos_id, c.pad_id)
    got = _our_rows(
        np.asarray(ours.tokens).reshape(B * BEAM, MAX_NEW), np.asarray(ours.lengths).reshape(-1)
    )
    assert got == expected
    np.testing.assert_allclose(
        np.asarray(ours.scores).reshape(-1), ref.sequences_scores.numpy(), atol=1e-4, rtol=1e-4
    )
    lengths = {len(r) for r in expected}
    assert len(lengths) >= 2  # hypotheses of different lengths competed
    assert any(r[-1] == c.eos_id for r in expected)


# Every generation setting hf_decode_config accepts, against generate() with a value
# that changes HF's output ("EOS" stands for the model's EOS id).
SETTINGS = [
    ("forced_eos_token_id", "EOS"),
    ("repetition_penalty", 1.3),
    ("repetition_penalty", 3.0),
    ("no_repeat_ngram_size", 1),
    ("no_repeat_ngram_size", 2),
]


@pytest.mark.parametrize("beams", [1, BEAM])
@pytest.mark.parametrize("name, value", SETTINGS)
def test_every_accepted_setting_matches_generate(pair, name, value, beams):
    """Decoding through ``hf_decode_config`` reproduces ``generate()`` per setting:
    tokens of every returned hypothesis and, for beam search, HF's sequence scores."""
    from seqjax.decoding import decode
    from seqjax.interop.hf import hf_decode_config

    _, hf, model, params, src, mask = pair
    c = model.config
    value = c.eos_id if value == "EOS" else value
    beam_kw = {}
    if beams > 1:
        beam_kw = dict(num_return_sequences=beams, early_stopping="never")
    settings = dict(num_beams=beams, max_new_tokens=MAX_NEW, min_new_tokens=MIN_NEW, **beam_kw)
    scored = dict(output_scores=True, return_dict_in_generate=True)
    ref = _hf_generate(
        hf, src, mask, c.pad_id, num_beams=beams, **beam_kw, **scored, **{name: value}
    )
    plain = _hf_generate(hf, src, mask, c.pad_id, num_beams=beams, **beam_kw, **scored)
    expected = _hf_rows(ref.sequences, c.eos_id, c.pad_id)
    assert expected != _hf_rows(plain.sequences, c.eos_id, c.pad_id)  # the setting matters
    cfg = hf_decode_config({**settings, name: value, "bad_words_ids": [[c.pad_id]]}, c)
    _, cache = _prepare(model, params, src, mask)
    ids = dict(bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)
    ours = decode(model.step, cache, cfg, params=params, **ids)
    got = _our_rows(
        np.asarray(ours.tokens).reshape(-1, MAX_NEW), np.asarray(ours.lengths).reshape(-1)
    )
    assert got == expected
    if beams > 1:
        np.testing.assert_allclose(
            np.asarray(ours.scores).reshape(-1), ref.sequences_scores.numpy(), atol=1e-4, rtol=1e-4
        )


# The settings hf_decode_config maps since issue 14's leftovers, each against generate()
# with a value that changes HF's output: token bans whose tokens are taken from HF's own
# output without them, and lengths counted after a decoder prompt (HF's
# ``decoder_input_ids``) or left at HF's defaults.
PROMPT = [7, 11]  # forced after the decoder start token (no EOS/PAD in either model)
NEW_SETTINGS = {
    "bad_words_ids": ({"bad_words_ids": "FROM_OUTPUT"}, None),
    "suppress_tokens": ({"suppress_tokens": "FROM_OUTPUT"}, None),
    "begin_suppress_tokens": ({"begin_suppress_tokens": "FROM_OUTPUT"}, None),
    "max_new_tokens": ({"max_new_tokens": 5, "min_new_tokens": 2}, PROMPT),
    "min_new_tokens": ({"min_new_tokens": 8}, None),
    "no_length_settings": ({"max_new_tokens": None, "min_new_tokens": None}, None),
}


def _from_output(name: str, plain: list[list[int]], eos: int) -> list:
    """A value of ``name`` that bans tokens HF emitted without it."""
    counts: dict[int, int] = {}
    for row in plain:
        for t in row:
            counts[t] = counts.get(t, 0) + (t != eos)
    common = sorted(counts, key=lambda t: -counts[t])[:2]
    if name == "suppress_tokens":
        return common
    if name == "begin_suppress_tokens":
        return sorted({row[0] for row in plain})
    bigram = next(row[1:3] for row in plain if len(row) >= 4)  # no EOS inside
    return [[common[0]], bigram, [eos]]  # HF drops the lone EOS, and so must seqjax


# The default suite runs these 24 cases on the two opus-mt-like and BART-like layouts; the
# other layouts are `slow` (all 48 take ~3 min on 2 cores).
_FAST = ("marian", "bart")


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
@pytest.mark.parametrize(
    "pair",
    [
        v if v in _FAST else pytest.param(v, marks=pytest.mark.slow)
        for v in sorted(hf_models.VARIANTS)
    ],
    indirect=True,
)
@pytest.mark.parametrize("beams", [1, BEAM])
@pytest.mark.parametrize("case", sorted(NEW_SETTINGS))
def test_token_bans_and_lengths_match_generate(pair, case, beams):
    """``hf_decode_config`` of ``bad_words_ids``, ``suppress_tokens``,
    ``begin_suppress_tokens``, ``max_new_tokens`` / ``min_new_tokens`` (after a prompt)
    and HF's default lengths reproduces ``generate()``: every returned hypothesis token
    for token and, for beam search, HF's sequence scores."""
    from seqjax.decoding import decode
    from seqjax.interop.hf import hf_decode_config

    _, hf, model, params, src, mask = pair
    c = model.config
    settings, prompt = NEW_SETTINGS[case]
    beam_kw = {}
    if beams > 1:
        beam_kw = dict(num_return_sequences=beams, early_stopping="never")
    hf_kw = dict(num_beams=beams, output_scores=True, return_dict_in_generate=True, **beam_kw)
    if prompt is not None:
        start = np.full((src.shape[0], 1), c.bos_id)
        hf_kw["decoder_input_ids"] = torch.tensor(np.concatenate([start, [PROMPT] * len(src)], 1))
    plain = _hf_generate(hf, src, mask, c.pad_id, **hf_kw)
    plain_rows = _hf_rows(plain.sequences, c.eos_id, c.pad_id)
    offset = 0 if prompt is None else len(prompt)
    settings = {
        k: _from_output(k, [r[offset:] for r in plain_rows], c.eos_id) if v == "FROM_OUTPUT" else v
        for k, v in settings.items()
    }
    ref = _hf_generate(hf, src, mask, c.pad_id, **hf_kw, **settings)
    expected = _hf_rows(ref.sequences, c.eos_id, c.pad_id)
    assert expected != plain_rows  # the setting changes HF's output

    lengths = dict(max_new_tokens=MAX_NEW, min_new_tokens=MIN_NEW)
    lengths.update({k: v for k, v in settings.items() if k in lengths})
    bans = {k: v for k, v in settings.items() if k not in lengths}
    bans["bad_words_ids"] = [[c.pad_id], *bans.get("bad_words_ids", [])]
    given = {k: v for k, v in lengths.items() if v is not None}
    cfg = hf_decode_config(dict(num_beams=beams, **beam_kw, **given, **bans), c)
    _, cache = _prepare(model, params, src, mask, max_len=cfg.max_len + offset)
    ids = dict(bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)
    prefix = None if prompt is None else jnp.asarray([prompt] * len(src), jnp.int32)
    ours = decode(model.step, cache, cfg, params=params, prefix=prefix, **ids)
    L = ours.tokens.shape[-1]
    got = _our_rows(np.asarray(ours.tokens).reshape(-1, L), np.asarray(ours.lengths).reshape(-1))
    assert got == expected
    if beams > 1:
        np.testing.assert_allclose(
            np.asarray(ours.scores).reshape(-1), ref.sequences_scores.numpy(), atol=1e-4, rtol=1e-4
        )
