"""Known-answer tests of the PyTorch adapter (cav.models.torch_adapter)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import cav  # noqa: E402
from cav.errors import (  # noqa: E402
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    NonFiniteError,
    OutputNotFoundError,
)
from cav.models.torch_adapter import TorchAdapter, _runs_channels_last  # noqa: E402

EXACT = 1e-12  # float64 round-off bound for a handful of products


def seeded(seed: int) -> None:
    torch.manual_seed(seed)


def linear_head_model(units: int, final: nn.Module | None, seed: int = 0) -> nn.Sequential:
    """Features (Linear, Tanh) then a linear head, optionally a final activation."""
    seeded(seed)
    layers: list[nn.Module] = [nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, units)]
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers).double()


class Split(nn.Module):
    """A non-Sequential model: encoder, dropout, head and a final sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(4 * 6 * 6)
        self.head = nn.Linear(4 * 6 * 6, 1)
        self.out = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x).flatten(1)
        return self.out(self.head(self.norm(self.drop(h))))


def split_model(seed: int = 0) -> Split:
    seeded(seed)
    model = Split().double()
    model.norm.running_mean.normal_()
    model.norm.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def inputs(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(7, 6))


@pytest.fixture
def images(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(5, 3, 8, 8))


# Linear heads: the gradient at the features is the head's weight row, exactly.


def test_linear_head_logit_gradient(inputs: np.ndarray) -> None:
    model = linear_head_model(1, None)
    weight = model[2].weight.detach().numpy()[0]
    grads = cav.wrap(model).gradients(inputs, "1", target=1)["1"]
    assert grads.dtype == np.float64
    assert np.array_equal(grads, np.tile(weight, (len(inputs), 1)))


def test_linear_head_class_zero_negates(inputs: np.ndarray) -> None:
    model = linear_head_model(1, nn.Sigmoid())
    weight = model[2].weight.detach().numpy()[0]
    grads = cav.wrap(model).gradients(inputs, 1, target=0)["1"]
    assert np.array_equal(grads, np.tile(-weight, (len(inputs), 1)))


def test_linear_head_derivatives_constant(inputs: np.ndarray, rng: np.random.Generator) -> None:
    model = linear_head_model(3, nn.Softmax(dim=1))
    weight = model[2].weight.detach().numpy()
    direction = rng.normal(size=8)
    direction /= np.linalg.norm(direction)
    adapter = cav.wrap(model)
    for target in range(3):
        grads = adapter.gradients(inputs, "1", target=target)["1"]
        derivatives = cav.directional_derivatives(grads, direction)
        assert np.allclose(derivatives, weight[target] @ direction, rtol=0, atol=EXACT)
        expected_score = 1.0 if weight[target] @ direction > 0 else 0.0
        assert cav.tcav_score(derivatives) == expected_score


def test_linear_head_probability_gradient(inputs: np.ndarray) -> None:
    model = linear_head_model(1, nn.Sigmoid())
    weight = model[2].weight.detach().numpy()[0]
    p = cav.wrap(model).predict(inputs)[:, 1]
    grads = cav.wrap(model).gradients(inputs, "1", target=1, output="probability")["1"]
    expected = (p * (1 - p))[:, None] * weight
    assert np.allclose(grads, expected, rtol=0, atol=EXACT)


def test_softmax_probability_gradient(inputs: np.ndarray) -> None:
    model = linear_head_model(3, nn.Softmax(dim=1))
    weight = model[2].weight.detach().numpy()
    adapter = cav.wrap(model)
    p = adapter.predict(inputs)
    grads = adapter.gradients(inputs, "1", target=2, output="probability")["1"]
    # d p_k / d h = p_k (W_k - sum_j p_j W_j)
    expected = p[:, 2:3] * (weight[2] - p @ weight)
    assert np.allclose(grads, expected, rtol=0, atol=EXACT)


def test_sigmoid_loss_gradient(inputs: np.ndarray) -> None:
    model = linear_head_model(1, nn.Sigmoid())
    weight = model[2].weight.detach().numpy()[0]
    adapter = cav.wrap(model)
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    p = adapter.predict(inputs)[:, 1]
    grads = adapter.gradients(inputs, "1", target=1, output="loss", labels=labels)["1"]
    # d/dh [y log p + (1 - y) log(1 - p)] = (y - p) w
    expected = (labels - p)[:, None] * weight
    assert np.allclose(grads, expected, rtol=0, atol=EXACT)


def test_loss_labels_default_target(inputs: np.ndarray) -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    default = adapter.gradients(inputs, "1", target=0, output="loss")["1"]
    explicit = adapter.gradients(inputs, "1", target=1, output="loss", labels=np.zeros(7))["1"]
    assert np.array_equal(default, explicit)


def test_softmax_loss_gradient(inputs: np.ndarray) -> None:
    model = linear_head_model(3, nn.Softmax(dim=1))
    weight = model[2].weight.detach().numpy()
    adapter = cav.wrap(model)
    labels = np.array([0, 1, 2, 2, 1, 0, 1])
    p = adapter.predict(inputs)
    grads = adapter.gradients(inputs, "1", target=0, output="loss", labels=labels)["1"]
    # d/dh log p_y = W_y - sum_j p_j W_j
    expected = weight[labels] - p @ weight
    assert np.allclose(grads, expected, rtol=0, atol=EXACT)


def test_saturated_sigmoid_loss_zero(inputs: np.ndarray) -> None:
    model = linear_head_model(1, nn.Sigmoid())
    with torch.no_grad():
        model[2].bias.fill_(60.0)
    labels = np.array([1, 0, 1, 0, 1, 0, 1])
    grads = cav.wrap(model).gradients(inputs, "1", target=1, output="loss", labels=labels)["1"]
    assert np.all(grads == 0.0)


def test_raw_logits_loss_unclipped(inputs: np.ndarray) -> None:
    model = linear_head_model(1, None)
    with torch.no_grad():
        model[2].bias.fill_(20.0)
    weight = model[2].weight.detach().numpy()[0]
    adapter = cav.wrap(model)
    z = adapter.gradients(inputs, "2", target=1)["2"]  # d z / d z = 1
    assert np.all(z == 1.0)
    logits = adapter.activations(inputs, "2")["2"][:, 0]
    grads = adapter.gradients(inputs, "1", target=1, output="loss")["1"]
    # d/dh log sigmoid(z) = (1 - sigmoid(z)) w = sigmoid(-z) w
    expected = (1.0 / (1.0 + np.exp(logits)))[:, None] * weight
    assert np.all(np.abs(grads) > 0)
    assert np.allclose(grads, expected, rtol=1e-9, atol=0)


def test_raw_logits_probability_columns(inputs: np.ndarray) -> None:
    adapter = cav.wrap(linear_head_model(1, None))
    logits = adapter.activations(inputs, "2")["2"][:, 0]
    probabilities = adapter.predict(inputs)
    assert np.allclose(probabilities[:, 1], 1.0 / (1.0 + np.exp(-logits)), rtol=1e-12)
    assert np.allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)


# Finite differences at an intermediate layer.


def perturbed_objective(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, delta: torch.Tensor, objective
) -> np.ndarray:
    def add(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + delta.reshape(output.shape)

    handle = layer.register_forward_hook(add)
    try:
        with torch.no_grad():
            return objective(model(x)).numpy()
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("output", "objective"),
    [
        ("probability", lambda p: p[:, 0]),
        ("loss", lambda p: torch.log(p[:, 0])),
    ],
)
def test_gradient_matches_differences(images: np.ndarray, output: str, objective) -> None:
    model = split_model().eval()
    layer_name = "encoder.0"
    grads = cav.wrap(model).gradients(images, layer_name, target=1, output=output)[layer_name]
    x = torch.as_tensor(images)
    width = grads.shape[1]
    step = 1e-6
    for column in np.random.default_rng(3).choice(width, size=6, replace=False):
        delta = torch.zeros(len(images), width, dtype=torch.float64)
        delta[:, column] = step
        layer = model.encoder[0]
        up = perturbed_objective(model, layer, x, delta, objective)
        down = perturbed_objective(model, layer, x, -delta, objective)
        central = (up - down) / (2 * step)
        assert np.allclose(grads[:, column], central, rtol=1e-6, atol=1e-9), column


def test_logit_gradient_matches_differences(images: np.ndarray) -> None:
    model = split_model().eval()
    grads = cav.wrap(model).gradients(images, "norm", target=1)["norm"]
    x = torch.as_tensor(images)
    step = 1e-6

    def logit(p: torch.Tensor) -> torch.Tensor:
        return torch.log(p[:, 0] / (1 - p[:, 0]))

    for column in (0, 17, 143):
        delta = torch.zeros(len(images), grads.shape[1], dtype=torch.float64)
        delta[:, column] = step
        up = perturbed_objective(model, model.norm, x, delta, logit)
        down = perturbed_objective(model, model.norm, x, -delta, logit)
        assert np.allclose(grads[:, column], (up - down) / (2 * step), rtol=1e-6, atol=1e-9)


# Planted concept: the output depends on a known direction of the hidden layer.


def planted_network(seed: int) -> tuple[nn.Sequential, np.ndarray, np.ndarray]:
    """Train a head on labels y = [u . h > 0] over a fixed linear encoder h = A x.

    A is orthogonal, so the hidden activations of normal inputs are isotropic and the
    CAV of a shift along u points along u. Returns the model, A and the unit vector u.
    """
    generator = np.random.default_rng(seed)
    seeded(seed)
    dim = 12
    encoder, _ = np.linalg.qr(generator.normal(size=(dim, dim)))
    planted = generator.normal(size=dim)
    planted /= np.linalg.norm(planted)
    model = nn.Sequential(
        nn.Linear(dim, dim, bias=False),
        nn.Linear(dim, 24),
        nn.Tanh(),
        nn.Linear(24, 1),
    ).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(encoder))
    model[0].weight.requires_grad_(False)
    x = torch.as_tensor(generator.normal(size=(1000, dim)))
    y = ((x @ torch.as_tensor(encoder).T) @ torch.as_tensor(planted) > 0).double()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        loss.backward()
        optimizer.step()
    model[0].weight.requires_grad_(True)
    return model, encoder, planted


def moved_images(
    encoder: np.ndarray, direction: np.ndarray, base: np.ndarray, shift: float
) -> np.ndarray:
    """Inputs whose hidden activations A x move by ``shift * direction``."""
    return base + shift * np.linalg.solve(encoder, direction)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_concept_scores(seed: int) -> None:
    """The planted direction scores near 1; an orthogonal one barely moves the output.

    The TCAV score of the unrelated concept is not asserted: the output depends on u
    alone, so that score follows the sign of the CAV's small chance component along u.
    """
    model, encoder, planted = planted_network(seed)
    generator = np.random.default_rng(100 + seed)
    unrelated = generator.normal(size=planted.size)
    unrelated -= (unrelated @ planted) * planted
    unrelated /= np.linalg.norm(unrelated)
    adapter = cav.wrap(model)

    base = generator.normal(size=(100, planted.size))
    inputs = generator.normal(size=(300, planted.size))
    class_one = inputs[(inputs @ encoder.T) @ planted > 0]
    grads = adapter.gradients(class_one, "0", target=1)["0"]

    vectors, derivatives = {}, {}
    for name, direction in [("planted", planted), ("unrelated", unrelated)]:
        concept = moved_images(encoder, direction, base, shift=3.0)
        acts = adapter.activations(np.concatenate([concept, base]), "0")["0"]
        vectors[name] = cav.fit_cav(acts[:100], acts[100:], seed=seed).direction
        derivatives[name] = cav.directional_derivatives(grads, vectors[name])

    assert vectors["planted"] @ planted > 0.85
    assert abs(vectors["unrelated"] @ planted) < 0.3
    assert cav.tcav_score(derivatives["planted"]) >= 0.95
    ratio = np.abs(derivatives["unrelated"]).mean() / np.abs(derivatives["planted"]).mean()
    assert ratio < 0.25


# Model state: modes, flags, hooks and dropout.


def test_modes_and_flags_restored(images: np.ndarray) -> None:
    model = split_model()
    model.train()
    model.norm.eval()
    model.head.weight.requires_grad_(False)
    modes = {name: module.training for name, module in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    adapter = cav.wrap(model)
    adapter.gradients(images, ["encoder.1", "head"], target=1)
    adapter.activations(images, "norm")
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_hooks_removed_after_error(images: np.ndarray) -> None:
    model = split_model().train()
    with pytest.raises(InvalidArgumentError, match="target=3"):
        cav.wrap(model).gradients(images, "encoder.0", target=3)
    for module in model.modules():
        assert not module._forward_hooks
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


def test_dropout_inactive_in_passes(images: np.ndarray) -> None:
    model = split_model().train()
    adapter = cav.wrap(model)
    first = adapter.gradients(images, "encoder.0", target=1)["encoder.0"]
    second = adapter.gradients(images, "encoder.0", target=1)["encoder.0"]
    assert np.array_equal(first, second)
    model.eval()
    with torch.no_grad():
        expected = model(torch.as_tensor(images)).numpy()[:, 0]
    model.train()
    assert np.allclose(adapter.predict(images)[:, 1], expected, rtol=1e-12)


@pytest.mark.parametrize("batch_size", [64, 2])
def test_inplace_relu_keeps_activations(images: np.ndarray, batch_size: int) -> None:
    # The ReLU after the layer changes its output in place. The first batch detects the
    # change and runs again with a copy, and later batches copy from the start.
    model = split_model()
    adapter = cav.wrap(model)
    acts = adapter.activations(images, "encoder.0", batch_size=batch_size)["encoder.0"]
    with torch.no_grad():
        expected = model.encoder[0](torch.as_tensor(images)).flatten(1).numpy()
    assert (expected < 0).any()
    assert np.array_equal(acts, expected)
    again = adapter.activations(images, "encoder.0", batch_size=batch_size)["encoder.0"]
    assert np.array_equal(again, expected)


def test_outputs_pass_on_uncopied(inputs: np.ndarray) -> None:
    # Without in-place operations, the module after the layer receives the captured tensor
    # itself in a pass without gradients, and a copy in a gradient pass.
    model = linear_head_model(1, nn.Sigmoid())
    produced, received = [], []
    model[0].register_forward_hook(lambda _m, _i, output: produced.append(output.data_ptr()))
    model[1].register_forward_pre_hook(lambda _m, args: received.append(args[0].data_ptr()))
    adapter = cav.wrap(model)
    adapter.activations(inputs, ["0", "1"])
    assert received == produced
    produced.clear()
    received.clear()
    adapter.gradients(inputs, "0", target=1)
    assert received[0] != produced[0]


def test_frozen_model_still_differentiates(inputs: np.ndarray) -> None:
    model = linear_head_model(1, nn.Sigmoid())
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    grads = cav.wrap(model).gradients(inputs, ["0", "1"], target=1)
    assert np.all(np.isfinite(grads["0"]))
    assert not any(p.requires_grad for p in model.parameters())


# Batching and inputs.


def test_batches_match_one_pass(images: np.ndarray) -> None:
    adapter = cav.wrap(split_model())
    whole = adapter.gradients(images, ["encoder.0", "head"], target=1, batch_size=64)
    pieces = list(adapter.iter_gradients(images, ["encoder.0", "head"], target=1, batch_size=2))
    assert [len(piece["head"]) for piece in pieces] == [2, 2, 1]
    for name in whole:
        joined = np.concatenate([piece[name] for piece in pieces])
        assert np.allclose(joined, whole[name], rtol=1e-12, atol=0), name


def test_iter_gradients_checks_eagerly(images: np.ndarray) -> None:
    adapter = cav.wrap(split_model())
    with pytest.raises(InvalidArgumentError, match="output="):
        adapter.iter_gradients(images, "head", target=1, output="logits")
    with pytest.raises(InvalidArgumentError, match="batch_size=0"):
        adapter.iter_gradients(images, "head", target=1, batch_size=0)


def test_tensor_and_integer_inputs(images: np.ndarray) -> None:
    adapter = cav.wrap(split_model())
    from_numpy = adapter.activations(images, "head")["head"]
    from_tensor = adapter.activations(torch.as_tensor(images).float(), "head")["head"]
    assert from_tensor.dtype == np.float64
    assert np.allclose(from_tensor, from_numpy, rtol=1e-5, atol=1e-6)
    integers = np.round(images * 10).astype(np.int16)
    cast = adapter.activations(integers, "head")["head"]
    assert np.allclose(cast, adapter.activations(integers.astype(float), "head")["head"])


def test_float32_model_returns_float32(images: np.ndarray) -> None:
    adapter = cav.wrap(split_model().float())
    grads = adapter.gradients(images, "encoder.0", target=1)["encoder.0"]
    assert grads.dtype == np.float32
    assert grads.shape == (5, 4 * 6 * 6)


def test_nonfinite_input_rejected(images: np.ndarray) -> None:
    images[2, 0, 1, 1] = np.nan
    with pytest.raises(NonFiniteError, match="input x"):
        cav.wrap(split_model()).activations(images, "head")


class Overflow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 0.0


def test_nonfinite_activation_names_layer(inputs: np.ndarray) -> None:
    model = nn.Sequential(nn.Linear(6, 3), Overflow(), nn.Linear(3, 1)).double()
    with pytest.raises(NonFiniteError, match="layer '1'"):
        cav.wrap(model).activations(inputs, "1")


class OverflowAbove(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 100, torch.inf, x)


def test_nonfinite_index_counts_batches(inputs: np.ndarray) -> None:
    model = nn.Sequential(OverflowAbove(), nn.Linear(6, 1)).double()
    inputs[3, 0] = 1000.0
    with pytest.raises(NonFiniteError, match="first at input index 3"):
        cav.wrap(model).activations(inputs, "0", batch_size=2)


def test_reversed_view_input(images: np.ndarray) -> None:
    adapter = cav.wrap(split_model())
    reversed_acts = adapter.activations(images[::-1], "head")["head"]
    expected = adapter.activations(images, "head")["head"][::-1]
    assert np.allclose(reversed_acts, expected, rtol=1e-12, atol=1e-14)


def test_empty_input_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="no examples"):
        cav.wrap(split_model()).activations(np.zeros((0, 3, 8, 8)), "head")


# Layers.


def test_layer_names_dotted_paths() -> None:
    names = cav.wrap(split_model()).layer_names
    assert names == ["encoder", "encoder.0", "encoder.1", "drop", "norm", "head", "out"]


def test_unknown_layer_lists_closest() -> None:
    with pytest.raises(LayerNotFoundError, match=r"valid names: 'head'") as info:
        cav.wrap(split_model()).resolve_layer("haed")
    assert "'encoder.0'" in str(info.value)


def test_layer_index_sequential_children() -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    assert adapter.resolve_layer(2) == "2"
    assert adapter.resolve_layer(np.int64(3)) == "3"


def test_layer_index_out_of_range() -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    with pytest.raises(LayerNotFoundError, match="0 to 3"):
        adapter.resolve_layer(4)


def test_negative_layer_index_rejected() -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    with pytest.raises(LayerNotFoundError, match="negative"):
        adapter.resolve_layer(-1)


def test_layer_index_needs_sequential() -> None:
    with pytest.raises(LayerNotFoundError, match=r"nn\.Sequential"):
        cav.wrap(split_model()).resolve_layer(0)


def test_bool_layer_rejected() -> None:
    with pytest.raises(InvalidTypeError, match="layer must be an integer"):
        cav.wrap(split_model()).resolve_layer(True)


class SharedRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.act(x))))


def test_shared_module_rejected(inputs: np.ndarray) -> None:
    adapter = cav.wrap(SharedRelu().double())
    with pytest.raises(InvalidArgumentError, match="more than once"):
        adapter.activations(inputs, "act")
    assert adapter.gradients(inputs, "fc1", target=1)["fc1"].shape == (7, 6)


def test_unused_layer_rejected(inputs: np.ndarray) -> None:
    model = linear_head_model(2, None)
    model.add_module("spare", nn.Linear(2, 2))
    model = nn.ModuleDict({"net": model})

    class Uses(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner["net"][2](self.inner["net"][1](self.inner["net"][0](x)))

    with pytest.raises(InvalidArgumentError, match="did not run"):
        cav.wrap(Uses(model).double()).activations(inputs, "inner.net.spare")


# Outputs and targets.


class FunctionalSigmoid(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x)) * self.scale


def test_logit_not_found_error(inputs: np.ndarray) -> None:
    adapter = cav.wrap(FunctionalSigmoid().double())
    with pytest.raises(OutputNotFoundError, match="output='probability'"):
        adapter.gradients(inputs, "fc", target=1)
    grads = adapter.gradients(inputs, "fc", target=1, output="probability")["fc"]
    p = adapter.predict(inputs)[:, 1]
    assert np.allclose(grads[:, 0], p * (1 - p), rtol=1e-12)


def test_unknown_output_range_checked(inputs: np.ndarray) -> None:
    adapter = cav.wrap(FunctionalSigmoid(scale=3.0).double())
    with pytest.raises(OutputNotFoundError, match="not a probability"):
        adapter.gradients(inputs, "fc", target=1, output="probability")


def test_target_out_of_range(inputs: np.ndarray) -> None:
    adapter = cav.wrap(linear_head_model(3, nn.Softmax(dim=1)))
    with pytest.raises(InvalidArgumentError, match=r"target=3 .* 0 to 2"):
        adapter.gradients(inputs, "1", target=3)
    with pytest.raises(InvalidArgumentError, match="negative"):
        adapter.gradients(inputs, "1", target=-1)


def test_sigmoid_target_range(inputs: np.ndarray) -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    with pytest.raises(InvalidArgumentError, match=r"target=2 .* 0 to 1"):
        adapter.gradients(inputs, "1", target=2)


def test_label_out_of_range(inputs: np.ndarray) -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    with pytest.raises(InvalidArgumentError, match=r"labels\[3\]=2"):
        adapter.gradients(inputs, "1", 1, output="loss", labels=[0, 1, 0, 2, 1, 0, 1])


def test_labels_need_loss_output(inputs: np.ndarray) -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    with pytest.raises(InvalidArgumentError, match="only with output='loss'"):
        adapter.gradients(inputs, "1", target=1, labels=np.ones(7))


def test_labels_length_checked(inputs: np.ndarray) -> None:
    adapter = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    with pytest.raises(InvalidArgumentError, match=r"shape \(7,\)"):
        adapter.gradients(inputs, "1", target=1, output="loss", labels=np.ones(6))


def test_predict_and_n_classes(inputs: np.ndarray) -> None:
    sigmoid = cav.wrap(linear_head_model(1, nn.Sigmoid()))
    softmax = cav.wrap(linear_head_model(4, nn.Softmax(dim=-1)))
    assert sigmoid.n_classes == 2
    assert softmax.n_classes == 4
    assert sigmoid.predict(inputs).shape == (7, 2)
    assert np.allclose(softmax.predict(inputs).sum(axis=1), 1.0, rtol=1e-12)


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.exp() / x.exp().sum(dim=1, keepdim=True)


def test_n_classes_recorded_by_pass(inputs: np.ndarray) -> None:
    adapter = cav.wrap(nn.Sequential(nn.Linear(6, 3), Normalize()).double())
    with pytest.raises(InvalidArgumentError, match="predict"):
        _ = adapter.n_classes
    adapter.predict(inputs)
    assert adapter.n_classes == 3


# Wrapping and fingerprints.


def test_wrap_returns_torch_adapter() -> None:
    adapter = cav.wrap(split_model())
    assert isinstance(adapter, TorchAdapter)
    assert adapter.framework == "torch"
    assert cav.wrap(adapter) is adapter


def test_wrap_rejects_unknown_object() -> None:
    with pytest.raises(InvalidTypeError, match=r"torch\.nn\.Module or a Keras 3 model"):
        cav.wrap(object())


def test_fingerprint_tracks_weights() -> None:
    model = split_model()
    twin = copy.deepcopy(model)
    assert cav.wrap(model).fingerprint() == cav.wrap(twin).fingerprint()
    with torch.no_grad():
        twin.head.bias.add_(1e-9)
    assert cav.wrap(model).fingerprint() != cav.wrap(twin).fingerprint()
    twin = copy.deepcopy(model)
    twin.norm.running_mean.add_(1.0)
    assert cav.wrap(model).fingerprint() != cav.wrap(twin).fingerprint()


# Passes without gradients stop after the deepest requested layer when that is exact.


class CountCalls(nn.Module):
    """Identity that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_activations_stop_at_deepest_layer(inputs: np.ndarray) -> None:
    model = linear_head_model(2, None)
    counter = CountCalls()
    model.insert(2, counter)
    adapter = cav.wrap(model)
    acts = adapter.activations(inputs, ["1", "0"], batch_size=7)
    assert counter.calls == 0
    with torch.no_grad():
        first = model[0](torch.as_tensor(inputs))
        expected = {"0": first.numpy(), "1": model[1](first).numpy()}
    for name, values in expected.items():
        assert np.array_equal(acts[name], values), name
    adapter.predict(inputs, batch_size=3)
    assert counter.calls == 3
    adapter.gradients(inputs, "0", target=1, batch_size=7)
    assert counter.calls == 4


def test_activations_run_whole_model(inputs: np.ndarray) -> None:
    # The pass runs to the output when a module after the deepest layer could call a
    # requested module again, or when the model has hooks or a forward of its own.
    shared = nn.Tanh()
    counter = CountCalls()
    reused = nn.Sequential(nn.Linear(6, 8), shared, nn.Linear(8, 8), shared, counter).double()
    with pytest.raises(InvalidArgumentError, match="more than once"):
        cav.wrap(reused).activations(inputs, "1")
    hooked = linear_head_model(2, None)
    hooked.append(counter)
    hooked.register_forward_hook(lambda _module, _inputs, output: output)
    cav.wrap(hooked).activations(inputs, "0")
    assert counter.calls == 1

    class Residual(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + super().forward(x)

    residual = Residual(nn.Linear(6, 6), nn.Tanh(), counter).double()
    cav.wrap(residual).activations(inputs, "0")
    assert counter.calls == 2


# CPU image batches pass through plain Sequential CNNs in channels-last memory format.


def small_cnn(seed: int = 0) -> nn.Sequential:
    seeded(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6)),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 2),
    )


def test_channels_last_pass_matches_nchw(rng: np.random.Generator) -> None:
    model = small_cnn()
    model[2][1].running_mean.normal_()
    x = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
    batch = torch.from_numpy(x)
    assert _runs_channels_last(model, batch)
    adapter = cav.wrap(model)
    layers = ["1", "2", "3"]
    acts = adapter.activations(x, layers, batch_size=4)
    grads = adapter.gradients(x, layers, target=1, output="logit", batch_size=4)

    # The same passes by hand, in NCHW format. With two raw-logit units, output="logit"
    # differentiates the target class's logit.
    model.eval()
    with torch.enable_grad():
        first = model[1](model[0](batch)).requires_grad_(True)
        second = model[2](first)
        third = model[3](second)
        logits = model[5](model[4](third))
        expected_grads = torch.autograd.grad(logits[:, 1].sum(), [first, second, third])
    expected_acts = [first, second, third]
    for name, act, grad in zip(layers, expected_acts, expected_grads, strict=True):
        assert acts[name].flags.c_contiguous
        np.testing.assert_allclose(acts[name], act.detach().reshape(6, -1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads[name], grad.reshape(6, -1), rtol=1e-5, atol=1e-6)
    assert not model.training


class FlattenByView(nn.Module):
    """Flattens with view, which fails on a channels-last tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1)


def test_channels_last_only_for_plain_cnns(rng: np.random.Generator) -> None:
    batch = torch.from_numpy(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
    custom = small_cnn()
    custom[4] = FlattenByView()
    assert not _runs_channels_last(custom, batch)
    acts = cav.wrap(custom).activations(batch.numpy(), ["4", "5"])
    assert acts["4"].shape == (2, 54)

    hooked = small_cnn()
    hooked[3].register_forward_hook(lambda _module, _inputs, output: output.view(2, -1))
    assert not _runs_channels_last(hooked, batch)
    cav.wrap(hooked).activations(batch.numpy(), "1")

    assert not _runs_channels_last(small_cnn(), batch.reshape(2, 3, 64))
    assert not _runs_channels_last(small_cnn().double(), batch.double())
    assert not _runs_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), batch)
    assert not _runs_channels_last(Split(), batch)
