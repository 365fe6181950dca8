"""Modules, initializers and networks: naming, state dicts, configs, gradients, learning."""

from __future__ import annotations

import numpy as np
import pytest

from autodiff import Parameter, SGDWithMomentum, cross_entropy, nll, no_grad
from autodiff.gradcheck import gradcheck
from models import (
    ConvNetwork,
    DeepNetwork,
    DenseStack,
    IncompatibleKeys,
    LinearNetwork,
    Module,
    ModuleList,
    build,
    glorot_init,
    kaiming_init,
    zero_init,
)
from models.module import StateDictError
from models.registry import parameter_count


def test_named_parameters_are_stable_dotted_names():
    model = DeepNetwork(784, 10, 32, 2, rng=np.random.default_rng(0))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b",
                     "layers.2.W", "layers.2.b"]
    assert model.parameters() == [p for _, p in model.named_parameters()]
    assert list(model.state_dict()) == names
    assert model.num_parameters() == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10


@pytest.mark.parametrize("tanh", [False, True])
def test_dense_stack_is_linear_activation_linear(tanh):
    stack = DenseStack([5, 4, 3, 2], tanh=tanh, rng=np.random.default_rng(0))
    assert [n for n, _ in stack.named_parameters()] == ["0.W", "0.b", "1.W", "1.b", "2.W", "2.b"]
    x = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)
    act = np.tanh if tanh else (lambda v: np.maximum(v, 0))
    h = x
    for i, layer in enumerate(stack):
        h = h @ layer.W.value + layer.b.value
        h = act(h) if i < 2 else h
    with no_grad():
        np.testing.assert_allclose(stack(x).value, h, rtol=1e-5, atol=1e-6)


def test_the_mlp_and_the_cnn_share_one_dense_stack():
    mlp = DeepNetwork(784, 10, 16, 2, tanh=True, rng=np.random.default_rng(0))
    cnn = ConvNetwork(channels=(2,), kernel_sizes=(3,), paddings=(1,), hidden_dims=(8,),
                      rng=np.random.default_rng(0))
    assert isinstance(mlp.layers, DenseStack) and isinstance(cnn.layers, DenseStack)
    assert mlp.use_tanh and mlp.layers.tanh and not cnn.layers.tanh
    assert [layer.dim_output for layer in cnn.layers] == [8, 10]


def test_custom_module_discovers_nested_parameters():
    class Net(Module):
        def __init__(self):
            self.scale = Parameter(np.ones(1))
            self.blocks = ModuleList([LinearNetwork(2, 2), Parameter(np.zeros(2))])
            self.head = LinearNetwork(2, 1)
            self.not_a_param = np.ones(3)

    names = [name for name, _ in Net().named_parameters()]
    assert names == ["scale", "blocks.0.W", "blocks.0.b", "blocks.1", "head.W", "head.b"]


def test_module_list_is_a_module_that_behaves_like_a_list():
    layers = ModuleList([LinearNetwork(3, 4), LinearNetwork(4, 2)])
    assert isinstance(layers, Module) and len(layers) == 2
    assert layers[1].dim_output == 2 and [m.dim_input for m in layers] == [3, 4]
    head = layers[:-1]
    assert isinstance(head, ModuleList) and len(head) == 1 and head[0] is layers[0]
    layers.append(LinearNetwork(2, 1))
    assert [n for n, _ in layers.named_parameters("net.")] == [
        "net.0.W", "net.0.b", "net.1.W", "net.1.b", "net.2.W", "net.2.b"]
    assert list(layers.state_dict()) == ["0.W", "0.b", "1.W", "1.b", "2.W", "2.b"]
    layers.zero_grad()  # Module's methods work on it
    assert layers.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2 + 2 + 1
    assert ModuleList().parameters() == []


def test_zero_grad_on_module():
    model = LinearNetwork(3, 2)
    model(np.ones((1, 3), dtype=np.float32)).sum().backward()
    assert model.W.grad is not None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_load_state_dict_reports_every_problem_at_once():
    model = DeepNetwork(8, 3, 4, 2)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    del state["layers.2.b"]
    state["layers.0.W"] = np.zeros((8, 5), np.float32)
    state["extra"] = np.zeros(1, np.float32)
    state["layers.1.b"] = np.zeros((1, 4), np.int64)
    with pytest.raises(StateDictError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert message.startswith("Error(s) loading state_dict into DeepNetwork: ")
    assert 'missing "layers.2.b"' in message
    assert 'unexpected "extra"' in message
    assert "size mismatch for layers.0.W: file (8, 5), model (8, 4)" in message
    assert "dtype mismatch for layers.1.b" in message


def test_load_state_dict_copies_in_place_and_non_strict_skips_missing():
    model = LinearNetwork(3, 2)
    w = model.W.value
    keys = model.load_state_dict({"W": np.full((3, 2), 7.0, np.float32),
                                  "extra": np.zeros(1)}, strict=False)
    assert model.W.value is w and (w == 7).all()
    assert keys == IncompatibleKeys(missing_keys=["b"], unexpected_keys=["extra"])
    assert keys.missing_keys == ["b"] and keys.unexpected_keys == ["extra"]  # as PyTorch names
    with pytest.raises(StateDictError, match='missing "b"'):
        model.load_state_dict({"W": w})
    assert model.load_state_dict(model.state_dict()) == ([], [])


def test_initializers():
    rng = np.random.default_rng(0)
    w = np.empty((400, 300), np.float32)
    glorot_init(w, rng)
    limit = np.sqrt(6 / 700)
    assert w.dtype == np.float32 and np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    kaiming_init(w, rng)
    assert w.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert abs(w.mean()) < 0.005
    b = np.ones(5)
    zero_init(b)
    assert not b.any()
    with pytest.raises(ValueError, match="2-d weight matrix"):
        glorot_init(np.empty(3))


def test_initializers_are_reproducible_with_a_generator_and_with_the_lab_seed():
    a, b = DeepNetwork(5, 2, 4, 2, rng=np.random.default_rng(7)), DeepNetwork(
        5, 2, 4, 2, rng=np.random.default_rng(7))
    assert all(np.array_equal(x.value, y.value) for x, y in zip(a.parameters(), b.parameters()))
    np.random.seed(42)
    c = LinearNetwork(4, 3)
    np.random.seed(42)
    d = LinearNetwork(4, 3)
    np.testing.assert_array_equal(c.W.value, d.W.value)


def test_config_rebuilds_the_same_architecture():
    for model in (LinearNetwork(12, 3), DeepNetwork(12, 3, 7, 3, tanh=True)):
        rebuilt = build(model.config())
        assert type(rebuilt) is type(model) and rebuilt.config() == model.config()
        assert [p.value.shape for p in rebuilt.parameters()] == [
            p.value.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="unknown architecture"):
        build({"class": "Transformer"})
    with pytest.raises(ValueError, match="invalid DeepNetwork config"):
        build({"class": "DeepNetwork", "dim_input": 3})
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        DeepNetwork(3, 2, 0, 1)


@pytest.mark.parametrize("model", [
    LinearNetwork(12, 3), DeepNetwork(12, 3, 7, 1), DeepNetwork(12, 3, 7, 3, tanh=True),
    ConvNetwork(), ConvNetwork(channels=(4,), kernel_sizes=(3,), paddings=(1,), pool=1,
                               hidden_dims=(), in_channels=2, image_size=9, dim_output=5),
])
def test_parameter_count_is_that_of_the_built_network(model):
    assert parameter_count(model.config()) == model.num_parameters()


def test_parameter_count_refuses_what_build_would():
    with pytest.raises(ValueError, match="more than the 16,000,000 a model may have"):
        build({"class": "DeepNetwork", "dim_input": 784, "dim_output": 10,
               "hidden_dim": 20_000, "n_layers": 4})
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        parameter_count({"class": "DeepNetwork", "dim_input": 3, "dim_output": 2,
                         "hidden_dim": "many", "n_layers": 1})
    with pytest.raises(ValueError, match="leaves no pixels"):
        parameter_count({**ConvNetwork().config(), "kernel_sizes": [5, 29]})


@pytest.mark.parametrize("tanh", [False, True])
def test_deep_network_with_nll_passes_gradcheck(tanh):
    model = DeepNetwork(5, 3, 4, 2, tanh=tanh, rng=np.random.default_rng(3), dtype=np.float64)
    x = np.random.default_rng(4).standard_normal((6, 5))
    labels = np.array([0, 1, 2, 2, 1, 0])
    named = list(model.named_parameters())

    def loss(*nodes):
        # the gradcheck's nodes stand in for the parameters (layers.<i>.<W|b>)
        for (name, _), node in zip(named, nodes):
            _, index, attribute = name.split(".")
            setattr(model.layers[int(index)], attribute, node)
        return nll()(model(x), labels).mean()

    gradcheck(loss, [p.value.copy() for _, p in named], name=f"DeepNetwork(tanh={tanh}) + nll")


@pytest.mark.parametrize("make", [
    lambda: DeepNetwork(784, 10, 100, 2, rng=np.random.default_rng(0)),
    lambda: DeepNetwork(20, 5, 8, 3, tanh=True, rng=np.random.default_rng(1)),
    lambda: LinearNetwork(784, 10, rng=np.random.default_rng(2)),
], ids=["mlp", "tanh", "linear"])
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_networks_without_gradients_match_the_recorded_forward(make, batch):
    model = make()
    x = np.random.default_rng(batch).standard_normal((batch, model.dim_input)).astype(np.float32)
    recorded = model(x)
    with no_grad():
        inferred = model(x)
    assert not inferred.require_grad and inferred.saved is None
    np.testing.assert_allclose(inferred.value, recorded.value, rtol=1e-5, atol=1e-5)
    cross_entropy()(recorded, np.arange(batch) % model.dim_output).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_deep_network_stays_float32():
    model = DeepNetwork(6, 3, 4, 2)
    out = model(np.ones((2, 6)))  # float64 data is cast to the parameters' dtype
    assert out.value.dtype == np.float32


def spirals(n_per_class, rng):
    """Three interleaved spirals: not linearly separable."""
    xs, ys = [], []
    for label in range(3):
        t = np.linspace(0.2, 1, n_per_class)
        angle = 4 * t + label * 2 * np.pi / 3 + rng.normal(0, 0.1, n_per_class)
        xs.append(np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1))
        ys.append(np.full(n_per_class, label))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def test_deep_network_learns_spirals_with_momentum_minibatches():
    rng = np.random.default_rng(0)
    x, y = spirals(200, rng)
    model = DeepNetwork(2, 3, 64, 2, rng=rng)
    optimizer = SGDWithMomentum(model.parameters(), lr=0.1, momentum=0.9)
    with no_grad():
        before = (model(x).value.argmax(1) == y).mean()
    for _ in range(150):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 32):
            idx = order[start:start + 32]
            optimizer.zero_grad()
            cross_entropy()(model(x[idx]), y[idx]).backward()
            optimizer.step()
    with no_grad():
        after = (model(x).value.argmax(1) == y).mean()
    assert before < 0.6
    assert after > 0.95
