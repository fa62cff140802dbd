"""UNet for binary segmentation, read top-down: block, down, up, global context, MixStyle, UNet,
low resolution. Outputs one logit map."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import cpu_bf16_kernels, cpu_threads
from .errors import ForestsegError

if TYPE_CHECKING:
    from .config import ModelConfig


class Block(nn.Sequential):
    """Two 3x3 'same' convolutions, each followed by (batch-norm and) ReLU."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True):
        layers: list[nn.Module] = []
        for c in (cin, cout):
            # A conv followed by batch-norm needs no bias: the norm's shift replaces it.
            layers.append(nn.Conv2d(c, cout, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.batch_norm = batch_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not (self.batch_norm and _fused_here(x)):
            return super().forward(x)
        for conv, norm in ((self[0], self[1]), (self[3], self[4])):
            x = _conv_norm_relu(x, conv, norm)  # (B, cin, H, W) -> (B, cout, H, W), bf16
        return x


def _fused_here(x: torch.Tensor) -> bool:
    """Whether a Block in eval mode runs each conv + batch-norm + ReLU as one oneDNN convolution: on the
    CPU under bf16 autocast, where torch has oneDNN's fused op. Each norm's pass over the feature map and
    ReLU's go (predict's forward passes ran 12-15 % faster on the Zen 5, README: Benchmarks)."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()  # the fused op has no backward: a gradient through eval mode keeps torch's
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and _FUSED_OP is not None
    )


def _fused_op() -> Callable | None:
    """oneDNN's convolution with a post-op, where this CPU runs it in bf16: torch refuses it without
    AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, where its own bf16 convolution falls back to a slow one."""
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if cpu_bf16_kernels() else None


_FUSED_OP = _fused_op()


def _conv_norm_relu(x: torch.Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> torch.Tensor:
    """relu(norm(conv(x))) in eval mode as one bf16 convolution, the norm folded into its weights and
    bias. The bias stays fp32, added in the convolution's fp32 sums before they are rounded to bf16: a
    bias rounded to bf16 (what autocast does to F.conv2d's) doubled the pixels that differ from fp32."""
    scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + norm.eps)  # (cout,)
    bias = norm.bias.float() - norm.running_mean.float() * scale  # the conv has none: Block's norm shifts
    weight = (conv.weight.float() * scale[:, None, None, None]).to(torch.bfloat16).contiguous(memory_format=_layout(x))
    return _FUSED_OP(
        x.to(torch.bfloat16), weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups, "relu", [], ""
    )


class Down(nn.Sequential):
    """Halve the resolution, then a Block."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True):
        super().__init__(nn.MaxPool2d(2), Block(cin, cout, batch_norm))


class _CatUpsampled(torch.autograd.Function):
    """cat([skip, depth-to-space(y)], dim=1) with one copy per input, forward and backward: y (B, 4c, h, w)
    holds each output pixel (2h+i, 2w+j)'s c channels at channels (i, j, :). Separate pixel_shuffle and
    cat copies the upsampled map twice each way; at 16-64 channels those copies cost more than the
    convolution (README: Benchmarks)."""

    @staticmethod
    def forward(ctx, skip: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c4, h, w = y.shape
        c, cs = c4 // 4, skip.shape[1]
        dtype = torch.promote_types(skip.dtype, y.dtype)
        out = torch.empty((b, cs + c, 2 * h, 2 * w), dtype=dtype, device=y.device, memory_format=_layout(skip))
        out[:, :cs].copy_(skip)
        _pixels(out[:, cs:], h, w).copy_(_pixels(y, h, w, packed=True))
        ctx.sizes = (cs, c, h, w)
        return out  # (B, cs + c, 2h, 2w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cs, c, h, w = ctx.sizes
        layout = _layout(grad)
        grad_y = torch.empty((len(grad), 4 * c, h, w), dtype=grad.dtype, device=grad.device, memory_format=layout)
        _pixels(grad_y, h, w, packed=True).copy_(_pixels(grad[:, cs:], h, w))
        # a dense copy, not a view: autograd adds the skip's other gradient (the max-pool's) into it in
        # place, where a sum with a strided view ran 4.8x slower than one of dense tensors
        return grad[:, :cs].contiguous(memory_format=layout), grad_y


def _layout(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _pixels(t: torch.Tensor, h: int, w: int, packed: bool = False) -> torch.Tensor:
    """A view (B, h, 2, w, 2, c) of an upsampled map t (B, c, 2h, 2w), or with `packed` of its
    channels-packed form t (B, 4c, h, w) (channels ordered i, j, c), whatever t's memory layout."""
    t = t.permute(0, 2, 3, 1)  # (B, rows, cols, channels)
    if packed:
        return t.unflatten(3, (2, 2, -1)).permute(0, 1, 3, 2, 4, 5)  # (B, h, w, 2, 2, c) -> (B, h, 2, w, 2, c)
    return t.unflatten(1, (h, 2)).unflatten(3, (w, 2))  # (B, 2h, 2w, c) -> (B, h, 2, w, 2, c)


class Up(nn.Module):
    """Double the resolution with a transposed 2x2 conv, concatenate the skip, then a Block."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.block = Block(2 * cout, cout, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if skip.shape[-2:] != (2 * x.shape[-2], 2 * x.shape[-1]):  # odd input sizes: pad to the skip's size
            x = self.up(x)  # (B, cout, 2h, 2w)
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            return self.block(torch.cat([skip, x], dim=1))
        # The same transposed conv as a 1x1 conv to the 2x2 output pixels' channels: oneDNN runs a 1x1
        # conv near the peak, its 2x2 stride-2 transposed conv (weight gradient) at 17-50 % of it.
        cin, cout = self.up.weight.shape[:2]
        weight = self.up.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin, 1, 1)  # (i, j, cout, cin)
        bias = None if self.up.bias is None else self.up.bias.repeat(4)
        y = F.conv2d(x, weight, bias)  # (B, 4 cout, h, w)
        return self.block(_CatUpsampled.apply(skip, y))  # (B, 2 cout, 2h, 2w) -> (B, cout, 2h, 2w)


class GlobalContext(nn.Module):
    """Add a linear map of the whole input's mean features to every position, so each pixel also sees
    what the tile is as a whole (a forest, a field with trees), beyond the convolutions' reach.
    Zero-initialised: training starts from the plain UNet."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x.mean(dim=(2, 3), keepdim=True))  # (B, c, h, w) + (B, c, 1, 1)


class MixStyle(nn.Module):
    """While training, with probability `p` per batch: each tile's per-channel feature mean and std
    replaced by a random mix of its own and another tile's of the batch (MixStyle, Zhou et al. 2021),
    so the model learns features that hold across scenes' light and colour rather than one scene's
    statistics. The identity in eval mode and without gradients (so batch-norm adaptation, which
    runs a training-mode forward under no_grad, sees the scene as it is). Random draws come from
    torch's global generator, which training seeds and the resume file keeps."""

    def __init__(self, p: float, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and len(x) > 1 and torch.rand(()) < self.p):
            return x
        mu = x.mean(dim=(2, 3), keepdim=True).detach()  # (B, c, 1, 1)
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        # drawn on the CPU (its generator is what the resume file keeps); copied without a wait, as the
        # loader copies: a blocking copy to a GPU waits for all the work queued before it
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((len(x), 1, 1, 1))  # (B, 1, 1, 1)
        lam = lam.to(device=x.device, dtype=x.dtype, non_blocking=True)
        other = torch.randperm(len(x)).to(x.device, non_blocking=True)
        mu_mix, sig_mix = lam * mu + (1 - lam) * mu[other], lam * sig + (1 - lam) * sig[other]
        return (x - mu) / sig * sig_mix + mu_mix


class UNet(nn.Module):
    """UNet with `depth` downsamplings; level i has width * 2**i channels. `context` adds a
    GlobalContext at the bottom level; `mixstyle` > 0 a MixStyle on the features of the first two
    levels, skips included (the shallow features carry a scene's style)."""

    def __init__(
        self,
        width: int,
        depth: int,
        batch_norm: bool = True,
        in_channels: int = 3,
        context: bool = False,
        mixstyle: float = 0.0,
    ):
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]  # width 16, depth 3: 16, 32, 64, 128
        self.stem = Block(in_channels, widths[0], batch_norm)
        self.downs = nn.ModuleList(Down(a, b, batch_norm) for a, b in zip(widths, widths[1:]))
        # no parameters: model files with and without it hold the same weights
        self.styles = nn.ModuleList(
            MixStyle(mixstyle) if mixstyle and i < 2 else nn.Identity() for i in range(depth + 1)
        )
        self.context = GlobalContext(widths[-1]) if context else nn.Identity()
        self.ups = nn.ModuleList(Up(b, a, batch_norm) for a, b in zip(widths[::-1][1:], widths[::-1]))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.styles[0](self.stem(x))]  # (B, w, H, W)
        for style, down in zip(self.styles[1:], self.downs):
            skips.append(style(down(skips[-1])))  # (B, w*2**i, H/2**i, W/2**i)
        x = self.context(skips.pop())  # (B, w*2**depth, H/2**depth, W/2**depth)
        for up in self.ups:
            x = up(x, skips.pop())  # back up one level per step
        return self.head(x)[:, 0]  # (B, H, W) logits


class LowResolution(nn.Module):
    """Run a model on the input averaged over `factor` x `factor` pixels and resize its logits back:
    1/factor**2 of the FLOPs, and each convolution covers `factor` times the ground (forest masks are
    drawn coarser than the photo's 0.5 m pixels)."""

    def __init__(self, inner: nn.Module, factor: int):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(F.avg_pool2d(x, self.factor, ceil_mode=True))  # (B, ceil(H/f), ceil(W/f))
        # up by exactly `factor`, then cut to (H, W): resizing ceil(H/f) cells to H pixels would stretch
        # them where H is no multiple of f, shifting the map up to f - 1 px across the tile
        y = F.interpolate(y[:, None].float(), scale_factor=self.factor, mode="bilinear", align_corners=False)
        return y[:, 0, : x.shape[-2], : x.shape[-1]]  # (B, H, W)


class StudyUNet(nn.Module):
    """The 2022 study's UNet: valid (unpadded) 3x3 convs, levels 64/128/256, no batch-norm,
    skips cropped to the deeper path's pixels, and the smaller output map resized back to the input
    (~1.9 M params). The resize stretches a map of input pixels 20..H-21 over 0..H-1, so a pixel's
    call comes from up to 20 px away at the tile's edges (the recipe keeps this design of the study's;
    the padded `unet` archs keep every pixel in place)."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, int, int] = (64, 128, 256)):
        super().__init__()
        a, b, c = widths

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3), nn.ReLU(inplace=True)
            )

        self.enc1, self.enc2, self.bottom = block(in_channels, a), block(a, b), block(b, c)
        self.up2, self.dec2 = nn.ConvTranspose2d(c, b, 2, stride=2), block(2 * b, b)
        self.up1, self.dec1 = nn.ConvTranspose2d(b, a, 2, stride=2), block(2 * a, a)
        self.head = nn.Conv2d(a, 1, 1)

    @staticmethod
    def _crop(skip: torch.Tensor, like: torch.Tensor, offset: int) -> torch.Tensor:
        """The skip's pixels under `like`'s, which start `offset` px in: a fixed offset, not centring,
        which is one pixel off where a pooling dropped an odd row (H not a multiple of 4)."""
        return skip[..., offset : offset + like.shape[-2], offset : offset + like.shape[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # sizes for H, W multiples of 4 (else floored)
        s1 = self.enc1(x)  # (B, 64, H-4, W-4): pixel v is the input's v+2
        s2 = self.enc2(F.max_pool2d(s1, 2))  # (B, 128, H/2-6, W/2-6): pixel a is s1's 2a+4
        y = self.bottom(F.max_pool2d(s2, 2))  # (B, 256, H/4-7, W/4-7)
        y = self.up2(y)  # (B, 128, H/2-14, W/2-14): pixel d is s2's d+4
        y = self.dec2(torch.cat([self._crop(s2, y, 4), y], 1))  # (B, 128, H/2-18, W/2-18)
        y = self.up1(y)  # (B, 64, H-36, W-36): pixel f is s1's f+16
        y = self.dec1(torch.cat([self._crop(s1, y, 16), y], 1))  # (B, 64, H-40, W-40): the input's 20..H-21
        y = self.head(y)  # (B, 1, H-40, W-40)
        return F.interpolate(y.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)


@dataclass(frozen=True)
class Arch:
    """An architecture of the registry: how to build it from the model section, and the smallest tile
    (px) it trains on, a batch of one tile included."""

    build: Callable[[ModelConfig], nn.Module]
    smallest_tile: Callable[[ModelConfig], int]
    # the model keys it reads besides arch and input: fixed layers read none, and a MixStyle asked of
    # an arch without one is refused (config), not silently left out
    uses: frozenset[str] = frozenset({"width", "depth", "batch_norm", "mixstyle"})


def _unet(context: bool = False, factor: int = 1) -> Arch:
    def build(cfg: ModelConfig) -> nn.Module:
        unet = UNet(cfg.width, cfg.depth, cfg.batch_norm, context=context, mixstyle=cfg.mixstyle)
        return LowResolution(unet, factor) if factor > 1 else unet

    def smallest_tile(cfg: ModelConfig) -> int:
        # the deepest level has floor(ceil(tile / factor) / 2**depth) px a side; batch-norm needs more
        # than one value per channel, so 2x2 there for a batch of one tile (a last batch, scene batches)
        deepest = 2 if cfg.batch_norm else 1
        return factor * (deepest * 2**cfg.depth - 1) + 1

    return Arch(build, smallest_tile)


# Every architecture a user can name in model.arch.
ARCHS: dict[str, Arch] = {
    "unet": _unet(),
    # the same with a GlobalContext at the bottom: each output also depends on the whole window
    "unet_context": _unet(context=True),
    # the plain UNet on the input at half resolution, logits resized back: 1/4 of the FLOPs
    "unet_half": _unet(factor=2),
    # the same at a quarter of the resolution: 1/16 of the FLOPs, 4x the ground per convolution
    "unet_quarter": _unet(factor=4),
    # the 2022 study's model: fixed widths 64/128/256, no batch-norm; its valid convs eat 40 px
    "study_unet": Arch(lambda cfg: StudyUNet(), lambda cfg: 48, uses=frozenset()),
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of `cfg.arch` (ARCHS), freshly initialised."""
    return ARCHS[cfg.arch].build(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` has batch-norm layers, whose statistics adapt_batchnorm moves."""
    return bool(_batchnorms(model))


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, x: torch.Tensor, mix: float) -> nn.Module:
    """A copy of `model` in eval mode whose batch-norm statistics are (1 - mix) x its own + mix x
    those of `x` (N, 3, H, W), model input of one scene (no label is used): a scene's light and
    colour shift the features away from the training statistics. One training-mode forward pass of
    `x` as one batch updates every layer (deeper layers see the scene through already-normalised
    ones). The weights stay; `mix` 0, no input or no batch-norm give `model` itself. bench/QUALITY.md, "Round 8"."""
    if not (mix and len(x) and has_batchnorm(model)):
        return model
    adapted = copy.deepcopy(model)
    for m in _batchnorms(adapted):
        m.momentum = mix  # one training-mode forward: running = (1 - mix) x running + mix x the batch's
    try:
        # one thread on the CPU: batch-norm sums its batch statistics in an order that follows the thread
        # count, and the scores flipped pixels with it (the same numbers on any machine; a fraction of a second)
        with cpu_threads(1 if x.device.type == "cpu" else None):
            adapted.train()(x)
    except ValueError as e:  # a batch-norm layer that would see one value per channel
        raise ForestsegError(
            f"cannot adapt batch-norm to {len(x)} window(s) of {x.shape[-2]}x{x.shape[-1]} px: the deepest "
            f"level sees one value per channel ({e}); give more or larger images, or --adapt-bn 0"
        ) from None
    return adapted.eval()
