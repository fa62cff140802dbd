"""forestseg.optim: the optimizers equal torch.optim's bit for bit, resume exactly, and import no dynamo."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
import torch

from forestseg.config import OptimizerConfig
from forestseg.optim import OPTIMIZERS, make_optimizer

# case -> (our name, momentum, weight decay, the torch.optim class it must equal)
CASES = {
    "sgd": ("sgd", 0.0, 0.0, torch.optim.SGD),
    "sgd-momentum-decay": ("sgd", 0.9, 1e-2, torch.optim.SGD),
    "adam": ("adam", 0.0, 0.0, torch.optim.Adam),
    "adam-decay": ("adam", 0.0, 1e-2, torch.optim.Adam),
    "adamw-decay": ("adamw", 0.0, 1e-2, torch.optim.AdamW),
}


def net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1)
    )
    return model.to(memory_format=torch.channels_last)  # as train runs it


def steps(model: torch.nn.Module, opt, n: int, lrs: list[float], start: int = 0) -> None:
    """n steps on seeded batches; the lr changes between steps as the schedule changes it between epochs."""
    for i in range(start, start + n):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        for group in getattr(opt, "param_groups", []):
            group["lr"] = lrs[i]
        if not hasattr(opt, "param_groups"):
            opt.lr = lrs[i]
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("case", CASES)
def test_each_optimizer_equals_torch_optim_bit_for_bit(case: str) -> None:
    name, momentum, decay, reference = CASES[case]
    lrs = [1e-2, 1e-2, 1e-3, 1e-3, 1e-4]
    ours, theirs = net(0), net(0)
    cfg = OptimizerConfig(momentum=momentum, weight_decay=decay)
    steps(ours, make_optimizer(name, ours.parameters(), lrs[0], cfg), 5, lrs)
    extra = {"momentum": momentum} if reference is torch.optim.SGD else {}
    steps(theirs, reference(theirs.parameters(), lr=lrs[0], weight_decay=decay, foreach=True, **extra), 5, lrs)
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), f"{case}: {key}"
    assert not torch.equal(ours[0].weight, net(0)[0].weight)  # it did train


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_saved_and_loaded_optimizer_continues_exactly(name: str) -> None:
    cfg, lrs = OptimizerConfig(momentum=0.9), [1e-2] * 3 + [1e-3] * 3
    whole = net(1)
    steps(whole, make_optimizer(name, whole.parameters(), 1e-2, cfg), 6, lrs)
    first = net(1)
    opt = make_optimizer(name, first.parameters(), 1e-2, cfg)
    steps(first, opt, 3, lrs)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = net(2)  # other weights, overwritten by the saved ones
    resumed.load_state_dict(saved["model"])
    opt = make_optimizer(name, resumed.parameters(), 5.0, cfg)
    opt.load_state_dict(saved["optimizer"])
    steps(resumed, opt, 3, lrs, start=3)
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(a, b)


def test_a_step_without_gradients_says_so() -> None:
    model = net(0)
    with pytest.raises(RuntimeError, match="no gradient"):
        make_optimizer("adam", model.parameters(), 1e-3, OptimizerConfig()).step()


def test_training_steps_do_not_import_torch_dynamo() -> None:
    """The point of owning the optimizers: torch.optim's import torch._dynamo (~1 s) in every train stage."""
    code = (
        "import sys, torch\n"
        "from forestseg.config import OptimizerConfig\n"
        "from forestseg.optim import make_optimizer\n"
        "m = torch.nn.Conv2d(3, 1, 3)\n"
        "for name in ('sgd', 'adam', 'adamw'):\n"
        "    opt = make_optimizer(name, m.parameters(), 1e-3, OptimizerConfig(momentum=0.9))\n"
        "    m(torch.randn(1, 3, 8, 8)).sum().backward()\n"
        "    opt.step()\n"
        "    opt.zero_grad()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    "schedule, warmup, expected",
    [
        # linear warmup from lr/10 over 2 epochs, then cosine to 0 over the 4 epochs left
        ("cosine", 2, [0.1, 0.55, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
        ("cosine", 0, [0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)]),
        # step: x gamma every step_epochs epochs after the warmup
        ("step", 1, [0.1, 1.0, 1.0, 0.5, 0.5, 0.25]),
    ],
)
def test_lr_factor_warms_up_from_a_tenth_then_follows_the_schedule(schedule, warmup, expected) -> None:
    """Epoch 0 of a warmup trains at lr/10, the first epoch after it at the full lr; cosine starts at 1."""
    from forestseg.optim import lr_factor

    cfg = OptimizerConfig(schedule=schedule, warmup_epochs=warmup, gamma=0.5, step_epochs=2)
    assert [lr_factor(e, cfg, 6) for e in range(6)] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_frozen_parameters_are_left_out(name: str) -> None:
    """A model with a frozen layer steps its other parameters (the frozen ones have no gradient)."""
    model = net(0)
    model[0].requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(name, model.parameters(), 1e-2, OptimizerConfig())
    model(torch.rand(2, 3, 6, 6)).sum().backward()
    opt.step()
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert moved[:2] == [False, False] and any(moved[2:])
