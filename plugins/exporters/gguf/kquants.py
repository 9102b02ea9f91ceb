"""Q4_K, Q5_K and Q6_K encoders that give the same bytes as llama.cpp's llama-quantize.

gguf-py can only read K-quants, and llama-quantize is a compiled tool users may not have.
Without an importance matrix llama-quantize runs the reference encoders of
ggml/src/ggml-quants.c (``quantize_row_q{4,5,6}_K_ref``); this is a numpy port of them,
vectorized over every block of a tensor. The C code is scalar float32 with no fused
multiply-adds, and its bytes only match if each float operation is the same, so the port
keeps the C expression order, sums each group strictly left to right (``_sum``) and rounds
half to even (``nearest_int``'s magic-number trick, which ``np.rint`` equals in the range
the encoders use).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

QK_K = 256
_F32 = np.float32
_GROUP_MAX_EPS = _F32(1e-15)
# Blocks encoded together: enough that numpy's per-call cost is small, few enough that
# a step's temporaries (1 MiB each) stay near the CPU caches (measured best of 256-4096).
_CHUNK_BLOCKS = 1024


def quantize(array: np.ndarray, qtype: Q) -> np.ndarray:
    """Encode ``array`` (last axis a multiple of 256) as ``qtype``.

    Returns uint8 shaped ``gguf.quant_shape_to_byte_shape(array.shape, qtype)``.
    """
    encode = _ENCODERS[qtype]
    shape = array.shape
    if shape[-1] % QK_K:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {QK_K} values, got {shape}")
    blocks = np.ascontiguousarray(array, dtype=_F32).reshape(-1, QK_K)
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    out = np.empty((blocks.shape[0], block_bytes), dtype=np.uint8)

    def encode_chunk(start: int) -> None:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out[start:start + _CHUNK_BLOCKS] = encode(blocks[start:start + _CHUNK_BLOCKS])

    # numpy releases the GIL inside each operation, so chunks encode in parallel threads
    # (llama-quantize also uses every core)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(encode_chunk, range(0, blocks.shape[0], _CHUNK_BLOCKS)))
    return out.reshape(*shape[:-1], shape[-1] // QK_K * block_bytes)


def _sum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in index order, as the C loops do (numpy's own sum is pairwise)."""
    total = terms[0].copy()
    for row in terms[1:]:
        total += row
    return total


def _round(values: np.ndarray, low: int, high: int) -> np.ndarray:
    """``MAX(low, MIN(high, nearest_int(v)))`` in place, kept in float32 (exact here)."""
    np.rint(values, out=values)
    return np.clip(values, low, high, out=values)


def _qkx2(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
          nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` for every group at once; groups run along axis 1.

    Returns (scale, the_min, L). Each step's grid uses the min of the best fit so far,
    exactly as the C loop does, so the steps cannot run in parallel.
    """
    lo = np.minimum(x.min(axis=0), 0)
    hi = x.max(axis=0)
    flat = hi == lo
    sum_w = _sum(w)
    sum_x = _sum(w * x)
    levels, tmp, wlx = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    def grid(iscale: np.ndarray, mn: np.ndarray) -> np.ndarray:
        np.subtract(x, mn, out=levels)
        return _round(np.multiply(levels, iscale, out=levels), 0, nmax)

    def error(scale: np.ndarray, mn: np.ndarray) -> np.ndarray:
        diff = np.multiply(levels, scale, out=tmp)
        diff += mn
        diff -= x
        diff *= diff
        diff *= w
        return _sum(diff)

    iscale = _F32(nmax) / (hi - lo)
    scale = 1 / iscale
    grid(iscale, lo)
    best_error = error(scale, lo)
    mn, grid_iscale, grid_min = lo, iscale, lo
    for step in range(nstep + 1):
        iscale = (_F32(rmin) + _F32(rdelta) * _F32(step) + _F32(nmax)) / (hi - mn)
        grid(iscale, mn)
        np.multiply(w, levels, out=tmp)
        sum_l = _sum(tmp)
        sum_xl = _sum(np.multiply(tmp, x, out=wlx))  # (w*l)*x, grouped as in C
        sum_l2 = _sum(np.multiply(tmp, levels, out=tmp))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0
        this_min = np.where(positive, _F32(0), this_min)
        this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        cur_error = error(this_scale, this_min)
        better = (det > 0) & (cur_error < best_error)
        best_error = np.where(better, cur_error, best_error)
        grid_iscale = np.where(better, iscale, grid_iscale)
        grid_min = np.where(better, mn, grid_min)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    best_levels = np.where(flat, _F32(0), grid(grid_iscale, grid_min))
    return np.where(flat, _F32(0), scale), np.where(flat, -lo, -mn), best_levels


def _qx(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants`` with ``rmse_type`` 1 and no weights; groups run along axis 1.

    Returns (scale, L) with L offset by ``nmax`` as the C code stores it.
    """
    columns = np.arange(x.shape[1])
    pick = np.abs(x).argmax(axis=0)  # first of equal maxima, like the C's strict ">"
    big = x[pick, columns]
    empty = np.abs(big) < _GROUP_MAX_EPS
    w = x * x
    wx = w * x
    levels, tmp = np.empty_like(x), np.empty_like(x)

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _round(np.multiply(x, iscale, out=levels), -nmax, nmax - 1)
        sumlx = _sum(np.multiply(wx, levels, out=tmp))
        np.multiply(w, levels, out=tmp)
        return sumlx, _sum(np.multiply(tmp, levels, out=tmp))

    best_iscale = _F32(-nmax) / big
    sumlx, suml2 = fit(best_iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, _F32(0))
    best = scale * sumlx
    for step in (*range(-9, 0), *range(1, 10)):
        iscale = -(_F32(nmax) + _F32(0.1) * _F32(step)) / big
        sumlx, suml2 = fit(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
        best_iscale = np.where(better, iscale, best_iscale)
    fit(best_iscale)
    return np.where(empty, _F32(0), scale), np.where(empty, _F32(0), levels + nmax)


def _groups(blocks: np.ndarray, size: int) -> np.ndarray:
    """(blocks, 256) → (size, groups): one group per column, its values down axis 0."""
    return np.ascontiguousarray(blocks.reshape(-1, size).T)


def _as_blocks(levels: np.ndarray, n_blocks: int) -> np.ndarray:
    return levels.T.reshape(n_blocks, QK_K).astype(np.uint8)


def _fp16_bytes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``GGML_FP32_TO_FP16`` (round to nearest even): the stored bytes and the value read back."""
    half = values.astype(np.float16)
    return half.view(np.uint8).reshape(-1, 2), half.astype(_F32)


def _encode_scale_min(blocks: np.ndarray, nmax: int, rmin: float, nstep: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The shared part of Q4_K and Q5_K: eight 32-value groups per block, each with a
    scale and a min quantized to 6 bits against the block's f16 ``d`` and ``dmin``.

    Returns the block header (d, dmin, 12 packed scale bytes) and the levels (blocks, 256).
    """
    n_blocks = blocks.shape[0]
    x = _groups(blocks, 32)
    av_x = np.sqrt(_sum(x * x) / _F32(32))
    scales, mins, levels = _qkx2(x, av_x + np.abs(x), nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(n_blocks, 8), mins.reshape(n_blocks, 8)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    inv_scale = np.where(max_scale > 0, _F32(63) / max_scale, _F32(0))
    inv_min = np.where(max_min > 0, _F32(63) / max_min, _F32(0))
    # uint8_t ls = nearest_int(...): the int wraps to a byte before MIN(63, .)
    ls = np.minimum(np.rint(inv_scale[:, None] * scales).astype(np.int32) & 0xFF, 63)
    lm = np.minimum(np.rint(inv_min[:, None] * mins).astype(np.int32) & 0xFF, 63)
    d_bytes, d = _fp16_bytes(max_scale / _F32(63))
    dmin_bytes, dmin = _fp16_bytes(max_min / _F32(63))
    group_d = (d[:, None] * ls.astype(_F32)).reshape(-1)
    group_dm = (dmin[:, None] * lm.astype(_F32)).reshape(-1)
    final = _round((x + group_dm) / group_d, 0, nmax)
    levels = np.where(group_d != 0, final, levels)  # "if (!d) continue;" keeps the search's L
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    packed = np.concatenate([
        ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
        lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
        (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4),
    ], axis=1)
    return np.concatenate([d_bytes, dmin_bytes, packed], axis=1), _as_blocks(levels, n_blocks)


def _encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q4_K_ref``: d, dmin, scales[12], qs[128]."""
    header, levels = _encode_scale_min(blocks, 15, -1.0, 20)
    pairs = levels.reshape(-1, 4, 2, 32)
    qs = pairs[:, :, 0] | (pairs[:, :, 1] << 4)
    return np.concatenate([header, qs.reshape(-1, 128)], axis=1)


def _encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q5_K_ref``: d, dmin, scales[12], qh[32], qs[128]."""
    header, levels = _encode_scale_min(blocks, 31, -0.5, 15)
    groups = levels.reshape(-1, 8, 32)
    high = (groups >> 4).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    qh = np.bitwise_or.reduce(high, axis=1)
    low = (groups & 0xF).reshape(-1, 4, 2, 32)
    qs = low[:, :, 0] | (low[:, :, 1] << 4)
    return np.concatenate([header, qh, qs.reshape(-1, 128)], axis=1)


def _encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    """``quantize_row_q6_K_ref``: ql[128], qh[64], int8 scales[16], d."""
    n_blocks = blocks.shape[0]
    x = _groups(blocks, 16)
    scales, levels = _qx(x, 32)
    scales = scales.reshape(n_blocks, 16)
    pick = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(n_blocks), pick]
    empty = np.abs(max_scale) < _GROUP_MAX_EPS
    iscale = _F32(-128) / max_scale
    d_bytes, d = _fp16_bytes(1 / iscale)
    q_scales = np.minimum(np.rint(iscale[:, None] * scales), 127).astype(np.int8)
    group_d = (d[:, None] * q_scales.astype(_F32)).reshape(-1)
    final = _round(x / group_d, -32, 31) + 32
    levels = _as_blocks(np.where(group_d != 0, final, levels), n_blocks)
    quarters = levels.reshape(-1, 2, 4, 32)
    low = quarters & 0xF
    ql = low[:, :, :2] | (low[:, :, 2:] << 4)
    qh = np.bitwise_or.reduce(
        (quarters >> 4) << np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None], axis=2)
    out = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64),
                          q_scales.view(np.uint8), d_bytes], axis=1)
    out[empty] = 0  # memset: an all-zero block keeps no levels either
    return out


_ENCODERS = {Q.Q4_K: _encode_q4_k, Q.Q5_K: _encode_q5_k, Q.Q6_K: _encode_q6_k}
TYPES = frozenset(_ENCODERS)
