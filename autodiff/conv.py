"""Convolution and max pooling on NCHW batches, in the op style of ``autodiff.ops``.

Layout: a convolution is one matrix product per block of output rows, weights (F, C·kh·kw) @
patches (C·kh·kw, rows·Wo·N), on activations kept in (C, H, W, N) memory order: the batch
innermost makes every im2col/col2im copy a run of Wo·N contiguous numbers (channel-first with
the batch outermost gives runs of Wo: 1.5-2.5x slower copies), and a block of patches is small
enough to stay in the cache from the copy that writes it to the products that read it. The
output is (F, Ho, Wo, N) in memory and is returned as its NCHW *view* (a transpose, no copy):
every op sees NCHW shapes, while numpy's elementwise ops (ReLU) and the pooling below keep the
memory order, so the next layer's im2col reads long runs again and no layer pays a transpose.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from autodiff.node import ComputationGraphNode
from autodiff.ops import Operation

#: patch numbers per matrix product (256 KiB of float32): small enough to stay in the L2 cache
#: between the im2col that writes a block and the products that read it (measured: 1 MiB
#: blocks, or one block per layer, are up to 10% slower per training step at batch 128)
BLOCK = 1 << 16


def _pair(value, name: str) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, as an (h, w) tuple."""
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair
    ):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _out_size(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def _offsets(array: np.ndarray, i: int, j: int, stride, out_hw) -> np.ndarray:
    """The view ``array[..., i + s*y, j + s*x]`` of an NCHW array for every output (y, x)."""
    (sh, sw), (ho, wo) = stride, out_hw
    return array[..., i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]


def _like(template: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` in ``template``'s memory order (shapes are equal)."""
    copy = np.empty_like(template)
    copy[...] = values
    return copy


def _chwn_padded(x: np.ndarray, padding) -> np.ndarray:
    """x (N, C, H, W) as a contiguous (C, H + 2ph, W + 2pw, N) array (x's memory when it is)."""
    ph, pw = padding
    xm = x.transpose(1, 2, 3, 0)
    if not ph and not pw:
        return np.ascontiguousarray(xm)
    c, h, w, n = xm.shape
    padded = np.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=x.dtype)
    padded[:, ph : ph + h, pw : pw + w] = xm
    return padded


def _blocks(ho: int, row_size: int) -> list[range]:
    """Output rows in blocks of about BLOCK patch numbers (at least one row each)."""
    step = max(1, BLOCK // max(row_size, 1))
    return [range(r, min(r + step, ho)) for r in range(0, ho, step)]


def _patches(xp: np.ndarray, kernel, stride, out_hw, writeable: bool = False) -> np.ndarray:
    """The strided view (C, kh, kw, Ho, Wo, N) of a (C, Hp, Wp, N) array: [c, i, j, y, x, n] is
    ``xp[c, i + sh*y, j + sw*x, n]``. Built once per call; blocks of rows are cheap slices of it."""
    (kh, kw), (sh, sw) = kernel, stride
    s_c, s_h, s_w, s_n = xp.strides
    return as_strided(xp, (xp.shape[0], kh, kw, *out_hw, xp.shape[3]),
                      (s_c, s_h, s_w, s_h * sh, s_w * sw, s_n), writeable=writeable)


def im2col(patches: np.ndarray, rows: range) -> np.ndarray:
    """Patches (C·kh·kw, rows·Wo·N) of the given output rows, copied in one call.

    With the batch innermost, numpy copies them in runs of Wo·N numbers (for stride 1).
    """
    block = patches[:, :, :, rows.start : rows.stop]
    cols = np.empty(block.shape, dtype=block.dtype)
    np.copyto(cols, block)
    return cols.reshape(block.shape[0] * block.shape[1] * block.shape[2], -1)


def col2im(dcols: np.ndarray, dpatches: np.ndarray, rows: range) -> None:
    """The adjoint of im2col: add patch gradients (C·kh·kw, rows·Wo·N) into ``dpatches``' array.

    One addition per kernel offset: the windows of different offsets overlap, so they cannot be
    added in one call; those of one offset do not.
    """
    c, kh, kw = dpatches.shape[:3]
    dcols = dcols.reshape((c, kh, kw, len(rows)) + dpatches.shape[4:])
    for i in range(kh):
        for j in range(kw):
            dpatches[:, i, j, rows.start : rows.stop] += dcols[:, i, j]


class Conv2d(Operation):
    """y[n,f] = Σ_c x[n,c] ⋆ W[f,c] + b[f];  dW = g @ cols.T,  db = sum g,  dx = col2im(W.T @ g)"""

    arity = 3

    def __call__(self, x, W, b, stride=1, padding=0) -> ComputationGraphNode:  # noqa: N803
        return super().__call__(x, W, b, stride, padding)

    @staticmethod
    def forward(x, W, b, stride=1, padding=0):  # noqa: N803
        stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
        if min(stride) < 1 or min(padding) < 0:
            raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride} and {padding}")
        if x.ndim != 4 or W.ndim != 4:
            raise ValueError(
                f"expected x (N, C, H, W) and W (F, C, kh, kw), got x {x.shape} and W {W.shape}"
            )
        f, c, kh, kw = W.shape
        if x.shape[1] != c:
            raise ValueError(f"x has {x.shape[1]} channels but W expects {c} (W {W.shape})")
        if b.shape != (f,):
            raise ValueError(f"b must have shape ({f},) for W {W.shape}, got b {b.shape}")
        hp, wp = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
        if kh > hp or kw > wp:
            raise ValueError(
                f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}: "
                "use a smaller kernel or more padding"
            )
        n = x.shape[0]
        ho, wo = _out_size(hp, kh, stride[0]), _out_size(wp, kw, stride[1])
        xp = _chwn_padded(x, padding)
        w2 = W.reshape(f, -1)
        out = np.empty((f, ho, wo, n), dtype=np.result_type(x, W))
        out2 = out.reshape(f, -1)
        patches = _patches(xp, (kh, kw), stride, (ho, wo))
        for rows in _blocks(ho, w2.shape[1] * wo * n):
            part = out2[:, rows.start * wo * n : rows.stop * wo * n]
            np.matmul(w2, im2col(patches, rows), out=part)
            part += b[:, None]
        # the patches are not kept: backward copies them again block by block, which is cheaper
        # than writing every block out of the cache to memory and reading it back
        return out.transpose(3, 0, 1, 2), (xp, W, x.shape, stride, padding)

    @staticmethod
    def backward(saved, g, needs):
        xp, W, x_shape, stride, padding = saved  # noqa: N806
        f, _, kh, kw = W.shape
        ho, wo, n = g.shape[2], g.shape[3], g.shape[0]
        g2 = g.transpose(1, 2, 3, 0).reshape(f, -1)  # a view when g is (F, Ho, Wo, N) in memory
        w2 = W.reshape(f, -1)
        dx = dw = db = None
        if needs[2]:
            db = g2.sum(axis=1)
        if needs[1]:  # accumulated transposed: patches @ g.T is ~1.6x faster than g @ patches.T
            dw_t = np.zeros(w2.shape[::-1], dtype=w2.dtype)
            part = np.empty_like(dw_t)
        if needs[0]:
            dxp = np.zeros_like(xp)
            dpatches = _patches(dxp, (kh, kw), stride, (ho, wo), writeable=True)
        if needs[0] or needs[1]:
            patches = _patches(xp, (kh, kw), stride, (ho, wo))
            for rows in _blocks(ho, w2.shape[1] * wo * n):
                g_block = g2[:, rows.start * wo * n : rows.stop * wo * n]
                if needs[1]:
                    np.matmul(im2col(patches, rows), g_block.T, out=part)
                    dw_t += part
                if needs[0]:
                    col2im(w2.T @ g_block, dpatches, rows)
        if needs[1]:
            dw = dw_t.T.reshape(W.shape)
        if needs[0]:
            ph, pw = padding
            dx = dxp[:, ph : ph + x_shape[2], pw : pw + x_shape[3]].transpose(3, 0, 1, 2)
        return dx, dw, db


class MaxPool2d(Operation):
    """y = max over each window (stride defaults to kernel);  dx = g at each window's first max"""

    def __call__(self, x, kernel=2, stride=None) -> ComputationGraphNode:
        return super().__call__(x, kernel, stride)

    @staticmethod
    def forward(x, kernel=2, stride=None):
        kernel = _pair(kernel, "kernel")
        stride = kernel if stride is None else _pair(stride, "stride")
        if min(kernel) < 1 or min(stride) < 1:
            raise ValueError(f"kernel and stride must be >= 1, got {kernel} and {stride}")
        if x.ndim != 4:
            raise ValueError(f"expected x (N, C, H, W), got shape {x.shape}")
        if kernel[0] > x.shape[2] or kernel[1] > x.shape[3]:
            raise ValueError(
                f"kernel {kernel[0]}x{kernel[1]} is larger than the input {x.shape[2]}x{x.shape[3]}"
            )
        out_hw = (_out_size(x.shape[2], kernel[0], stride[0]),
                  _out_size(x.shape[3], kernel[1], stride[1]))
        # one strided view per kernel offset, reduced pairwise: no window copies (this is the
        # 2x2/2 fast path, and general enough for any kernel and stride)
        views = [_offsets(x, i, j, stride, out_hw)
                 for i in range(kernel[0]) for j in range(kernel[1])]
        out = views[0].copy(order="K")  # keep x's memory order (channel-first after a Conv2d)
        for view in views[1:]:
            np.maximum(out, view, out=out)
        return out, (x, out, kernel, stride)

    @staticmethod
    def backward(saved, g, needs):
        x, out, kernel, stride = saved
        out_hw = out.shape[2:]
        # windows that tile x exactly write every element once: no zero fill, no accumulation
        exact = kernel == stride and all(s * o == n for s, o, n in zip(stride, out_hw, x.shape[2:]))
        dx = np.empty_like(x) if exact else np.zeros_like(x)
        if g.strides != out.strides:  # one copy into out's memory order beats 4 mixed-order passes
            g = _like(out, g)
        claimed = None  # windows whose max already took the gradient (the first max, as torch)
        last = kernel[0] * kernel[1] - 1
        for k in range(last + 1):
            i, j = divmod(k, kernel[1])
            first = np.equal(_offsets(x, i, j, stride, out_hw), out)
            if claimed is None:
                claimed = first
            else:  # bool masks: a quarter of the memory traffic of subtracting routed gradients
                np.greater(first, claimed, out=first)  # a max, and no earlier one in its window
                if k < last:
                    np.logical_or(claimed, first, out=claimed)
            dx_view = _offsets(dx, i, j, stride, out_hw)
            if exact:  # written straight into dx: one pass fewer
                np.multiply(g, first, out=dx_view)
            else:
                dx_view += g * first
        return (dx,)
