"""``seqjax translate`` generation options (issue 14): ``--bad-words FILE``,
``--suppress-tokens``, ``--max-new-tokens``, ``--min-new-tokens``, ``--convention``,
``--forced-eos``: each reaches ``DecodeConfig`` and the decoder, with ``--help`` text and
one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import seqjax
from seqjax.app import translate as translate_mod
from seqjax.app.cli import build_parser, decode_config_from_args, main
from seqjax.app.translate import read_bad_words
from seqjax.config import DecodeConfig

FLAGS = [
    "--bad-words",
    "--suppress-tokens",
    "--begin-suppress-tokens",
    "--max-new-tokens",
    "--min-new-tokens",
    "--convention",
    "--forced-eos",
]


def test_help_describes_every_generation_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["translate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in FLAGS:
        assert flag in text, flag
    assert "one per line" in text and "HF suppress_tokens" in text


def test_flags_reach_decode_config():
    args = build_parser().parse_args(
        ["translate", "--checkpoint", "x", "--max-new-tokens", "7", "--min-new-tokens", "2",
         "--suppress-tokens", "5,6", "--begin-suppress-tokens", "3", "--convention", "hf",
         "--forced-eos", "--greedy"]
    )  # fmt: skip
    cfg = decode_config_from_args(args)
    assert (cfg.max_new_tokens, cfg.min_new_tokens) == (7, 2)
    assert cfg.suppress_tokens == (5, 6) and cfg.begin_suppress_tokens == (3,)
    assert cfg.convention == "hf" and cfg.forced_eos is True
    plain = decode_config_from_args(build_parser().parse_args(["translate", "--checkpoint", "x"]))
    assert plain == DecodeConfig()


def _run(tmp_path, trained, lines, *extra) -> list[str]:
    src = tmp_path / "in.txt"
    src.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    out = tmp_path / "out.txt"
    args = ["translate", "--checkpoint", str(trained), "--input", str(src), "--output", str(out)]
    assert main([*args, "--greedy", *extra]) == 0
    return out.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def decoded(monkeypatch):
    """Records ``(config, tokens, lengths)`` of every batch the CLI decodes (the 20-step
    test model emits pieces that decode to empty text, so tests look at ids)."""
    calls = []
    real = translate_mod._decode_batch

    def spy(model, params, src, key, numerics, config, max_len, *rest):
        res = real(model, params, src, key, numerics, config, max_len, *rest)
        calls.append((config, np.asarray(res.tokens[:, 0]), np.asarray(res.lengths[:, 0])))
        return res

    monkeypatch.setattr(translate_mod, "_decode_batch", spy)
    return calls


@pytest.fixture(scope="module")
def sentences(toy_corpus):
    return (toy_corpus / "train.src").read_text(encoding="utf-8").splitlines()[:6]


def _rows(calls):
    return [list(t[:n]) for _, tok, ln in calls for t, n in zip(tok, ln, strict=True)]


def _contains(row, word):
    return any(tuple(row[i : i + len(word)]) == word for i in range(len(row) - len(word) + 1))


def test_bad_words_file_is_tokenised_and_applied(tmp_path, trained, sentences, decoded):
    translator = seqjax.load(trained)
    phrases = sentences[0].split()[:2] + [" ".join(sentences[1].split()[:2])]
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(phrases) + "\n\n", encoding="utf-8")
    ids = read_bad_words(bad, translator.tgt_tokenizer, translator.config.eos_id)
    assert ids == tuple(tuple(r) for r in translator.tgt_tokenizer.encode(phrases))
    _run(tmp_path, trained, sentences, "--bad-words", str(bad), "--min-new-tokens", "6")
    assert decoded and all(cfg.bad_words == ids for cfg, _, _ in decoded)
    assert not any(_contains(row, w) for row in _rows(decoded) for w in ids)


def test_suppress_tokens_and_new_token_limits(tmp_path, trained, sentences, decoded):
    _run(tmp_path, trained, sentences, "--min-new-tokens", "6")
    rows = _rows(decoded)
    assert all(len(r) >= 7 or r[-1] != 3 for r in rows)  # no EOS before 6 new tokens
    top = int(np.bincount(np.concatenate(rows)).argmax())
    decoded.clear()
    _run(tmp_path, trained, sentences, "--min-new-tokens", "6", "--suppress-tokens", str(top))
    assert decoded[0][0].suppress_tokens == (top,)
    assert all(top not in r for r in _rows(decoded))
    decoded.clear()
    _run(tmp_path, trained, sentences, "--max-new-tokens", "3", "--min-new-tokens", "3")
    assert all(tok.shape[-1] == 3 for _, tok, _ in decoded)
    assert all(len(r) == 3 for r in _rows(decoded))


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--max-new-tokens", "100000"], "--max-new-tokens must be <= "),
        (["--min-new-tokens", "-1"], "min_new_tokens must be >= 0"),
    ],
)
def test_one_line_refusals(tmp_path, trained, one_line_error, extra, needle):
    src = tmp_path / "in.txt"
    src.write_text("a\n", encoding="utf-8")
    assert main(["translate", "--checkpoint", str(trained), "--input", str(src), *extra]) == 2
    one_line_error(needle)


def test_bad_token_ids_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["translate", "--checkpoint", "x", "--suppress-tokens", "a,b"])
    assert e.value.code == 2
    assert "expected comma-separated token ids" in capsys.readouterr().err


def test_bad_words_missing_file(tmp_path, trained, one_line_error):
    src = tmp_path / "in.txt"
    src.write_text("a\n", encoding="utf-8")
    missing = str(Path(tmp_path) / "nope.txt")
    args = ["translate", "--checkpoint", str(trained), "--input", str(src)]
    assert main([*args, "--bad-words", missing]) == 2
    one_line_error("nope.txt")
