"""Shared tiny fixtures: JAX compile time dominates small tests, so build things once."""

from __future__ import annotations

import os

import pytest

# Keep CPU tests deterministic and quiet regardless of the developer's environment.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# In-process CLI calls must not fill the user's compile cache (tests/test_sharding.py checks
# the cache in a subprocess with its own directory).
os.environ.setdefault("SEQJAX_NO_COMPILE_CACHE", "1")


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    """A small synthetic parallel corpus on disk: target = reversed, upper-cased source words."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta eps zeta eta theta iota kappa lambda mu".split()
    d = tmp_path_factory.mktemp("corpus")
    src, tgt = [], []
    for _ in range(300):
        n = int(rng.integers(2, 7))
        s = [words[i] for i in rng.integers(0, len(words), n)]
        src.append(" ".join(s))
        tgt.append(" ".join(w.upper() for w in reversed(s)))
    for name, lines in [("train.src", src[:260]), ("train.tgt", tgt[:260]),
                        ("valid.src", src[260:]), ("valid.tgt", tgt[260:])]:  # fmt: skip
        (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


# -- a tiny trained run directory, shared by the train/translate/evaluate/CLI/run_dir tests --

# Flags of the tiny CLI runs: a 44k-parameter Transformer, short buckets, small batches.
TINY = ["--preset", "tiny", "--vocab-size", "300", "--max-minutes", "0",
        "--set", "train.length_buckets=[8, 16, 32]", "--set", "train.batch_tokens=256",
        "--set", "train.log_every=5", "--set", "train.valid_bleu_sentences=8",
        "--set", "train.warmup_steps=5"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def train_cli(toy_corpus):
    """``train_cli(out, steps, *extra)``: ``seqjax train`` (in-process) on the toy corpus."""
    from seqjax.app.cli import main

    def run(out, steps, *extra):
        c = toy_corpus
        args = ["train", "--out", str(out), "--steps", str(steps), "--eval-every", "10", *TINY,
                "--src", str(c / "train.src"), "--tgt", str(c / "train.tgt"),
                "--valid-src", str(c / "valid.src"), "--valid-tgt", str(c / "valid.tgt"),
                *extra]  # fmt: skip
        assert main(args) == 0

    return run


@pytest.fixture(scope="session")
def trained(train_cli, tmp_path_factory):
    """A run directory trained for 20 steps (with validation); tests must not modify it."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    train_cli(run, 20)
    return run


@pytest.fixture
def one_line_error(capsys):
    """``one_line_error(*needles)``: stderr is one ``seqjax: error: ...`` line holding them."""

    def check(*needles: str) -> str:
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("seqjax: error: "), err
        for n in needles:
            assert n in err, err
        return err

    return check
