"""Convolution and max pooling on NCHW batches, in the op style of ``autodiff.ops``.

Layout: a convolution is one matrix product per block of output rows, weights (F, C·kh·kw) @
patches (C·kh·kw, rows·Wo·N), on activations kept in (C, H, W, N) memory order: the batch
innermost makes every im2col/col2im copy a run of Wo·N contiguous numbers (channel-first with
the batch outermost gives runs of Wo: 1.5-2.5x slower copies), and a block of patches is small
enough to stay in the cache from the copy that writes it to the products that read it. The
output is (F, Ho, Wo, N) in memory and is returned as its NCHW *view* (a transpose, no copy):
every op sees NCHW shapes, while numpy's elementwise ops (ReLU) and the pooling below keep the
memory order, so the next layer's im2col reads long runs again and no layer pays a transpose.

Without gradients (``Conv2d.infer``) one image at stride 1 takes another layout, see
``_conv_one_image``: at batch 1 the runs above are only Wo numbers long. Both paths build their
strided views with ``np.ndarray``, not ``as_strided`` or ``sliding_window_view``, whose Python
side costs 4 and 20 µs a call: as much as the arithmetic of a batch-1 LeNet layer.
"""

from __future__ import annotations

import numpy as np

from autodiff.node import ComputationGraphNode
from autodiff.ops import Operation

#: patch numbers per matrix product (256 KiB of float32): small enough to stay in the L2 cache
#: between the im2col that writes a block and the products that read it (measured: 1 MiB
#: blocks, or one block per layer, are up to 10% slower per training step at batch 128); also
#: the largest input that max pooling reduces in two passes (see _window_max)
BLOCK = 1 << 16
#: patch numbers per block of a backward pass that needs the input's gradient alone (attributions,
#: models/explain.py): there are no patches to keep in the cache, so fewer, larger blocks save
#: Python calls (kh·kw col2im additions per block); measured in docs/benchmarks.md. At most
#: 4 MiB of float32 per block.
DX_BLOCK = 1 << 20


def _pair(value, name: str) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, as an (h, w) tuple."""
    if type(value) is int:  # the common case first: this runs several times per layer call
        return value, value
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


def _blocks(ho: int, row_size: int, block: int | None = None) -> list[range]:
    """Output rows in blocks of about ``block`` (default BLOCK) patch numbers (at least one row
    each)."""
    step = max(1, (BLOCK if block is None else block) // max(row_size, 1))
    return [range(r, min(r + step, ho)) for r in range(0, ho, step)]


def _patches(xp: np.ndarray, kernel, stride, out_hw) -> np.ndarray:
    """The strided view (C, kh, kw, Ho, Wo, N) of a contiguous (C, Hp, Wp, N) array:
    [c, i, j, y, x, n] is ``xp[c, i + sh*y, j + sw*x, n]``. Built once per call; blocks of rows
    are cheap slices of it.

    ``np.ndarray`` over xp's buffer is ``as_strided`` at a tenth of its Python cost (0.4 against
    4 µs), and as safe: numpy checks the view against the buffer, and refuses a non-contiguous
    one. The view is writeable if xp is (col2im adds through it); it never leaves this module.
    """
    (kh, kw), (sh, sw) = kernel, stride
    s_c, s_h, s_w, s_n = xp.strides
    return np.ndarray((xp.shape[0], kh, kw, *out_hw, xp.shape[3]), xp.dtype, xp, 0,
                      (s_c, s_h, s_w, s_h * sh, s_w * sw, s_n))


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


def _conv_shapes(x, W, b, stride, padding):  # noqa: N803
    """Checked (stride, padding, (Ho, Wo)) of the convolution of x (N, C, H, W) by W."""
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
    return stride, padding, (_out_size(hp, kh, stride[0]), _out_size(wp, kw, stride[1]))


def _conv_chwn(xp: np.ndarray, W: np.ndarray, b: np.ndarray, stride, out_hw) -> np.ndarray:  # noqa: N803
    """The convolution of a padded contiguous (C, Hp, Wp, N) array, as (F, Ho, Wo, N)."""
    f, (ho, wo), n = W.shape[0], out_hw, xp.shape[3]
    w2 = W.reshape(f, -1)
    out = np.empty((f, ho, wo, n), dtype=np.result_type(xp, W))
    out2 = out.reshape(f, -1)
    patches = _patches(xp, W.shape[2:], stride, out_hw)
    for rows in _blocks(ho, w2.shape[1] * wo * n):
        part = out2[:, rows.start * wo * n : rows.stop * wo * n]
        np.matmul(w2, im2col(patches, rows), out=part)
        part += b[:, None]
    return out


def _conv_one_image(x: np.ndarray, W: np.ndarray, b: np.ndarray, padding, out_hw) -> np.ndarray:  # noqa: N803
    """The stride-1 convolution of one image (1, C, H, W) as (1, F, Ho, Wo), over whole rows.

    In the padded image (C, Hp, Wp), patch row (c, i, j) of all output pixels at once is one
    run of Ho·Wp numbers from [c, i, j], so im2col copies C·kh·kw long runs instead of
    C·kh·kw·Ho runs of Wo. The product also computes the kw - 1 columns past the end of each
    output row, which a view cuts off: 15-40% more arithmetic, for a copy up to 2.5x faster.
    Measured on 28x28 LeNet layers: 1.4x faster at batch 1, slower from batch 4 on (there the
    batch-innermost runs of Wo·N are long already).
    """
    f, c, kh, kw = W.shape
    (ph, pw), (ho, wo) = padding, out_hw
    h, w = x.shape[2:]
    wp = w + 2 * pw
    # one zero row more per channel: the last run of a channel ends kw - 1 numbers past its end
    xp = np.zeros((c, h + 2 * ph + 1, wp), dtype=x.dtype)
    xp[:, ph : ph + h, pw : pw + w] = x[0]
    s_c, s_h, s_w = xp.strides
    runs = np.ndarray((c, kh, kw, ho * wp), xp.dtype, xp, 0, (s_c, s_h, s_w, s_w))
    out = W.reshape(f, -1) @ runs.reshape(c * kh * kw, ho * wp)  # the reshape copies: im2col
    out += b[:, None]
    return out.reshape(1, f, ho, wp)[..., :wo]


class Conv2d(Operation):
    """y[n,f] = Σ_c x[n,c] ⋆ W[f,c] + b[f];  dW = g @ cols.T,  db = sum g,  dx = col2im(W.T @ g)"""

    arity = 3

    def __call__(self, x, W, b, stride=1, padding=0) -> ComputationGraphNode:  # noqa: N803
        return super().__call__(x, W, b, stride, padding)

    @staticmethod
    def forward(x, W, b, stride=1, padding=0):  # noqa: N803
        stride, padding, out_hw = _conv_shapes(x, W, b, stride, padding)
        xp = _chwn_padded(x, padding)
        out = _conv_chwn(xp, W, b, stride, out_hw)
        # the patches are not kept: backward copies them again block by block, which is cheaper
        # than writing every block out of the cache to memory and reading it back
        return out.transpose(3, 0, 1, 2), (xp, W, x.shape, stride, padding)

    @staticmethod
    def infer(x, W, b, stride=1, padding=0):  # noqa: N803
        """The output alone: one image at stride 1 over whole rows, else as forward computes it."""
        stride, padding, out_hw = _conv_shapes(x, W, b, stride, padding)
        if x.shape[0] == 1 and stride == (1, 1):
            return _conv_one_image(x, W, b, padding, out_hw)
        return _conv_chwn(_chwn_padded(x, padding), W, b, stride, out_hw).transpose(3, 0, 1, 2)

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
            dpatches = _patches(dxp, (kh, kw), stride, (ho, wo))
        if needs[0] or needs[1]:
            patches = _patches(xp, (kh, kw), stride, (ho, wo))
            block = BLOCK if needs[1] else DX_BLOCK
            for rows in _blocks(ho, w2.shape[1] * wo * n, block):
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


def _window_max(x: np.ndarray, kernel, stride, out_hw) -> np.ndarray:
    """The max of every window of x (N, C, H, W), as a new array in x's memory order
    (channel-first after a Conv2d). No window copies: np.maximum over strided views.

    Two orders of the same maxima. Up to BLOCK numbers, separable: over each window's rows,
    then over its columns, kh + kw - 2 passes (2 for 2x2, against 3), the first over whole rows,
    which are contiguous even where W is the innermost axis (batch 1): 1.6x faster for a batch
    of 1-4 LeNet layers. Larger arrays: one view per kernel offset, reduced into the output,
    which stays in the cache where the separable order's half-size intermediate would not
    (that one is 1.3x slower at batch 64).
    """
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    if x.size > BLOCK:
        views = [_offsets(x, i, j, stride, out_hw) for i in range(kh) for j in range(kw)]
        if len(views) == 1:
            return views[0].copy(order="K")
        out = np.maximum(views[0], views[1])
        for view in views[2:]:
            np.maximum(out, view, out=out)
        return out
    rows, cols = sh * (ho - 1) + 1, sw * (wo - 1) + 1  # the span of the windows' first elements
    x = x[..., : cols + kw - 1]
    row_max = x[..., :rows:sh, :]
    for i in range(1, kh):  # a new array from the first np.maximum on, then in place
        row_max = np.maximum(row_max, x[..., i : i + rows : sh, :], out=row_max if i > 1 else None)
    out = row_max[..., :cols:sw]
    for j in range(1, kw):
        out = np.maximum(out, row_max[..., j : j + cols : sw], out=out if j > 1 else None)
    return out if kw > 1 else out.copy(order="K")  # else a view: of x, or of a larger array


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
        out = _window_max(x, kernel, stride, out_hw)
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
