"""Low-precision weights: per-output-channel int8, or bfloat16, for a params pytree.

``quantize_params(params, mode)`` returns the same pytree with the big matrices replaced by
``QuantizedArray`` leaves (``q`` int8, or bfloat16, of the original shape; ``scale`` float32
with the contracted axes kept as size 1); everything else stays float32. The stored values
are what the decoders receive as traced weights: the conversion happens inside the compiled
program,

- in the Transformer (decode step, encoder, ``init_cache``, ``forward``: its modules take
  ``QuantizedArray`` leaves, ``EncoderDecoder.takes_int8``), inside each matmul. Three modes
  (``QUANT_MODES``):

  - ``int8`` (weight-only): ``x @ w`` is ``dot_general(x, q) * scale`` (the scale is per
    output column, so it factors out of the sum). Exactly the float model whose weights
    are ``dequantize(q)``, but no faster on XLA:CPU, which converts ``q`` to a float
    temporary before its float GEMM.
  - ``w8a8`` (int8 weights and activations, as CTranslate2's ``int8`` and PyTorch's
    dynamic quantisation): each row of ``x`` is quantised on the fly with its own scale
    (``max|x_row| / 127``), the dot runs int8 x int8 -> int32 (XLA's integer GEMMs, VNNI/AMX
    where the CPU has them), and ``acc * row_scale * col_scale`` restores the float result.
    Adds an activation rounding error of ``max|x_row| / 254`` per element. The int8
    weights are stored output-major (below): on an AVX2 Zen 2 EPYC (no VNNI) w8a8
    transformer-base decoded 1.04-1.20x faster than from ``[K, N]`` at 1-64 rows, the same
    tokens (``experiments/bench_w8a8_layout.py``), and on an AVX-512 Zen 4 transposed int8
    products ran as fast as stored at 16-64 rows.
  - ``bf16`` (not int8: bfloat16 weights, half float32's bytes): each weight is rounded to
    bfloat16 (8 significant bits, relative error <= 2**-8) and ``scale`` is all ones; ``x @
    w`` rounds ``x`` to bfloat16 as well and runs a bfloat16 x bfloat16 -> float32 dot,
    everything else (LayerNorm, attention, the caches, softmax) stays float32. For CPUs
    with bfloat16 dot instructions (AVX512_BF16, AMX): on a Zen 4 EPYC transformer-base
    decodes 1.11-1.40x faster than in float32 at 1-256 rows per step
    (``experiments/results/bench_vs_peers_zen4_bf16_nt.md``). The weights are stored
    output-major (``QuantizedArray``), and a one-row dot is padded to four rows, as
    XLA:CPU's bfloat16 GEMV is ~5x slower than its 4-row GEMM.

  The embedding lookup converts only the looked-up rows (all modes);

  and one layout that is not a quantisation: ``output_major(params)`` keeps every value
  in float32 but stores the same matrices output-major (act ``"f32"``: a float32 dot
  against ``q [N, K]``, unit scales). ``Translator`` uses such a copy for decoders of one
  row per step on AVX2 CPUs (``compile_options.one_row_output_major``), where XLA's GEMV
  reads weights stored that way faster;
- in the RNN (every entry point, so ``w8a8`` runs as ``int8`` there, and ``bf16`` as float32
  arithmetic on the rounded weights) ``dequantize`` at
  the start of the jitted function (the model interface does it), so a float copy exists
  only as a temporary of that program.

Which leaves, and why (``quantize_rule``):

- ``kernel`` of every Dense layer (attention q/k/v/out, FFN, RNN bridge/combine,
  ``logits_dense``) and the LSTM/attention matrices ``w_x``, ``w_h``, ``w_k``, ``w_q``:
  they are almost all of the bytes a decode step reads, and a matmul is linear in the
  weight, so one scale per output channel comes out of the sum exactly. Attention output
  projections (``out``, ``self_out``, ``cross_out``: ``[H, Dh, D]``) contract two axes.
- ``embedding`` of ``src_embed`` / ``tgt_embed`` (``[V, D]``): one scale per vocabulary
  row, which serves both the lookup (a row is dequantised with its own scale) and the
  tied output projection (row ``v`` is output channel ``v`` of ``x @ E^T``).
- kept in float32: biases, LayerNorm, the Bahdanau vector ``v`` and learned position
  tables (small, added rather than multiplied, and where int8 error would shift every
  token alike), and any matrix under ``min_size`` elements (no saving worth the error).

Error bound: ``|w - dequantize(q)| <= scale / 2 = max|w_channel| / 254`` elementwise
(int8); ``<= |w| * 2**-8`` (bf16).

>>> import numpy as np
>>> w = np.array([[1.0, -0.5], [0.25, 2.0]], np.float32)
>>> qa = quantize_array(w, contract_axes=(0,))
>>> qa.q.dtype, qa.scale.shape
(dtype('int8'), (1, 2))
>>> bool(np.all(np.abs(np.asarray(qa.dequantize()) - w) <= np.asarray(qa.scale) / 2))
True
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

QUANT_MODES = ("int8", "w8a8", "bf16")
_ACTS = {"int8": "float", "w8a8": "int8", "bf16": "bf16"}  # mode -> QuantizedArray.act
_OUT_MAJOR_ACTS = ("int8", "bf16", "f32")  # acts whose q is stored output-major
_FLOAT_Q = {"bf16": jnp.bfloat16, "f32": jnp.float32}  # acts whose q is not int8
# XLA:CPU's bfloat16 dot on one row (a GEMV) ran ~5x slower than on four (its GEMM kernels)
# on a Zen 4: a one-row bf16 product is padded to this many rows (zeros, sliced off after).
_BF16_MIN_ROWS = 4
_MATRIX_NAMES = ("kernel", "w_x", "w_h", "w_k", "w_q")
_EMBED_MODULES = ("src_embed", "tgt_embed")
_HEAD_SPLIT_OUT = ("out", "self_out", "cross_out")  # kernels [H, Dh, D]


def _split_axes(scale_shape: Sequence[int]) -> tuple[list[int], list[int]]:
    """(output axes, other axes) of an array whose scale has ``scale_shape``: where the
    scale's size is not 1 / is 1. A bf16 ``q`` stores them in that order (output-major)."""
    out = [i for i, d in enumerate(scale_shape) if d != 1]
    return out, [i for i in range(len(scale_shape)) if i not in out]


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """An int8 (or bfloat16) array with float scales: ``value = q * scale`` (``scale``
    broadcasts).

    ``scale`` has ``q``'s rank, size 1 on the contracted (input) axes. Behaves like the
    float array it stands for where the decode step needs it: ``shape``, ``dtype`` (the
    scale's), ``astype`` (of the scale), ``reshape(rows, -1)``, ``.T``, ``x @ w`` and
    row slicing; anything else should ``dequantize()`` first. ``act`` (static, part of
    the pytree's structure): ``"float"`` multiplies ``x @ w`` in ``x``'s dtype,
    ``"int8"`` quantises ``x`` per row first (the ``w8a8`` mode), ``"bf16"`` rounds ``x``
    to bfloat16 for a bfloat16 dot with float32 sums (the ``bf16`` mode: ``q`` is bfloat16,
    ``scale`` all ones), ``"f32"`` is the float32 array itself stored output-major
    (``output_major``: ``q`` float32, ``scale`` all ones).

    Storage: weight-only int8 ``q`` (act ``"float"``) has the array's shape. ``w8a8``
    (act ``"int8"``), bfloat16 and ``"f32"`` ``q`` are stored **output-major**:
    the axes where ``scale`` is not 1 (the output channels) first, then the others (the
    contracted ones), each group in its original order, so a ``[K, N]`` kernel is stored
    ``[N, K]`` and a ``[V, D]`` embedding table as it is. XLA:CPU's bfloat16 products read
    weights stored that way (both operands contracting their minor axis) 1.1-1.6x faster
    than ``[K, N]`` on 1-64 rows (a Zen 4); ``shape``, ``reshape``, ``.T``, slicing,
    lookups and ``dequantize`` keep the array's own (logical) axes.
    """

    q: jax.Array  # act "float": the array's shape; "int8", "bf16", "f32": output-major
    scale: jax.Array  # float, the array's rank, 1 on the contracted axes
    act: str = "float"  # static: "float" | "int8" | "bf16" | "f32" (activations of x @ w)

    @property
    def _out_major(self) -> bool:
        return self.act in _OUT_MAJOR_ACTS

    @property
    def shape(self) -> tuple[int, ...]:
        if not self._out_major:
            return tuple(self.q.shape)
        out, rest = _split_axes(self.scale.shape)
        dims = dict(zip(out + rest, self.q.shape, strict=True))
        return tuple(dims[i] for i in range(len(dims)))

    @property
    def ndim(self) -> int:
        return len(self.q.shape)

    @property
    def dtype(self) -> jnp.dtype:
        return self.scale.dtype

    def dequantize(self) -> jax.Array:
        q = self.q
        if self._out_major:  # back to the logical axis order
            out, rest = _split_axes(self.scale.shape)
            q = jnp.transpose(q, np.argsort(out + rest))
        return q.astype(self.scale.dtype) * self.scale

    def astype(self, dtype: Any) -> QuantizedArray:
        return QuantizedArray(self.q, self.scale.astype(dtype), self.act)

    def reshape(self, rows: int, cols: int = -1) -> QuantizedArray:
        """``[rows, cols]``: the leading size-1 scale axes become the rows (input axes)."""
        lead = 0
        while lead < self.ndim and self.scale.shape[lead] == 1:
            lead += 1
        if math.prod(self.shape[:lead]) != rows:
            raise ValueError(f"reshape: rows must be {math.prod(self.shape[:lead])}, got {rows}")
        scale = self.scale.reshape(1, -1)
        if self._out_major:  # outputs, then the (leading) contracted axes: [cols, rows]
            return QuantizedArray(self.q.reshape(-1, rows), scale, self.act)
        return QuantizedArray(self.q.reshape(rows, cols), scale, self.act)

    @property
    def T(self) -> QuantizedArray:  # noqa: N802 (the array attribute's name)
        if self._out_major:
            if self.ndim != 2:
                raise ValueError("QuantizedArray.T: output-major arrays transpose as matrices only")
            return QuantizedArray(self.q, self.scale.T, self.act)  # same output-major bytes
        return QuantizedArray(self.q.T, self.scale.T, self.act)

    def __getitem__(self, index: Any) -> QuantizedArray:
        if self.scale.shape[0] != 1:
            raise ValueError("QuantizedArray: only input rows (scale size 1) can be sliced")
        if self._out_major:  # the logical axis 0 is the first of the stored other axes
            if not isinstance(index, slice):
                raise ValueError("QuantizedArray: output-major arrays take slices of rows only")
            n_out = len(_split_axes(self.scale.shape)[0])
            return QuantizedArray(self.q[(slice(None),) * n_out + (index,)], self.scale, self.act)
        return QuantizedArray(self.q[index], self.scale, self.act)

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        """``x [..., K] @ w [K, N]``: int8 operand into the dot, per-column scale after."""
        if self.ndim != 2 or self.scale.shape[0] != 1:
            return x @ self.dequantize()  # per-row scales do not factor out of the sum
        if self.act == "int8":
            return self._w8a8_matmul(x)
        if self._out_major:
            return self._out_major_matmul(x)  # bf16, f32
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        y = lax.dot_general(x, self.q, dims, preferred_element_type=x.dtype)
        return y * self.scale[0].astype(x.dtype)

    def _w8a8_matmul(self, x: jax.Array) -> jax.Array:
        """``x @ w`` with ``x`` quantised per row: int8 x int8 -> int32 against the
        output-major ``q [N, K]``, both scales after."""
        lead = x.shape[:-1]
        x_MxK = x.reshape(-1, x.shape[-1])
        if x_MxK.shape[0] == 1:
            # XLA:CPU runs a one-row int8 dot (a GEMV) in a slow generic loop, 3-20x slower
            # than a two-row one (its GEMM kernels); the zero row costs next to nothing.
            x_MxK = jnp.concatenate([x_MxK, jnp.zeros_like(x_MxK)])
        xq, x_scale = quantize_rows(x_MxK)
        dims = (((1,), (1 if self._out_major else 0,)), ((), ()))
        acc = lax.dot_general(xq, self.q, dims, preferred_element_type=jnp.int32)
        y = acc.astype(jnp.float32) * x_scale * self.scale[0].astype(jnp.float32)
        return y[: math.prod(lead)].reshape(*lead, -1).astype(x.dtype)

    def _out_major_matmul(self, x: jax.Array) -> jax.Array:
        """``x @ w`` against the output-major ``q [N, K]`` (scale is 1), float32 sums:
        ``"bf16"`` rounds ``x`` to bfloat16 (a bf16 x bf16 dot), ``"f32"`` takes it as
        float32."""
        lead = x.shape[:-1]
        x_MxK = x.reshape(-1, x.shape[-1]).astype(self.q.dtype)
        rows = x_MxK.shape[0]
        if rows == 1 and self.act == "bf16":
            x_MxK = jnp.pad(x_MxK, ((0, _BF16_MIN_ROWS - 1), (0, 0)))
        dims = (((1,), (1,)), ((), ()))
        y = lax.dot_general(x_MxK, self.q, dims, preferred_element_type=jnp.float32)
        return y[:rows].reshape(*lead, -1).astype(x.dtype)


jax.tree_util.register_dataclass(QuantizedArray, data_fields=["q", "scale"], meta_fields=["act"])


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 per row of ``x [..., K]`` (traced): ``(xq int8 [..., K], scale
    float32 [..., 1])`` with ``x ~= xq * scale``; an all-zero row gets scale 1.

    >>> xq, s = quantize_rows(jnp.array([[0.5, -1.0], [0.0, 0.0]]))
    >>> xq.tolist(), s[:, 0].tolist()
    ([[64, -127], [0, 0]], [0.007874015718698502, 1.0])
    """
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=-1, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    inverse = jnp.where(amax > 0, 127.0 / amax, 1.0)  # a multiply per element, not a divide
    return jnp.clip(jnp.round(xf * inverse), -127, 127).astype(jnp.int8), scale


def quantize_array(w: Any, contract_axes: Sequence[int], act: str = "float") -> QuantizedArray:
    """Symmetric int8 with one scale per slice over ``contract_axes`` (NumPy, on the host);
    ``act`` as ``QuantizedArray.act``. ``act="bf16"``: ``w`` rounded to bfloat16 (to
    nearest, ties to even) with unit scales of the same shape; ``act="f32"``: ``w`` as it
    is (float32), output-major, unit scales.

    >>> qa = quantize_array(np.array([[1.0, 3.14159]], np.float32), (0,), act="bf16")
    >>> str(qa.q.dtype), qa.shape, qa.q.tolist(), qa.scale.tolist()  # q: output-major
    ('bfloat16', (1, 2), [[1.0], [3.140625]], [[1.0, 1.0]])
    """
    w = np.asarray(w, np.float32)
    if act in _FLOAT_Q:  # output-major storage (QuantizedArray): outputs, then the rest
        shape = tuple(1 if i in contract_axes else d for i, d in enumerate(w.shape))
        out, rest = _split_axes(shape)
        q = jnp.asarray(np.transpose(w, out + rest), _FLOAT_Q[act])
        return QuantizedArray(q, jnp.ones(shape, jnp.float32), act)
    amax = np.max(np.abs(w), axis=tuple(contract_axes), keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    if act in _OUT_MAJOR_ACTS:  # w8a8: output-major as well
        out, rest = _split_axes(scale.shape)
        q = np.transpose(q, out + rest)
    return QuantizedArray(jnp.asarray(q), jnp.asarray(scale), act)


def quantize_rule(path: tuple[str, ...], shape: tuple[int, ...], min_size: int):
    """The contracted axes of the leaf at ``path`` (dict keys), or None to keep it float."""
    if len(shape) < 2 or math.prod(shape) < min_size:
        return None
    name, module = path[-1], (path[-2] if len(path) > 1 else "")
    if name == "embedding" and module in _EMBED_MODULES:
        return (len(shape) - 1,)  # one scale per vocabulary row
    if name not in _MATRIX_NAMES:
        return None
    if name == "kernel" and module in _HEAD_SPLIT_OUT and len(shape) == 3:
        return (0, 1)
    return (0,)


def quantize_params(params: Any, mode: str = "int8", *, min_size: int = 1024) -> Any:
    """``params`` with the matrices ``quantize_rule`` selects as int8 ``QuantizedArray``;
    ``mode`` is one of ``QUANT_MODES`` (see the module docstring)."""
    if mode not in QUANT_MODES:
        raise ValueError(f"quantize: mode must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    if mode == "bf16":
        _warn_without_bf16_dots()
    act = _ACTS[mode]
    return _map_matrices(params, min_size, lambda leaf, axes: quantize_array(leaf, axes, act))


def output_major(params: Any, *, min_size: int = 1024) -> Any:
    """``params`` with the matrices ``quantize_rule`` selects stored output-major in float32
    (``QuantizedArray`` act ``"f32"``): the same values (``dequantize`` gives them back
    exactly), another memory layout for the matmuls (``compile_options.one_row_output_major``
    says where it is faster). For models with ``takes_int8`` (the Transformer); float32
    params only.

    >>> p = {"dense": {"kernel": np.arange(2048, dtype=np.float32).reshape(32, 64)}}
    >>> w = output_major(p)["dense"]["kernel"]
    >>> w.q.shape, w.shape, w.act, bool(np.array_equal(w.dequantize(), p["dense"]["kernel"]))
    ((64, 32), (32, 64), 'f32', True)
    """
    if is_quantized(params):
        raise ValueError("output_major: params are quantised already; pass float32 params")
    return _map_matrices(params, min_size, lambda leaf, axes: quantize_array(leaf, axes, "f32"))


def _map_matrices(params: Any, min_size: int, convert: Any) -> Any:
    """``params`` with ``convert(leaf, contracted axes)`` for each leaf ``quantize_rule``
    selects."""

    def one(path: tuple[Any, ...], leaf: Any) -> Any:
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        axes = quantize_rule(keys, tuple(np.shape(leaf)), min_size)
        return leaf if axes is None else convert(leaf, axes)

    return jax.tree_util.tree_map_with_path(one, params)


def _warn_without_bf16_dots() -> None:
    """A warning where decoding runs on a CPU that lists no bfloat16 dot instructions: the
    mode was measured faster only on one that has them (module docstring)."""
    from seqjax.decoding import compile_options

    flags = compile_options.host_cpu_flags()
    if jax.default_backend() == "cpu" and flags and not compile_options.has_bf16_dots(flags):
        warnings.warn(
            "quantize bf16: this CPU lists no bfloat16 dot instructions (avx512_bf16, "
            "amx_bf16); bfloat16 products may run slower than float32 here",
            stacklevel=3,
        )


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def is_quantized(params: Any) -> bool:
    """Whether any leaf of ``params`` is a ``QuantizedArray``."""
    return any(_is_quantized(x) for x in jax.tree.leaves(params, is_leaf=_is_quantized))


def dequantize(params: Any) -> Any:
    """Float params (``q * scale`` per quantised leaf); other trees pass through unchanged."""
    if not is_quantized(params):
        return params
    return jax.tree.map(
        lambda x: x.dequantize() if _is_quantized(x) else x, params, is_leaf=_is_quantized
    )


def take_rows(table: Any, ids: jax.Array) -> jax.Array:
    """``table[ids]`` (an embedding lookup); a quantised table converts only those rows."""
    if _is_quantized(table):
        return table.q[ids].astype(table.dtype) * table.scale[ids]
    return jnp.take(table, ids, axis=0)


def param_bytes(params: Any) -> int:
    """Bytes of the params' arrays (int8 leaves count one byte an element, bf16 two)."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))
