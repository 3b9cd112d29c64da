import pytest
import torch
from torch import nn

from fedcls.algorithms.training import (
    Hook,
    TrainContext,
    TrainParams,
    evaluate,
    local_update,
    proximal_term,
    sgd_step,
)
from fedcls.data.federated import SiteTensors
from strategies.fedprox import ProximalTerm, client_hooks


def tiny_site(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=gen)
    y = (x.flatten(1).sum(1) > 0).long()
    return SiteTensors(x, y, x[:10], y[:10], torch.zeros(1))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def context_for(model, global_params):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainContext(model, opt, global_params, {}, TrainParams(1, 1, 0.1), tiny_site())


def test_proximal_term_matches_hand_computation():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    assert ProximalTerm(mu=0.5).step_terms().prox_mu == 0.5
    term = proximal_term(model.parameters(), [torch.tensor([[0.0, 0.5]])], 0.5)
    # (mu/2) * ||w - g||^2 = 0.25 * (1^2 + 1.5^2) = 0.8125
    assert term.item() == 0.8125
    term.backward()
    # gradient mu * (w - g) = 0.5 * [1, 1.5]
    assert torch.equal(model.weight.grad, torch.tensor([[0.5, 0.75]]))


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_step_is_torch_sgd_bit_for_bit(momentum, weight_decay):
    """The one step (which the cohort executor applies to stacked clients) equals torch.optim.SGD."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(16, 1, 2, 2), torch.randint(0, 2, (16,))
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    reference = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, s in zip(model.parameters(), start):
            p.copy_(s)
    buffers = [None] * len(start)
    for _ in range(4):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for i, p in enumerate(model.parameters()):
            new, buffers[i] = sgd_step(p, p.grad, buffers[i], 0.05, momentum, weight_decay)
            with torch.no_grad():
                p.copy_(new)
    assert all(torch.equal(a, b) for a, b in zip(reference, model.parameters()))


def test_sgd_step_corrections_by_hand():
    w, g = torch.tensor([1.0]), torch.tensor([2.0])
    # gradient correction before momentum: d = 2 + 1 = 3, w = 1 - 0.1 * 3
    new, buf = sgd_step(w, g, None, 0.1, 0.9, 0.0, grad_correction=torch.tensor([1.0]))
    assert torch.allclose(new, torch.tensor([0.7])) and torch.equal(buf, torch.tensor([3.0]))
    # step correction outside momentum: w = 1 - 0.1 * 2 - 0.1 * 1; the buffer holds only g
    new, buf = sgd_step(w, g, None, 0.1, 0.9, 0.0, step_correction=torch.tensor([1.0]))
    assert torch.allclose(new, torch.tensor([0.7])) and torch.equal(buf, torch.tensor([2.0]))
    # a parameter without a gradient only takes the step correction
    new, buf = sgd_step(w, None, None, 0.1, 0.9, 0.0, step_correction=torch.tensor([1.0]))
    assert torch.allclose(new, torch.tensor([0.9])) and buf is None


def test_two_fedprox_sgd_steps_by_hand():
    """w' = w - lr * (grad CE + mu (w - g)), with g the received (zero) weights."""
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        linear.weight.zero_()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 1, 1, 2)  # two equal samples, label 0
    site = SiteTensors(x, torch.tensor([0, 0]), x[:0], torch.zeros(0, dtype=torch.long), torch.zeros(1))
    local_update(nn.Sequential(nn.Flatten(), linear), site, TrainParams(1, 1, lr=1.0),
                 [ProximalTerm(0.3)], {})
    # step 1: p = (.5, .5), grad CE = (p - onehot) x^T, proximal grad 0 -> w00 = 0.5
    # step 2: logits (0.5, -0.5), p0 = sigmoid(1); w00 = 0.5 - (p0 - 1) - 0.3 * 0.5
    p0 = 1 / (1 + torch.exp(torch.tensor(-1.0)))
    w00 = 0.5 - (p0 - 1) - 0.15
    expected = torch.stack([torch.stack([w00, torch.tensor(0.0)]), torch.stack([-w00, torch.tensor(0.0)])])
    assert torch.allclose(linear.weight, expected, atol=1e-6)


def test_fedprox_with_mu_zero_is_exactly_fedavg():
    site = tiny_site()
    plain, prox = tiny_model(), tiny_model()
    params = TrainParams(epochs=3, batch_size=8, lr=0.1, momentum=0.9, seed=5)
    local_update(plain, site, params, [], {})
    local_update(prox, site, params, [ProximalTerm(0.0)], {})
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), prox.state_dict().values()))


def test_fedprox_pulls_weights_toward_the_global_model():
    site = tiny_site()
    start = tiny_model()
    drift = {}
    for mu in (0.0, 10.0):
        model = tiny_model()
        local_update(model, site, TrainParams(5, 8, 0.1, seed=1), [ProximalTerm(mu)], {})
        drift[mu] = sum((a - b).norm() for a, b in zip(model.parameters(), start.parameters()))
    assert drift[10.0] < 0.5 * drift[0.0]


def test_client_hooks_read_mu_from_the_round_config():
    (hook,) = client_hooks({"proximal-mu": 0.25}, {})
    assert isinstance(hook, ProximalTerm) and hook.mu == 0.25


def test_local_update_is_deterministic_per_seed():
    site = tiny_site()
    runs = []
    for seed in (3, 3, 4):
        model = tiny_model()
        metrics = local_update(model, site, TrainParams(2, 8, 0.1, 0.9, seed=seed), [], {}).metrics
        runs.append((model.state_dict()["1.weight"].clone(), metrics["train_loss"]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])


def test_a_site_without_samples_trains_nothing_and_reports_finite_numbers():
    empty = SiteTensors(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), torch.zeros(1))
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = local_update(model, empty, TrainParams(2, 8, 0.1, 0.9), [], {})
    assert result.metrics == {"train_loss": 0.0, "num-steps": 0.0} and result.examples == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hooks_are_called_in_order_and_can_keep_state():
    calls = []

    class Recording(Hook):
        def __init__(self, name):
            self.name = name

        def before_training(self, ctx):
            calls.append(f"{self.name}.before")

        def extra_loss(self, ctx):
            calls.append(f"{self.name}.loss")

        def after_backward(self, ctx):
            calls.append(f"{self.name}.backward")

        def after_step(self, ctx):
            calls.append(f"{self.name}.step")

        def after_training(self, ctx):
            ctx.state[self.name] = {"steps": torch.tensor(ctx.step)}
            return {f"{self.name}_steps": float(ctx.step)}

    site = tiny_site(n=16)
    result = local_update(tiny_model(), site, TrainParams(1, 8, 0.1), [Recording("a"), Recording("b")], {})
    metrics, state = result.metrics, result.state
    assert calls == ["a.before", "b.before"] + ["a.loss", "b.loss", "a.backward", "b.backward",
                                                 "a.step", "b.step"] * 2
    assert metrics["a_steps"] == 2.0 and metrics["num-steps"] == 2.0 and state["b"]["steps"] == 2


def test_evaluate_counts_correct_predictions():
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[1].bias.zero_()
    x = torch.tensor([1.0, 2.0, -1.0, 3.0]).view(4, 1, 1, 1)
    y = torch.tensor([0, 0, 0, 1])  # predictions 0, 0, 1, 0 -> 2 of 4 right
    loss, acc = evaluate(model, x, y, batch_size=3)
    assert acc == 0.5
    expected = nn.functional.cross_entropy(model(x), y).item()
    assert abs(loss - expected) < 1e-6
