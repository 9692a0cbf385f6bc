"""Lowered decoders kept on disk (``jax.export``), so that a new process skips tracing.

JAX's persistent compile cache (``seqjax.sharding.enable_compile_cache``) keeps compiled
programs, but to find one a new process must first trace and lower the program again: for
``seqjax translate`` with the small model that is ~0.5 s of a ~3 s start-up (issue 19).
Here the lowered program itself is serialised with ``jax.export`` into a folder of that
cache, under a key of everything it depends on: the caller's description of the static
arguments, the shapes, dtypes and tree of the traced ones, the JAX configuration that
changes lowering, the JAX version, seqjax's source and the device kind. A later process
deserialises it (milliseconds), lowers the call (short) and gets the compiled program from
the compile cache as before. The program is the same, so are the results (tests): exactly
with XLA's default matmul kernels; where a small batch compiles with XLA's own kernels
(``seqjax.decoding.compile_options``) the same tokens, and scores equal to float rounding
(XLA may round the deserialised module's dots differently).

Only where a compile cache is on (the ``seqjax`` commands; not in the test suite unless a
test turns it on); anything that cannot be exported (host callbacks, or ``flatbuffers``
missing) takes the ordinary ``jax.jit`` path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from seqjax import sharding
from seqjax.app import run_dir
from seqjax.decoding import DecodeResult
from seqjax.models.quantize import QuantizedArray

EXPORT_DIR = "seqjax-exported"  # inside JAX's compile cache directory

# Exported programs loaded in this process, by key: jitted, so repeated calls dispatch fast.
# None: the program could not be exported (not tried again in this process).
_LOADED: dict[str, Callable[..., Any] | None] = {}

# Custom pytree nodes in a program's inputs or outputs need a name to be serialised.
jax.export.register_namedtuple_serialization(DecodeResult, serialized_name="seqjax.DecodeResult")
jax.export.register_pytree_node_serialization(
    QuantizedArray,  # int8 weights (`--quantize`): the static field is ``act``, a str
    serialized_name="seqjax.QuantizedArray.v2",
    serialize_auxdata=lambda aux: json.dumps(list(aux)).encode(),
    deserialize_auxdata=lambda data: tuple(json.loads(data)),
)


def cache_dir() -> Path | None:
    """Where exported programs live: a folder of JAX's compile cache, if one is on."""
    root = sharding.compile_cache_dir()
    return None if root is None else root / EXPORT_DIR


def cache_key(static: str, args: tuple[Any, ...]) -> str:
    """Key of ``jax.jit(fn)(*args)`` for an ``fn`` whose closure ``static`` describes."""
    leaves, tree = jax.tree.flatten(args)
    avals = [(tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves]
    device = jax.devices()[0]
    parts = [
        static,
        str(tree),
        repr(avals),
        jax.__version__,
        run_dir.dist_version("jaxlib"),
        run_dir.source_digest(),
        device.platform,
        getattr(device, "device_kind", ""),
        repr(
            [
                jax.config.jax_enable_x64,
                jax.config.jax_default_matmul_precision,
                jax.config.jax_default_prng_impl,
                jax.config.jax_numpy_rank_promotion,
            ]
        ),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def exported(
    fn: Callable[..., Any],
    static: str,
    args: tuple[Any, ...],
    compiler_options: dict[str, str] | None = None,
) -> Callable | None:
    """A jitted callable equal to ``jax.jit(fn)`` at ``args``' shapes, or ``None``.

    ``compiler_options``: XLA options for compiling the loaded program (as ``jax.jit``'s;
    the lowered program on disk does not depend on them, so it is shared).

    ``static`` must name everything ``fn`` closes over (model and decode configs, lengths):
    two calls with the same ``static`` and argument shapes share one program. ``None``
    (the caller then uses its own ``jax.jit``) without a compile cache, for programs JAX
    cannot export, and where serialisation is unavailable. The first process to need a
    program traces it once, as before, and writes it; a damaged file is written again.
    """
    root = cache_dir()
    if root is None:
        return None
    key = cache_key(static, args)
    loaded_key = f"{key} {sorted((compiler_options or {}).items())}"
    if loaded_key in _LOADED:
        return _LOADED[loaded_key]
    path = root / f"{key}.jaxexport"
    exp = None
    try:
        exp = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # absent, torn by a crash or from an incompatible writer: export again
        exp = None
    if exp is None:
        try:
            exp = jax.export.export(jax.jit(fn))(*args)
            data = exp.serialize()
        except Exception:  # e.g. host callbacks, or no flatbuffers: the ordinary path
            _LOADED[loaded_key] = None
            return None
        try:
            root.mkdir(parents=True, exist_ok=True)
            run_dir.write_atomic(path, bytes(data))
        except OSError:
            pass  # a read-only cache: this process still uses the program
    program = jax.jit(exp.call, compiler_options=compiler_options or None)
    call = _LOADED[loaded_key] = _without_lapack_setup(program)
    return call


def _without_lapack_setup(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call``, whose lowering skips JAX's LAPACK set-up on CPU.

    Lowering any exported call for CPU first registers LAPACK's kernels, which imports
    ``scipy.linalg`` (~0.3 s, more than the trace this module saves on the small model).
    The decoders call no LAPACK routine (``tests/test_export_cache.py`` checks their
    programs), so the set-up is skipped while this call lowers; JAX versions without that
    hook lower as usual.
    """
    try:
        from jax._src.export import _export
    except ImportError:
        return call
    if not callable(getattr(_export, "_ensure_backends_initialized", None)):
        return call

    lowered = []

    def run(*args: Any) -> Any:
        if lowered:  # the program's shapes are fixed: it lowers once
            return call(*args)
        original = _export._ensure_backends_initialized
        _export._ensure_backends_initialized = lambda platforms: None
        try:
            out = call(*args)
        finally:
            _export._ensure_backends_initialized = original
        lowered.append(True)
        return out

    return run
