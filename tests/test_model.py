"""The UNet: output shape for any input size, parameter growth, channels_last equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forestseg.config import ModelConfig
from forestseg.errors import ForestsegError
from forestseg.model import ARCHS, MixStyle, UNet, Up, adapt_batchnorm, build_model, count_parameters


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads; on a busy 2-core machine OpenMP's barriers slow them a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize(
    ("width", "depth", "size"),
    [
        (4, 1, (32, 32)),
        (4, 2, (32, 32)),
        (4, 2, (40, 40)),  # 40 / 4 = 10: divisible, but 40 / 8 is not
        (4, 3, (40, 40)),  # 40 -> 20 -> 10 -> 5: odd at the bottom
        (2, 2, (30, 30)),  # 30 -> 15 -> 7: odd half-way, the Up pads
        (2, 3, (33, 35)),  # odd and non-square
        (8, 2, (17, 16)),
    ],
)
def test_output_is_one_logit_map_of_the_input_size(
    width: int, depth: int, size: tuple[int, int], batch_norm: bool
) -> None:
    torch.manual_seed(0)
    model = UNet(width=width, depth=depth, batch_norm=batch_norm).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_build_model_follows_config() -> None:
    model = build_model(ModelConfig(arch="unet", width=4, depth=2, batch_norm=False, input="normalized"))
    assert isinstance(model, UNet)
    assert len(model.downs) == len(model.ups) == 2
    assert model.stem[0].out_channels == 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with_bn = build_model(ModelConfig(arch="unet", width=4, depth=2, batch_norm=True, input="normalized"))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_parameter_count_grows_with_width(depth: int) -> None:
    counts = [count_parameters(UNet(width=w, depth=depth)) for w in (2, 4, 8, 16)]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts
    # Convolutions dominate: doubling the width roughly quadruples the count.
    assert 3 < counts[-1] / counts[-2] < 4.5


def test_parameter_count_grows_with_depth() -> None:
    counts = [count_parameters(UNet(width=4, depth=d)) for d in (1, 2, 3)]
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("train_mode", [False, True])
def test_channels_last_gives_the_same_output(batch_norm: bool, train_mode: bool) -> None:
    torch.manual_seed(1)
    model = UNet(width=4, depth=2, batch_norm=batch_norm)
    model.train(train_mode)
    x = torch.randn(3, 3, 40, 40)
    x_cl = x.to(memory_format=torch.channels_last)
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
        memory_format=torch.channels_last
    )
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)  # in place, as train_run does
        out = model_cl(x_cl)
    assert out.shape == ref.shape == (3, 40, 40)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_up_runs_its_transposed_conv_as_a_1x1_conv_with_the_same_values_and_gradients(
    channels_last: bool, dtype: torch.dtype
) -> None:
    """Up's fast path (1x1 conv, then one copy into the concatenation) against ConvTranspose2d + cat."""
    torch.manual_seed(3)
    up = Up(6, 3).to(dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 6, 5, 7, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    skip = torch.randn(2, 3, 10, 14, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    grad = torch.randn(2, 3, 10, 14, dtype=dtype)

    def run(forward) -> list[torch.Tensor]:  # noqa: ANN001
        up.zero_grad()
        x.grad = skip.grad = None
        out = forward(x, skip)
        (out * grad).sum().backward()
        return [out, x.grad, skip.grad] + [p.grad for p in up.parameters()]

    transposed = up.up.forward
    up.up.forward = lambda x: pytest.fail("the fast path ran the transposed conv")
    fast = run(up)
    up.up.forward = transposed
    slow = run(lambda x, skip: up.block(torch.cat([skip, up.up(x)], dim=1)))
    for a, b in zip(fast, slow):
        # bf16: 2 % of the tensor's scale, since a gradient summed over 280 products rounds by more than 0.02
        # where the CPU emulates bf16 (AVX2: 0.055 in gradients of up to 64)
        tol = 1e-10 if dtype == torch.float64 else 0.02
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, float(b.detach().abs().max())))
    assert fast[0].is_contiguous(memory_format=layout)


def test_output_depends_on_input() -> None:
    """Guards against a degenerate model (e.g. a head fed a constant) that still has the right shape."""
    torch.manual_seed(2)
    model = UNet(width=4, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x.flip(-1))
    assert not torch.allclose(a, b)
    # Each sample's output depends only on that sample in eval mode.
    with torch.no_grad():
        single = model(x[:1])
    torch.testing.assert_close(single, a[:1], rtol=1e-4, atol=1e-5)


def test_global_context_starts_as_the_plain_unet_and_then_sees_the_whole_tile() -> None:
    torch.manual_seed(3)
    plain = build_model(ModelConfig(arch="unet", width=4, depth=1)).eval()
    context = build_model(ModelConfig(arch="unet_context", width=4, depth=1)).eval()
    context.load_state_dict(plain.state_dict(), strict=False)  # only the context's projection is new
    x = torch.randn(2, 3, 64, 64)
    far = x.clone()
    far[:, :, :16, :16] += 5.0  # a corner change, far beyond depth 1's receptive field from (63, 63)
    with torch.no_grad():
        torch.testing.assert_close(context(x), plain(x))  # zero-initialised: the plain UNet at first
        assert torch.equal(plain(x)[:, -1, -1], plain(far)[:, -1, -1])
        torch.nn.init.normal_(context.context.proj.weight)
        assert not torch.allclose(context(x)[:, -1, -1], context(far)[:, -1, -1])


@pytest.mark.parametrize("size", [(32, 32), (34, 30), (33, 31)])
@pytest.mark.parametrize(("arch", "factor"), [("unet_half", 2), ("unet_quarter", 4)])
def test_low_resolution_unet_is_the_plain_unet_on_the_pooled_input(
    size: tuple[int, int], arch: str, factor: int
) -> None:
    torch.manual_seed(4)
    low = build_model(ModelConfig(arch=arch, width=4, depth=1)).eval()
    plain = build_model(ModelConfig(arch="unet", width=4, depth=1)).eval()
    plain.load_state_dict(low.inner.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        coarse = plain(F.avg_pool2d(x, factor, ceil_mode=True))  # odd sizes: the last cells pool what is left
        out = low(x)
    assert coarse.shape == (2, -(-size[0] // factor), -(-size[1] // factor))
    assert out.shape == (2, *size)
    up = F.interpolate(coarse[:, None], scale_factor=factor, mode="bilinear")[:, 0, : size[0], : size[1]]
    torch.testing.assert_close(out, up)  # up by the factor, then cut: not stretched to the tile
    # A change inside one cell that keeps its mean is invisible to it; one across cells is not.
    swapped = x.clone()
    swapped[:, :, 0, 0], swapped[:, :, 0, factor - 1] = x[:, :, 0, factor - 1], x[:, :, 0, 0]
    across = x.clone()
    across[:, :, 0, 0], across[:, :, 0, factor] = x[:, :, 0, factor], x[:, :, 0, 0]
    with torch.no_grad():
        torch.testing.assert_close(low(swapped), out)
        assert not torch.allclose(low(across), out)


class _Channel0(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


@pytest.mark.parametrize("size", [256, 255, 250, 257])
@pytest.mark.parametrize("factor", [2, 4])
def test_low_resolution_keeps_every_pixel_in_place(size: int, factor: int) -> None:
    """A ramp (value = row) through an identity inner model comes back as the ramp: resizing ceil(H/f)
    cells to H pixels stretched the map by up to f - 1 px where H is no multiple of f."""
    from forestseg.model import LowResolution

    ramp = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1).expand(1, 3, size, size)
    out = LowResolution(_Channel0(), factor)(ramp)
    inner = slice(factor, size - 2 * factor)  # the edges' cells clamp or pool what is left
    torch.testing.assert_close(out[0, inner, inner], ramp[0, 0, inner, inner], atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [255, 254, 250])  # 3, 2 and 2 mod 4: centring was 1 px off
def test_study_unet_joins_its_skips_at_the_same_pixels_whatever_the_tile_size(size: int, monkeypatch) -> None:
    """Valid convolutions and two poolings: a tile one to three rows short of 256 maps the same input
    pixels to its (uncut) output map, so both maps agree away from the missing rows. Centring the
    first skip's crop joined it one pixel off where a pooling dropped an odd row."""
    from forestseg.model import StudyUNet

    torch.manual_seed(0)
    net = StudyUNet(widths=(4, 4, 4)).eval()
    monkeypatch.setattr(F, "interpolate", lambda y, **kw: y)  # the map before its resize to the tile
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        full, short = net(x)[0], net(x[..., :size, :size])[0]
    torch.testing.assert_close(short[:150, :150], full[:150, :150])


def test_adapt_batchnorm_runs_its_forward_without_autograd() -> None:
    """A statistics pass: no graph kept (memory and time of a forward, not a training step)."""
    model = build_model(ModelConfig(arch="unet", width=4, depth=1))
    seen: list[bool] = []
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).register_forward_hook(
        lambda *_: seen.append(torch.is_grad_enabled())
    )
    adapt_batchnorm(model, torch.rand(2, 3, 32, 32), 0.5)
    assert seen == [False]


def test_adapt_batchnorm_gives_the_same_statistics_at_any_thread_count() -> None:
    """Batch-norm sums a batch's statistics in an order that follows torch's threads: evaluate and the
    overlays, run at one per core, flipped mask pixels from one machine to the next (305 of 5.6 M on
    the sample's scenes, 1 against 2 threads)."""
    torch.manual_seed(0)
    # channels-last, as Predictor runs it: batch-norm then reduces over rows split among the threads
    model = build_model(ModelConfig(width=8, depth=2)).eval().to(memory_format=torch.channels_last)
    x = (torch.randn(16, 3, 64, 64) * 3 + 1).contiguous(memory_format=torch.channels_last)
    stats = {}
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            adapted = adapt_batchnorm(model, x, 0.5)
            stats[n] = [
                b.clone() for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d) for b in m._buffers.values()
            ]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(stats[1], stats[2]))
    assert torch.get_num_threads() == before


def test_adapt_batchnorm_on_too_small_windows_stops_with_one_line() -> None:
    model = build_model(ModelConfig(arch="unet", width=4, depth=2)).eval()
    with pytest.raises(ForestsegError, match=r"cannot adapt batch-norm to 1 window\(s\) of 4x4 px"):
        adapt_batchnorm(model, torch.randn(1, 3, 4, 4), 0.5)  # the deepest level: 1x1, one value per channel
    assert adapt_batchnorm(model, torch.randn(2, 3, 4, 4), 0.5) is not model  # two windows: two values each


def test_mixstyle_mixes_feature_statistics_across_the_batch_only_while_training() -> None:
    mix = MixStyle(p=1.0)
    x = torch.randn(4, 3, 8, 8) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None, None]
    torch.manual_seed(0)
    y = mix.train()(x)
    # Each tile keeps its normalised pattern; only its per-channel mean and std move, towards others'.
    standard = lambda t: (t - t.mean((2, 3), keepdim=True)) / t.std((2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(standard(y), standard(x), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(y.std((2, 3)), x.std((2, 3)))
    assert not torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-3)  # the mean moves too, not the std only
    torch.manual_seed(0)
    torch.testing.assert_close(mix(x), y)  # torch's seeded generator: the same draw again
    assert mix.eval()(x) is x
    with torch.no_grad():
        assert mix.train()(x) is x  # batch-norm adaptation's training-mode forward sees the scene as it is
    assert MixStyle(p=0.0).train()(x) is x
    one = x[:1]
    assert MixStyle(p=1.0).train()(one) is one  # a batch of one has no other tile to mix with


def test_mixstyle_adds_no_weights_and_leaves_eval_outputs_alone() -> None:
    torch.manual_seed(5)
    plain = build_model(ModelConfig(width=4, depth=2)).eval()
    mixed = build_model(ModelConfig(width=4, depth=2, mixstyle=0.5)).eval()
    mixed.load_state_dict(plain.state_dict())  # strict: the same keys, so either loads the other's model file
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), plain(x))
    assert sum(isinstance(m, MixStyle) for m in mixed.modules()) == 2


@pytest.mark.parametrize("arch", ["unet", "unet_half", "unet_quarter"])
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_smallest_tile_is_the_smallest_a_batch_of_one_trains_on(arch: str, depth: int, batch_norm: bool) -> None:
    """Non-square sizes round down level by level: a 48-px tile at depth 5 ends at 1x1 px, where
    batch-norm fails on a batch of one tile; the registry's bound says so before training starts."""
    cfg = ModelConfig(arch=arch, width=2, depth=depth, batch_norm=batch_norm)
    smallest = ARCHS[arch].smallest_tile(cfg)
    model = build_model(cfg).train()
    assert model(torch.rand(1, 3, smallest, smallest)).shape == (1, smallest, smallest)
    if batch_norm:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            model(torch.rand(1, 3, smallest - 1, smallest - 1))
    else:  # without batch-norm the bound is 1x1 px at the deepest level: one pixel less pools to nothing
        with pytest.raises(RuntimeError, match="Output size is too small"):
            model(torch.rand(1, 3, smallest - 1, smallest - 1))


def test_adapt_batchnorm_moves_the_statistics_by_mix_of_the_scenes() -> None:
    """At mix 0.25 (not 0.5, where mix and 1 - mix agree) the running mean moves a quarter of the way."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="unet", width=4, depth=1)).eval()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_mean.fill_(1.0)
    x = torch.rand(3, 3, 16, 16) + 2
    seen: list[torch.Tensor] = []
    h = model.stem[0].register_forward_hook(lambda m, i, o: seen.append(o.mean((0, 2, 3))))
    adapted = adapt_batchnorm(model, x, 0.25)
    h.remove()
    got = next(m for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
    torch.testing.assert_close(got, 0.75 * torch.ones(4) + 0.25 * seen[0])
    assert torch.equal(bn.running_mean, torch.ones(4))  # the model itself is untouched


def test_an_up_on_an_odd_skip_joins_the_same_channels_as_on_an_even_one() -> None:
    """Where the skip is odd the Up pads: it must still join [skip, upsampled], as the even path does,
    or a model trained on even tiles reads swapped channels on an image not a multiple of 2**depth."""
    torch.manual_seed(0)
    up = Up(8, 4, batch_norm=False)
    x, skip = torch.randn(2, 8, 6, 6), torch.randn(2, 4, 13, 13)
    with torch.no_grad():
        odd, even = up(x, skip), up(x, skip[..., :12, :12])
    torch.testing.assert_close(odd[..., :10, :10], even[..., :10, :10])  # two 3x3 convs: 2 px from the cut


@pytest.mark.parametrize("path", ["s1", "s2"])
def test_study_unet_joins_each_skip_at_the_pixels_of_the_deeper_path(path: str, monkeypatch) -> None:
    """Through each skip alone, with positive weights, output pixel f depends on input pixels centred on
    f + 20 (the valid convolutions' crop): a skip cropped a pixel off joins pixels 2 input px apart."""
    from forestseg.model import StudyUNet

    torch.manual_seed(0)
    net = StudyUNet(widths=(4, 4, 4)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.zero_()
        if path == "s2":
            net.up2.weight.zero_()
            net.dec1[0].weight[:, :4].zero_()
        else:
            net.dec1[0].weight[:, 4:].zero_()
    monkeypatch.setattr(F, "interpolate", lambda y, **kw: y)
    x = torch.ones(1, 3, 64, 64, requires_grad=True)
    out = net(x)[0]
    for f in (10, 11):
        (grad,) = torch.autograd.grad(out[f, f], x, retain_graph=True)
        weight = grad[0].sum((0, 2))
        centre = float((weight * torch.arange(64.0)).sum() / weight.sum())
        assert abs(centre - (f + 20)) < 0.75, (f, centre)


def test_global_context_adds_a_map_of_the_tiles_mean_features() -> None:
    """Each position gets proj(mean over the tile): with proj the identity, x + its channel means."""
    from forestseg.model import GlobalContext

    g = GlobalContext(2)
    with torch.no_grad():
        g.proj.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    x = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]], [[1.0, 2.0], [3.0, 6.0]]]])
    assert torch.equal(g(x), x + x.mean(dim=(2, 3), keepdim=True))
    assert g(x)[0, 0].flatten().tolist() == [1.0, 1.0, 1.0, 5.0]


def test_mixstyle_treats_the_statistics_as_constants_in_the_backward() -> None:
    """Detached mean and std (MixStyle's): each tile's gradient is the upstream one scaled per channel by
    mixed std / own std, whatever the pixel; through the statistics it would vary from pixel to pixel."""
    x = (torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 3 + 1).requires_grad_()
    w = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    (MixStyle(p=1.0).train()(x) * w).sum().backward()
    ratio = x.grad / w  # (B, C, H, W): one value per tile and channel
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert not torch.allclose(ratio, torch.ones_like(ratio))  # it did mix
    assert MixStyle(p=1.0).alpha == 0.1  # Beta(0.1, 0.1), the paper's: mostly near one tile's own style


def test_unet_mixes_the_style_of_its_first_two_levels() -> None:
    """mixstyle > 0: the stem's features (level 0) and the first down level's, skips included; no deeper."""
    model = UNet(4, 3, mixstyle=1.0).train()
    calls: list[int] = []
    for level, style in enumerate(model.styles):
        style.register_forward_hook(lambda m, i, o, level=level: calls.append(level) if o is not i[0] else None)
    torch.manual_seed(0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert calls == [0, 1]


def test_unet_downsamples_by_max_pooling() -> None:
    pools = [type(m) for m in UNet(4, 2).modules() if isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d))]
    assert pools == [torch.nn.MaxPool2d] * 2


def test_study_unet_resizes_its_map_by_pixel_centres(monkeypatch) -> None:
    """The output map is stretched back over the input with align_corners=False (pixel centres, as the
    study's resize did); align_corners=True would move every output pixel."""
    seen = []
    real = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: seen.append(k) or real(*a, **k))
    torch.manual_seed(0)
    ARCHS["study_unet"].build(ModelConfig(arch="study_unet")).eval()(torch.zeros(1, 3, 48, 48))
    assert [k.get("align_corners") for k in seen] == [False] and seen[0]["mode"] == "bilinear"


def _block_with_statistics(seed: int, near_constant: bool = False) -> torch.nn.Module:
    """A Block in eval mode whose norms hold spread statistics, as a trained one's do (`near_constant`:
    four features of variance 1e-5, where the norm's eps counts)."""
    from forestseg.model import Block

    torch.manual_seed(seed)
    block = Block(8, 16).eval()
    with torch.no_grad():
        for norm in (block[1], block[4]):
            norm.running_mean.uniform_(-2, 2)
            norm.running_var.uniform_(0.3, 3)
            if near_constant:
                norm.running_var[:4] = 1e-5
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-1, 1)
    return block


@pytest.mark.parametrize("channels_last, near_constant", [(True, False), (False, False), (True, True)])
def test_eval_block_under_cpu_bf16_runs_one_fused_convolution_per_layer(
    channels_last: bool, near_constant: bool, monkeypatch
) -> None:
    """conv + batch-norm + ReLU as one oneDNN call each, no further from fp32 than torch's three ops:
    its bias is added in fp32 before the one rounding to bf16 (a bias rounded to bf16 is not)."""
    from forestseg import model

    if model._FUSED_OP is None:
        pytest.skip("oneDNN runs no bf16 convolution on this CPU or torch (model._fused_op)")
    block = _block_with_statistics(0, near_constant)
    x = torch.randn(2, 8, 24, 24)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    calls = []
    monkeypatch.setattr(
        model, "_FUSED_OP", lambda *a: calls.append(a[7]) or model.torch.ops.mkldnn._convolution_pointwise(*a)
    )
    with torch.no_grad():
        exact = block(x)
        with torch.autocast("cpu", torch.bfloat16):
            fused = block(x).float()
            monkeypatch.setattr(model, "_FUSED_OP", None)
            ops = block(x).float()
    assert calls == ["relu", "relu"]
    if not near_constant:  # there the few huge features' errors outweigh the rest
        assert (fused - exact).abs().mean() <= (ops - exact).abs().mean() * 1.1
    assert (fused - exact).abs().max() <= 0.02 * exact.abs().max()


def test_fused_block_runs_only_in_eval_mode_without_gradients_under_cpu_bf16(monkeypatch) -> None:
    """Training (batch statistics), fp32, a gradient through eval mode (the op has no backward), and
    CUDA keep torch's own ops; so does a Block without batch-norm (no norm to fold)."""
    from forestseg import model

    block = _block_with_statistics(1)
    calls = []
    monkeypatch.setattr(model, "_FUSED_OP", lambda *a: calls.append(1) or torch.zeros(()))
    x = torch.randn(2, 8, 16, 16)
    with torch.autocast("cpu", torch.bfloat16):
        assert block(x.requires_grad_()).requires_grad  # eval, with gradients
        with torch.no_grad():
            block.train()
            block(x)
            block.eval()
            block(x)
            plain = model.Block(8, 16, batch_norm=False).eval()
            assert torch.equal(plain(x), torch.nn.Sequential(*plain)(x))
    with torch.no_grad():
        block(x)  # eval, fp32
    assert calls == [1, 1]  # the two layers of the one eval forward without gradients under bf16


@pytest.mark.parametrize("bf16_kernels", [True, False])
def test_no_fused_convolution_where_onednn_has_no_bf16_kernels(bf16_kernels: bool, monkeypatch) -> None:
    """torch refuses oneDNN's bf16 convolution on a CPU without AVX-512 BW/VL/DQ or AVX-NE-CONVERT (an
    AVX2 CPU given precision bf16), where its own conv falls back to a slow kernel: the Block does too."""
    from forestseg import model

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_kernels)
    assert (model._fused_op() is not None) is bf16_kernels
