"""Conv2d and MaxPool2d against finite differences and a direct loop; the ConvNetwork module."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import autodiff.conv
from autodiff import (
    ComputationGraphNode,
    Conv2d,
    MaxPool2d,
    Parameter,
    SGDWithMomentum,
    cross_entropy,
    no_grad,
    reuse_freed_memory,
)
from autodiff.gradcheck import gradcheck
from models import ConvNetwork, build, load, save

rng = np.random.default_rng(7)


def reference_conv(x, W, b, stride, padding):  # noqa: N803
    """The definition, one output pixel at a time."""
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    f, _, kh, kw = W.shape
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.empty((x.shape[0], f, ho, wo))
    for y in range(ho):
        for z in range(wo):
            window = xp[:, None, :, y * sh : y * sh + kh, z * sw : z * sw + kw]
            out[:, :, y, z] = (window * W[None]).sum(axis=(2, 3, 4)) + b
    return out


def pair(v):
    return (v, v) if np.ndim(v) == 0 else tuple(v)


# (N, C, H, W), (F, kh, kw), stride, padding: strides 1-3, paddings 0-2, odd sizes, non-square
# kernels, batch 1, one and several channels, (h, w) pairs; one image at stride 1 takes
# Conv2d.infer's whole-row im2col (the served CNN's two layers are the first two cases)
CONV_CASES = [
    ((1, 1, 28, 28), (8, 5, 5), 1, 2),
    ((1, 8, 14, 14), (16, 5, 5), 1, 0),
    ((2, 3, 7, 6), (4, 3, 2), 1, 0),
    ((1, 3, 7, 6), (4, 3, 2), 1, (2, 1)),
    ((1, 1, 5, 5), (2, 3, 3), 2, 1),
    ((2, 2, 8, 9), (3, 2, 3), 3, 2),
    ((3, 2, 6, 6), (2, 1, 1), 1, 0),
    ((1, 2, 5, 3), (2, 1, 1), 1, 0),
    ((1, 1, 6, 6), (2, 2, 2), 1, 3),  # more padding than kernel
    ((1, 3, 9, 7), (2, 3, 3), (2, 1), (0, 2)),
    ((2, 1, 4, 4), (1, 4, 4), 1, 0),  # the kernel covers the whole image
    ((1, 2, 4, 4), (3, 4, 4), 1, 0),
    ((1, 2, 3, 5), (3, 5, 2), (1, 3), (1, 0)),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONV_CASES)
def test_conv2d_matches_the_definition_and_finite_differences(x_shape, w_shape, stride, padding):
    f, kh, kw = w_shape
    x = rng.standard_normal(x_shape)
    W = rng.standard_normal((f, x_shape[1], kh, kw))  # noqa: N806
    b = rng.standard_normal(f)
    expected = reference_conv(x, W, b, pair(stride), pair(padding))
    out = Conv2d()(x, W, b, stride=stride, padding=padding).value  # constants: Conv2d.infer
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Conv2d.forward(x, W, b, stride, padding)[0], expected,
                               rtol=1e-10, atol=1e-12)
    out32 = Conv2d()(*(a.astype(np.float32) for a in (x, W, b)), stride, padding).value
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, expected, rtol=1e-5, atol=1e-5)
    gradcheck(lambda x, W, b: Conv2d()(x, W, b, stride=stride, padding=padding),  # noqa: N803
              [x, W, b], name=f"Conv2d stride={stride} padding={padding}")


def test_conv2d_in_blocks_of_rows_gives_the_same_gradients(monkeypatch):
    # a block of one row per matrix product: the path large batches take
    monkeypatch.setattr(autodiff.conv, "BLOCK", 1)
    x = rng.standard_normal((2, 2, 7, 6))
    W, b = rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(3)  # noqa: N806
    gradcheck(lambda x, W, b: Conv2d()(x, W, b, stride=(2, 1), padding=1),  # noqa: N803
              [x, W, b], name="Conv2d in blocks")


@pytest.mark.parametrize("block", [1, 1 << 20])
def test_conv2d_input_gradient_alone_in_blocks_of_rows(monkeypatch, block):
    """The input's gradient without the weights' (an attribution's backward pass) takes larger
    blocks (DX_BLOCK); in one row per block or one block, it equals the full backward's."""
    monkeypatch.setattr(autodiff.conv, "DX_BLOCK", block)
    x = rng.standard_normal((3, 2, 9, 8))
    W, b = rng.standard_normal((4, 2, 5, 5)), rng.standard_normal(4)  # noqa: N806
    out, saved = Conv2d.forward(x, W, b, 1, 2)
    g = rng.standard_normal(out.shape)
    (dx, dw, db) = Conv2d.backward(saved, g, [True, False, False])
    assert dw is None and db is None
    np.testing.assert_allclose(dx, Conv2d.backward(saved, g, [True, True, True])[0], rtol=1e-12)


def test_stacked_layers_keep_nchw_shapes_over_any_memory_order():
    # a Conv2d output is an NCHW view of batch-innermost memory; the next ops must not care
    x = rng.standard_normal((3, 2, 9, 8))
    W1, b1 = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)  # noqa: N806
    W2, b2 = rng.standard_normal((5, 4, 2, 2)), rng.standard_normal(5)  # noqa: N806

    def net(x, W1, b1, W2, b2):  # noqa: N803
        h = MaxPool2d()(Conv2d()(x, W1, b1, padding=1), 2)
        return Conv2d()(h * 1.5, W2, b2, stride=1)

    out = net(*[ComputationGraphNode(a) for a in (x, W1, b1, W2, b2)]).value
    h = reference_conv(x, W1, b1, (1, 1), (1, 1))
    h = h[:, :, :8].reshape(3, 4, 4, 2, 4, 2).max(axis=(3, 5))  # 9x8: the last row dropped
    np.testing.assert_allclose(out, reference_conv(h * 1.5, W2, b2, (1, 1), (0, 0)), atol=1e-12)
    assert out.shape == (3, 5, 3, 3)
    gradcheck(net, [x, W1, b1, W2, b2], name="conv-pool-conv")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3),
    h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 3), kw=st.integers(1, 3),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_conv2d_gradients_on_generated_shapes(n, c, f, h, w, kh, kw, sh, sw, ph, pw, seed):
    assume(kh <= h + 2 * ph and kw <= w + 2 * pw)  # else no valid convolution (tested below)
    r = np.random.default_rng(seed)
    x, W, b = r.standard_normal((n, c, h, w)), r.standard_normal((f, c, kh, kw)), r.standard_normal(f)  # noqa: N806, E501
    out = Conv2d()(x, W, b, (sh, sw), (ph, pw)).value
    np.testing.assert_allclose(out, reference_conv(x, W, b, (sh, sw), (ph, pw)), atol=1e-12)
    gradcheck(lambda x, W, b: Conv2d()(x, W, b, (sh, sw), (ph, pw)), [x, W, b],  # noqa: N803
              name="Conv2d (generated)")


def test_the_image_batch_gets_no_gradient():
    x = ComputationGraphNode(rng.standard_normal((2, 1, 6, 6)).astype(np.float32))
    W = Parameter(rng.standard_normal((3, 1, 3, 3)).astype(np.float32))  # noqa: N806
    b = Parameter(np.zeros(3, np.float32))
    Conv2d()(x, W, b, padding=1).sum().backward()
    assert x.grad is None and W.grad.shape == (3, 1, 3, 3) and b.grad.shape == (3,)
    assert W.grad.dtype == np.float32
    # and backward computes no col2im for it: it is asked for W and b only
    out, saved = Conv2d.forward(x.value, W.value, b.value, 1, 1)
    dx, dw, db = Conv2d.backward(saved, np.ones_like(out), [False, True, True])
    assert dx is None and dw is not None and db is not None
    assert Conv2d.backward(saved, np.ones_like(out), [False, False, True])[:2] == (None, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"x": (2, 3, 5, 5), "W": (4, 2, 3, 3)}, "x has 3 channels but W expects 2"),
    ({"x": (2, 1, 3, 3), "W": (4, 1, 5, 5)}, "kernel 5x5 is larger than the padded input 3x3"),
    ({"x": (2, 1, 3, 3), "W": (4, 1, 6, 6), "padding": 1}, "than the padded input 5x5"),
    ({"x": (1, 5, 5), "W": (4, 1, 3, 3)}, "expected x (N, C, H, W) and W (F, C, kh, kw)"),
    ({"x": (1, 1, 5, 5), "W": (4, 1, 3, 3), "b": (3,)}, "b must have shape (4,)"),
    ({"x": (1, 1, 5, 5), "W": (4, 1, 3, 3), "stride": 0}, "stride must be >= 1"),
    ({"x": (1, 1, 5, 5), "W": (4, 1, 3, 3), "padding": (1, 2, 3)}, "padding must be an int or"),
])
def test_conv2d_errors_say_what_is_wrong(kwargs, message):
    x = np.zeros(kwargs["x"])
    W = np.zeros(kwargs["W"])  # noqa: N806
    b = np.zeros(kwargs.get("b", (W.shape[0],)))
    with pytest.raises(ValueError, match="^Conv2d: ") as info:
        Conv2d()(x, W, b, stride=kwargs.get("stride", 1), padding=kwargs.get("padding", 0))
    assert message in str(info.value)


# -- max pooling -----------------------------------------------------------------------------
def reference_pool(x, kernel, stride):
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.empty(x.shape[:2] + (ho, wo))
    for y in range(ho):
        for z in range(wo):
            out[:, :, y, z] = x[:, :, y * sh : y * sh + kh, z * sw : z * sw + kw].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("shape, kernel, stride", [
    ((2, 3, 8, 6), 2, None),  # the 2x2/2 fast path
    ((1, 1, 7, 9), 2, None),  # odd sizes: the last row and column are dropped
    ((2, 2, 7, 8), 3, 1),  # overlapping windows
    ((1, 2, 9, 7), 2, 3),  # gaps between windows
    ((2, 1, 7, 7), 3, 2),
    ((1, 2, 6, 7), (2, 3), (1, 2)),
    ((1, 1, 4, 5), 1, None),
])
def test_maxpool_matches_the_definition_and_finite_differences(shape, kernel, stride):
    x = rng.standard_normal(shape)  # distinct values: no ties inside a finite-difference step
    out = MaxPool2d()(x, kernel, stride).value
    k = pair(kernel)
    np.testing.assert_allclose(out, reference_pool(x, k, k if stride is None else pair(stride)))
    gradcheck(lambda x: MaxPool2d()(x, kernel=kernel, stride=stride), [x],
              name=f"MaxPool2d kernel={kernel} stride={stride}")


@pytest.mark.parametrize("block", [0, 1 << 30], ids=["views per offset", "separable"])
@pytest.mark.parametrize("shape, kernel, stride", [
    ((2, 3, 8, 6), 2, None), ((1, 1, 7, 9), 2, None), ((2, 2, 7, 8), 3, 1), ((1, 2, 9, 7), 2, 3),
    ((1, 2, 6, 7), (2, 3), (1, 2)), ((1, 2, 6, 7), (3, 1), (2, 2)), ((1, 1, 4, 5), 1, None),
])
def test_maxpool_orders_give_the_same_maxima_and_memory_order(monkeypatch, block, shape, kernel,
                                                               stride):
    # large arrays reduce one view per kernel offset, small ones rows then columns
    monkeypatch.setattr(autodiff.conv, "BLOCK", block)
    x = rng.standard_normal(shape[1:] + shape[:1]).transpose(3, 0, 1, 2)  # as a Conv2d gives it
    out = MaxPool2d()(x, kernel, stride).value
    k = pair(kernel)
    np.testing.assert_array_equal(out, reference_pool(x, k, k if stride is None else pair(stride)))
    assert out.base is None or out.base.size == out.size  # a compact new array, not a view of x
    assert shape[0] == 1 or np.argsort(out.strides)[0] == 0  # the batch stays innermost
    gradcheck(lambda x: MaxPool2d()(x, kernel, stride), [x], name=f"MaxPool2d block={block}")


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 8), w=st.integers(1, 8), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_maxpool_gradients_on_generated_shapes(h, w, kh, kw, sh, sw, seed):
    assume(kh <= h and kw <= w)
    x = np.random.default_rng(seed).permutation(2 * h * w).reshape(1, 2, h, w) / 7.0
    out = MaxPool2d()(x, (kh, kw), (sh, sw)).value
    np.testing.assert_array_equal(out, reference_pool(x, (kh, kw), (sh, sw)))
    gradcheck(lambda x: MaxPool2d()(x, (kh, kw), (sh, sw)), [x], name="MaxPool2d (generated)")


@pytest.mark.parametrize("kernel, stride", [(2, None), (3, 1), (2, 1)])
def test_maxpool_ties_give_the_gradient_to_the_first_maximum_only(kernel, stride):
    # constant regions (image background, dead ReLUs) tie: the gradient must not be duplicated
    x = ComputationGraphNode(np.ones((1, 1, 4, 4)), require_grad=True)
    out = MaxPool2d()(x, kernel, stride)
    out.backward(np.ones(out.shape))
    assert x.grad.sum() == out.value.size  # each window's gradient is routed exactly once
    s = kernel if stride is None else stride
    first = np.zeros((4, 4))
    for y in range(out.shape[2]):
        for z in range(out.shape[3]):
            first[y * s, z * s] += 1  # the top-left element of each window
    np.testing.assert_array_equal(x.grad[0, 0], first)


@pytest.mark.parametrize("shape, kwargs, message", [
    ((1, 1, 3, 3), {"kernel": 4}, "kernel 4x4 is larger than the input 3x3"),
    ((3, 3), {}, "expected x (N, C, H, W)"),
    ((1, 1, 4, 4), {"kernel": 0}, "kernel and stride must be >= 1"),
])
def test_maxpool_errors_say_what_is_wrong(shape, kwargs, message):
    with pytest.raises(ValueError, match="^MaxPool2d: ") as info:
        MaxPool2d()(np.zeros(shape), **kwargs)
    assert message in str(info.value)


# -- ConvNetwork -----------------------------------------------------------------------------
def test_convnetwork_names_config_and_build():
    model = ConvNetwork(rng=np.random.default_rng(0))
    assert [name for name, _ in model.named_parameters()] == [
        "convs.0.W", "convs.0.b", "convs.1.W", "convs.1.b",
        "layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b", "layers.2.W", "layers.2.b",
    ]
    config = model.config()
    assert config["class"] == "ConvNetwork"
    rebuilt = build(config)
    assert isinstance(rebuilt, ConvNetwork) and rebuilt.config() == config
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_convnetwork_takes_flat_rows_and_images():
    model = ConvNetwork(channels=(3,), kernel_sizes=(3,), paddings=(1,), hidden_dims=(8,),
                        rng=np.random.default_rng(0))
    images = rng.random((4, 1, 28, 28), dtype=np.float32)
    with no_grad():
        flat = model(images.reshape(4, 784)).value
        np.testing.assert_allclose(flat, model(images).value, rtol=1e-6)
        node = model(ComputationGraphNode(images.reshape(4, 784))).value
    np.testing.assert_allclose(flat, node, rtol=1e-6)
    assert flat.shape == (4, 10) and flat.dtype == np.float32
    with pytest.raises(ValueError, match=r"expects images \(N, 1, 28, 28\) or flat rows"):
        model(np.zeros((4, 28, 27)))


# ConvNetwork configs: the trainer's default, padded both layers, 3x3, a pool that drops rows,
# no pooling, even kernels on several input channels, 1x1 kernels, three layers
NETWORK_CONFIGS = [
    {},
    {"channels": (16, 32), "kernel_sizes": (5, 5), "paddings": (2, 2), "hidden_dims": (128,)},
    {"channels": (4, 6), "kernel_sizes": (3, 3), "paddings": (1, 1), "hidden_dims": (16,)},
    {"channels": (3,), "kernel_sizes": (3,), "paddings": (0,), "pool": 3, "hidden_dims": (8,)},
    {"image_size": 10, "channels": (2, 3), "kernel_sizes": (3, 3), "paddings": (0, 1), "pool": 1,
     "hidden_dims": ()},
    {"in_channels": 3, "image_size": 12, "channels": (4,), "kernel_sizes": (4,), "paddings": (1,),
     "hidden_dims": (6, 5)},
    {"image_size": 9, "channels": (2,), "kernel_sizes": (1,), "paddings": (0,)},
    {"image_size": 16, "channels": (2, 3, 4), "kernel_sizes": (3, 3, 2), "paddings": (1, 1, 0),
     "pool": 2, "hidden_dims": (7,)},
]


@pytest.mark.parametrize("config", NETWORK_CONFIGS)
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_convnetwork_without_gradients_matches_the_recorded_forward(config, batch):
    # no_grad() runs each op's infer (one image: whole-row convolutions; small arrays: separable
    # pooling); with gradients the same module records the graph
    model = ConvNetwork(**{"channels": (8, 16), **config}, rng=np.random.default_rng(batch))
    size = model.in_channels * model.image_size**2
    x = rng.standard_normal((batch, size)).astype(np.float32)
    recorded = model(x)
    with no_grad():
        inferred = model(x)
    assert not inferred.require_grad and inferred.saved is None and inferred.dtype == np.float32
    np.testing.assert_allclose(inferred.value, recorded.value, rtol=1e-5, atol=1e-5)
    assert recorded.require_grad  # and gradients still reach every parameter
    cross_entropy()(recorded, np.arange(batch) % model.dim_output).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name


def test_convnetwork_without_pooling_or_hidden_layers():
    model = ConvNetwork(dim_output=3, image_size=8, channels=(2,), kernel_sizes=(3,),
                        paddings=(0,), pool=1, hidden_dims=(), rng=np.random.default_rng(0))
    assert model.feature_size == 6
    assert [p.shape for p in model.parameters()] == [(2, 1, 3, 3), (2,), (72, 3), (1, 3)]
    assert model(np.zeros((5, 64), np.float32)).shape == (5, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": (4, 8), "kernel_sizes": (3,)}, "kernel_sizes needs 2 entries"),
    ({"image_size": 8, "channels": (2, 2, 2), "kernel_sizes": (3, 3, 3), "paddings": (0, 0, 0)},
     "leaves no pixels"),
    ({"channels": (0,), "kernel_sizes": (3,), "paddings": (1,)}, "channels must hold integers"),
    ({"pool": 0}, "pool must be a positive integer"),
])
def test_convnetwork_rejects_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvNetwork(**kwargs)


def test_convnetwork_gradients_match_finite_differences():
    model = ConvNetwork(dim_output=3, image_size=6, channels=(2, 3), kernel_sizes=(3, 2),
                        paddings=(1, 0), pool=2, hidden_dims=(4,), rng=np.random.default_rng(1),
                        dtype=np.float64)
    x = rng.standard_normal((3, 36))
    labels = np.array([0, 2, 1])
    # the parameters in named_parameters() order, swapped for gradcheck's nodes while it runs
    holders = [(m, name) for m in [*model.convs, *model.layers] for name in ("W", "b")]
    assert [getattr(m, a) for m, a in holders] == model.parameters()

    def loss(*nodes):
        originals = [getattr(m, a) for m, a in holders]
        for (m, a), node in zip(holders, nodes):
            setattr(m, a, node)
        try:
            return cross_entropy()(model(x), labels)
        finally:
            for (m, a), p in zip(holders, originals):
                setattr(m, a, p)

    gradcheck(loss, [p.value for p in model.parameters()], name="ConvNetwork")


def test_convnetwork_learns_and_round_trips_through_a_model_file(tmp_path):
    # horizontal vs vertical bars at random places: a shape task an MLP would find no easier
    r = np.random.default_rng(3)
    images = np.zeros((256, 1, 12, 12), np.float32)
    labels = r.integers(0, 2, 256)
    for image, label, pos in zip(images, labels, r.integers(1, 11, 256)):
        if label:
            image[0, :, pos] = 1
        else:
            image[0, pos, :] = 1
    images += r.normal(0, 0.1, images.shape).astype(np.float32)
    model = ConvNetwork(dim_output=2, image_size=12, channels=(4,), kernel_sizes=(3,),
                        paddings=(1,), hidden_dims=(16,), rng=np.random.default_rng(0))
    optimizer = SGDWithMomentum(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        for start in range(0, 192, 32):
            optimizer.zero_grad()
            cross_entropy()(model(images[start : start + 32].reshape(32, -1)),
                            labels[start : start + 32]).backward()
            optimizer.step()
    with no_grad():
        logits = model(images[192:]).value
    assert (logits.argmax(1) == labels[192:]).mean() >= 0.95
    path = tmp_path / "cnn.npz"
    save(model, path, {"note": "test"})
    loaded, meta = load(path)
    assert isinstance(loaded, ConvNetwork) and loaded.config() == model.config()
    with no_grad():
        np.testing.assert_array_equal(loaded(images[192:]).value, logits)


def test_reuse_freed_memory_is_harmless():
    assert reuse_freed_memory() in (True, False)
    x = np.ones((2, 1, 5, 5), np.float32)
    assert Conv2d()(x, np.ones((1, 1, 3, 3), np.float32), np.zeros(1, np.float32)).shape == (
        2, 1, 3, 3)
