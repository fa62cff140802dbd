"""The losses: small for right answers, large for wrong ones, always an fp32 scalar."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forestseg.losses import (
    LOSSES,
    bce,
    bce_bootstrap,
    bce_dice,
    bce_lovasz,
    bce_trimmed,
    dice,
    focal,
    lovasz,
    mse,
    mse_logits,
)


def target() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = (torch.rand(4, 16, 16, generator=g) > 0.5).to(torch.uint8)
    assert 0 < int(t.sum()) < t.numel()
    return t


def perfect(name: str, t: torch.Tensor) -> torch.Tensor:
    """Confident, right raw outputs for loss `name`."""
    if name == "mse_logits":  # raw outputs that equal the 0/1 target
        return t.float()
    return torch.where(t > 0, 20.0, -20.0)


def wrong(name: str, t: torch.Tensor) -> torch.Tensor:
    """Confident, wrong raw outputs for loss `name`."""
    if name == "mse_logits":
        return 1.0 - t.float()
    return torch.where(t > 0, -20.0, 20.0)


def test_every_loss_is_listed() -> None:
    assert set(LOSSES) == {
        "mse",
        "mse_logits",
        "bce",
        "bce_bootstrap",
        "bce_trimmed",
        "dice",
        "bce_dice",
        "focal",
        "lovasz",
        "bce_lovasz",
    }


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_near_zero_for_perfect_outputs(name: str) -> None:
    t = target()
    value = LOSSES[name](perfect(name, t), t)
    # bce at logit 20 is log(1 + e^-20) ~ 2e-9; dice's eps keeps it exactly right too.
    assert value.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_large_for_wrong_outputs(name: str) -> None:
    t = target()
    good, bad = LOSSES[name](perfect(name, t), t), LOSSES[name](wrong(name, t), t)
    assert bad.item() > good.item() + 0.5
    uncertain = LOSSES[name](torch.zeros(t.shape) + (0.5 if name == "mse_logits" else 0.0), t)
    assert good.item() < uncertain.item() < bad.item()


def test_wrong_values_are_the_expected_maxima() -> None:
    t = target()
    assert mse(wrong("mse", t), t).item() == pytest.approx(1.0, abs=1e-6)
    assert mse_logits(wrong("mse_logits", t), t).item() == pytest.approx(1.0)
    assert bce(wrong("bce", t), t).item() == pytest.approx(20.0, rel=1e-6)
    assert dice(wrong("dice", t), t).item() == pytest.approx(1.0, abs=1e-3)
    assert bce_dice(wrong("bce_dice", t), t).item() == pytest.approx(21.0, rel=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_returns_an_fp32_scalar(name: str, dtype: torch.dtype) -> None:
    t = target()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    value = LOSSES[name](logits, t)
    assert value.dtype == torch.float32
    assert value.shape == ()
    # Same value as on the fp32 copy of the (already rounded) low-precision input.
    torch.testing.assert_close(value, LOSSES[name](logits.float(), t))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_flows(name: str) -> None:
    t = target()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(2)).requires_grad_()
    LOSSES[name](logits, t).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_mse_equals_the_manual_formula() -> None:
    t = target()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(3)) * 3
    p = 1 / (1 + torch.exp(-logits.double()))
    expected = ((p - t.double()) ** 2).mean()
    assert mse(logits, t).item() == pytest.approx(expected.item(), rel=1e-6)
    expected_raw = ((logits.double() - t.double()) ** 2).mean()
    assert mse_logits(logits, t).item() == pytest.approx(expected_raw.item(), rel=1e-6)


def test_bce_and_dice_equal_manual_formulas() -> None:
    t = target().double()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    p = torch.sigmoid(logits)
    expected_bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    expected_dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert bce(logits, t).item() == pytest.approx(expected_bce.item(), rel=1e-5)
    assert dice(logits, t).item() == pytest.approx(expected_dice.item(), rel=1e-5)
    assert bce_dice(logits, t).item() == pytest.approx((expected_bce + expected_dice).item(), rel=1e-5)


def test_thresholds() -> None:
    assert LOSSES["mse_logits"].threshold == 0.5
    for name in set(LOSSES) - {"mse_logits"}:
        assert LOSSES[name].threshold == 0.0


def test_focal_is_bce_scaled_down_on_easy_pixels() -> None:
    t = target()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(4)) * 3
    assert focal(logits, t, gamma=0.0).item() == pytest.approx(bce(logits, t).item(), rel=1e-6)
    assert focal(logits, t).item() < bce(logits, t).item()
    easy, hard = torch.where(t > 0, 4.0, -4.0), torch.where(t > 0, -0.5, 0.5)
    assert focal(easy, t) / bce(easy, t) < focal(hard, t) / bce(hard, t)  # easy pixels are down-weighted more


def test_bce_bootstrap_is_bce_where_the_model_agrees_and_pulls_less_where_it_confidently_disagrees() -> None:
    t = target()
    assert bce_bootstrap(perfect("bce", t), t).item() == pytest.approx(bce(perfect("bce", t), t).item(), abs=1e-6)
    assert bce_bootstrap(wrong("bce", t), t).item() == pytest.approx(0.8 * 20.0, rel=1e-4)  # 0.8 of bce's 20
    assert bce_bootstrap(wrong("bce", t), t, beta=1.0).item() == pytest.approx(bce(wrong("bce", t), t).item())
    logits = torch.where(t > 0, -3.0, 3.0).requires_grad_()  # confidently wrong everywhere
    bce(logits, t).backward()
    full = logits.grad.abs().sum().item()
    logits.grad = None
    bce_bootstrap(logits, t).backward()
    assert logits.grad.abs().sum().item() < full  # the mask pulls with less force


@pytest.mark.parametrize("keep, kept", [(0.8, 4), (0.5, 3), (0.3, 2), (0.01, 1), (1.0, 5)])
def test_bce_trimmed_is_bce_over_the_easiest_tiles(keep: float, kept: int) -> None:
    t = torch.ones(5, 8, 8, dtype=torch.uint8)
    logits = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0]).view(5, 1, 1).expand(5, 8, 8)  # tile 4 the hardest
    easiest = torch.tensor([3.0, 2.0, 0.5, -1.0, -4.0])[:kept]  # ceil(keep x 5) tiles, easiest first
    expected = bce(easiest.view(-1, 1, 1).expand(kept, 8, 8), t[:kept])
    assert bce_trimmed(logits, t, keep=keep).item() == pytest.approx(expected.item(), rel=1e-6)
    assert bce_trimmed(logits[:1], t[:1]).item() == pytest.approx(bce(logits[:1], t[:1]).item(), rel=1e-6)
    logits = logits.clone().requires_grad_()
    bce_trimmed(logits, t, keep=keep).backward()
    assert (logits.grad.flatten(1).abs().sum(1) > 0).sum().item() == kept  # dropped tiles pull on nothing
    diverged = logits.detach().clone()
    diverged[4] = float("nan")  # the hardest tile, which topk would drop: the loss must say it diverged
    assert torch.isnan(bce_trimmed(diverged, t, keep=keep))


@pytest.mark.parametrize("seed", range(4))
def test_lovasz_equals_the_jaccard_loss_where_hinge_errors_are_0_or_1(seed: int) -> None:
    # The Lovasz extension agrees with the set function on the cube's corners: outputs right with
    # margin 1 (error 0) or exactly 0 (error 1, counted as a mistake) give 1 - IoU of each image.
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    mistake = torch.rand(3, 8, 8, generator=g) < 0.3
    logits = torch.where(mistake, 0.0, 2 * t - 1)
    tp = ((t > 0) & ~mistake).flatten(1).sum(1)
    fn = ((t > 0) & mistake).flatten(1).sum(1)
    fp = ((t == 0) & mistake).flatten(1).sum(1)
    expected = (1 - tp / (tp + fn + fp).clamp_min(1)).mean()
    assert lovasz(logits, t).item() == pytest.approx(expected.item(), abs=1e-6)


def test_lovasz_is_per_image_and_bce_lovasz_adds_bce() -> None:
    t = target()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
    each = torch.stack([lovasz(logits[i : i + 1], t[i : i + 1]) for i in range(len(t))])
    assert lovasz(logits, t).item() == pytest.approx(each.mean().item(), rel=1e-6)
    assert bce_lovasz(logits, t).item() == pytest.approx((bce(logits, t) + lovasz(logits, t)).item(), rel=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_losss_cut_is_the_even_odds_of_its_forest_probability(name: str) -> None:
    """predict's --probability maps a loss's raw outputs as its registry entry says: its cut reads 0.5."""
    from types import SimpleNamespace

    from forestseg.predict import Predictor

    cut = LOSSES[name].threshold
    raw = np.array([cut - 3, cut - 0.1, cut, cut + 0.1, cut + 3], np.float32)
    p = Predictor.probability(SimpleNamespace(loss=name), raw)
    assert p[2] == pytest.approx(0.5) and (np.diff(p) > 0).all() and p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("gamma", [None, 0.5, 3.0])
def test_focal_equals_its_formula(gamma) -> None:
    """(1 - p_t)^gamma x bce per pixel, averaged; gamma 2 unless given (Lin et al. 2017)."""
    t = target().double()
    logits = torch.randn(t.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    p = torch.sigmoid(logits)
    p_t = torch.where(t > 0, p, 1 - p)
    g = 2.0 if gamma is None else gamma
    expected = ((1 - p_t) ** g * -torch.log(p_t)).mean()
    got = focal(logits, t) if gamma is None else focal(logits, t, gamma=gamma)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # and its gradient, which trains the model (a detached weight gives the same value, another gradient)
    x = logits.clone().requires_grad_()
    (focal(x, t) if gamma is None else focal(x, t, gamma=gamma)).backward()
    y = logits.clone().requires_grad_()
    p_t = torch.where(t > 0, torch.sigmoid(y), 1 - torch.sigmoid(y))
    ((1 - p_t) ** g * -torch.log(p_t)).mean().backward()
    assert torch.allclose(x.grad, y.grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_loss_not_marked_per_batch_is_the_mean_of_its_tiles_losses(name: str) -> None:
    """evaluate() weights a loss not marked per_batch by the batch's tile count: that is only right
    where the loss of a batch is the mean of its tiles' own losses (bce_trimmed's is not)."""
    g = torch.Generator().manual_seed(3)
    t = (torch.rand(5, 8, 8, generator=g) > 0.5).to(torch.uint8)
    logits = 3 * torch.randn(5, 8, 8, generator=g)
    whole = LOSSES[name](logits, t).item()
    tiles = sum(LOSSES[name](logits[i : i + 1], t[i : i + 1]).item() for i in range(5)) / 5
    assert LOSSES[name].per_batch == (whole != pytest.approx(tiles, rel=1e-5)), name


def test_the_registrys_bce_trimmed_keeps_the_easiest_80_percent() -> None:
    """What grid.loss bce_trimmed trains with: 7 of 8 tiles (ceil(0.8 x 8)), the hardest left out."""
    from forestseg.losses import LOSSES

    t = torch.ones(8, 4, 4, dtype=torch.uint8)
    logits = torch.arange(8, 0, -1, dtype=torch.float32).view(8, 1, 1).expand(8, 4, 4) - 4.0  # tile 7 the hardest
    expected = bce(logits[:7], t[:7])
    assert LOSSES["bce_trimmed"].fn(logits, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bce_bootstrap_reads_a_logit_of_0_as_no_forest() -> None:
    """The model's own call is forest above logit 0, as predict cuts it: at 0 it pulls with bce's full
    force towards a mask of no forest (gradient 0.5 per pixel, over 4 pixels)."""
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    bce_bootstrap(logits, torch.zeros(1, 2, 2, dtype=torch.uint8)).backward()
    assert torch.allclose(logits.grad, torch.full((1, 2, 2), 0.125))
