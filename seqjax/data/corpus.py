"""Corpora shipped inside the package (``seqjax/data/bundled/<name>.tar.xz``).

An archive ``<name>.tar.xz`` holds ``<name>/{train,valid,test}.{src,tgt}`` and
``<name>/meta.json``; the language codes come from the name (``bible_en_fr``: en -> fr).
Archives are read directly (never extracted) and kept in memory once per process.
See ``bundled/PROVENANCE.md`` for where each corpus comes from and its licence.
"""

from __future__ import annotations

import functools
import json
import tarfile
from importlib import resources
from pathlib import Path
from typing import Any

from seqjax.data.reader import DataError, ParallelText, decode_lines

_SUFFIX = ".tar.xz"


def _bundled_dir() -> Any:
    return resources.files("seqjax.data") / "bundled"


def bundled_names() -> list[str]:
    """Names of the corpora shipped with the package, e.g. ``["bible_en_fr"]``."""
    return sorted(
        p.name[: -len(_SUFFIX)] for p in _bundled_dir().iterdir() if p.name.endswith(_SUFFIX)
    )


def _check_name(name: str) -> None:
    names = bundled_names()
    if name not in names:
        raise DataError(
            f"unknown bundled corpus {name!r}; choose one of: {', '.join(names) or '(none)'}"
        )


@functools.cache
def _archive_members(name: str) -> dict[str, bytes]:
    """All regular files of ``<name>.tar.xz`` as ``{"train.en": bytes, ...}`` (cached)."""
    _check_name(name)
    with (
        (_bundled_dir() / f"{name}{_SUFFIX}").open("rb") as f,
        tarfile.open(fileobj=f, mode="r:xz") as tar,
    ):
        out: dict[str, bytes] = {}
        for member in tar.getmembers():
            if member.isfile():
                fobj = tar.extractfile(member)
                assert fobj is not None  # regular files always have a payload
                out[member.name.rsplit("/", 1)[-1]] = fobj.read()
    return out


def _languages(name: str) -> tuple[str, str]:
    parts = name.split("_")
    if len(parts) < 3:
        raise DataError(f"bundled corpus {name!r}: name must end in _<src>_<tgt>, e.g. bible_en_fr")
    return parts[-2], parts[-1]


def bundled_splits(name: str = "bible_en_fr") -> list[str]:
    """Splits present in a bundled corpus, e.g. ``["test", "train", "valid"]``."""
    src_lang, _ = _languages(name)
    files = _archive_members(name)
    return sorted(f[: -len(src_lang) - 1] for f in files if f.endswith(f".{src_lang}"))


def bundled_meta(name: str = "bible_en_fr") -> dict[str, Any]:
    """The corpus' ``meta.json`` (sources, licences, cleaning counts, split sizes)."""
    files = _archive_members(name)
    if "meta.json" not in files:
        return {}
    return json.loads(files["meta.json"])


def load_bundled(name: str = "bible_en_fr", split: str = "train") -> ParallelText:
    """One split of a bundled corpus as ``ParallelText`` (fresh lists on every call)."""
    src_lang, tgt_lang = _languages(name)
    files = _archive_members(name)
    splits = bundled_splits(name)
    if split not in splits:
        raise DataError(
            f"bundled corpus {name!r} has no split {split!r}; choose one of: {', '.join(splits)}"
        )
    src_file, tgt_file = f"{split}.{src_lang}", f"{split}.{tgt_lang}"
    if tgt_file not in files:
        raise DataError(f"{name}{_SUFFIX}: {tgt_file} is missing; reinstall seqjax")
    src, n_src = decode_lines(files[src_file], f"{name}/{src_file}")
    tgt, n_tgt = decode_lines(files[tgt_file], f"{name}/{tgt_file}")
    return ParallelText(src, tgt, f"{name}/{src_file}", f"{name}/{tgt_file}", n_src + n_tgt)


def write_bundled(name: str, split: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write one split's two files, byte for byte, to ``out_dir``; return their paths.

    For tools that read files (``seqjax prepare``): the reader sees exactly the bytes
    ``load_bundled`` decodes. Existing identical files are left alone.
    """
    src_lang, tgt_lang = _languages(name)
    files = _archive_members(name)
    if split not in bundled_splits(name):
        raise DataError(f"bundled corpus {name!r} has no split {split!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for lang in (src_lang, tgt_lang):
        path = out_dir / f"{split}.{lang}"
        data = files[f"{split}.{lang}"]
        if not (path.is_file() and path.read_bytes() == data):
            path.write_bytes(data)
        paths.append(path)
    return paths[0], paths[1]
