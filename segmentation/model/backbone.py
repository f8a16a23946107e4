"""detectron2's ResNet/ResNeXt body and FPN, under torchvision's module names.

torchvision's ``ResNet`` cannot express detectron2's options (``RES2_OUT_CHANNELS``, ``STRIDE_IN_1X1``, narrow
ResNeXt stages, ``FREEZE_AT`` that swaps frozen BatchNorm for FrozenBN), so the body is written here. It keeps
torchvision's names (``conv1``, ``bn1``, ``layer{1..4}.{b}.conv{k}/bn{k}/downsample.{0,1}``) so detectron2,
torchvision and timm checkpoints all load by name. The FPN is torchvision's ``FeaturePyramidNetwork`` with
``LastLevelMaxPool`` (P6 = max-pool k1 s2 of P5, as detectron2); its default init is detectron2's
``c2_xavier_fill``.

Both publish their outputs' channels and strides as timm models do, a ``feature_info`` (timm's ``FeatureInfo``:
one ``{"num_chs", "reduction", "module"}`` dict per output): the anchor generator and the ROI poolers take their
strides from it instead of repeating them.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from segmentation.model.config import FpnNorm, Norm
from segmentation.model.init import c2_msra_fill

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """The normalisation layer detectron2's ``get_norm`` builds for ``RESNETS.NORM``."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=1e-5)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {norm!r}")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    c2_msra_fill(conv)
    return conv


def _shortcut(in_ch: int, out_ch: int, stride: int, norm: Norm) -> nn.Sequential | None:
    if in_ch == out_ch:
        return None
    return nn.Sequential(_conv(in_ch, out_ch, 1, stride), make_norm(norm, out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the identity or a projection shortcut (ResNet-18/34)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(in_ch, out_ch, 3, stride), make_norm(norm, out_ch)
        self.conv2, self.bn2 = _conv(out_ch, out_ch, 3), make_norm(norm, out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> grouped 3x3 -> 1x1 bottleneck; the stride sits on the 1x1 only when ``stride_in_1x1``."""

    def __init__(
        self, in_ch: int, bottleneck_ch: int, out_ch: int, stride: int, groups: int, stride_in_1x1: bool, norm: Norm
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1 = _conv(in_ch, bottleneck_ch, 1, stride_1x1), make_norm(norm, bottleneck_ch)
        self.conv2 = _conv(bottleneck_ch, bottleneck_ch, 3, stride_3x3, groups)
        self.bn2 = make_norm(norm, bottleneck_ch)
        self.conv3, self.bn3 = _conv(bottleneck_ch, out_ch, 1), make_norm(norm, out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


def _to_frozen(module: nn.Module) -> nn.Module:
    """detectron2's ``FrozenBatchNorm2d.convert_frozen_batchnorm``: BatchNorm -> FrozenBN, same statistics."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _to_frozen(child))
    return module


class ResNet(nn.Module):
    """The stem (``conv1``/``bn1`` + 3x3 max-pool) and stages res2..res5 as ``layer1..layer4``.

    ``forward`` returns res2..res5 as an ordered dict keyed "0".."3" (torchvision's FPN feature names);
    ``feature_info`` gives their channels and strides (4..32) under timm's module names ``layer1..layer4``.
    The arguments are detectron2's ``MODEL.RESNETS`` keys and ``MODEL.BACKBONE.FREEZE_AT`` (see ``MaskRCNNConfig``).
    """

    def __init__(
        self,
        depth: int,
        *,
        num_groups: int,
        width_per_group: int,
        stem_out_channels: int,
        res2_out_channels: int,
        stride_in_1x1: bool,
        norm: Norm,
        freeze_at: int,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"unsupported depth {depth}")
        basic = depth in (18, 34)
        if basic and (res2_out_channels != 64 or num_groups != 1):
            raise ValueError("ResNet-18/34 need res2_out_channels 64 and num_groups 1 (as detectron2)")
        self.conv1 = _conv(3, stem_out_channels, 7, stride=2)
        self.bn1 = make_norm(norm, stem_out_channels)
        in_ch, out_ch, bottleneck_ch = stem_out_channels, res2_out_channels, num_groups * width_per_group
        info = []
        for idx, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
            blocks: list[nn.Module] = []
            for b in range(num_blocks):
                stride = 2 if idx > 0 and b == 0 else 1
                if basic:
                    blocks.append(BasicBlock(in_ch, out_ch, stride, norm))
                else:
                    blocks.append(Bottleneck(in_ch, bottleneck_ch, out_ch, stride, num_groups, stride_in_1x1, norm))
                in_ch = out_ch
            self.add_module(f"layer{idx + 1}", nn.Sequential(*blocks))
            # stride 4 after the stem's stride-2 conv and max-pool, then each stage's first block halves the size
            info.append({"num_chs": out_ch, "reduction": 4 * 2**idx, "module": f"layer{idx + 1}"})
            out_ch, bottleneck_ch = out_ch * 2, bottleneck_ch * 2
        self.feature_info = FeatureInfo(info, out_indices=tuple(range(len(info))))
        self._freeze(freeze_at)

    @property
    def out_channels(self) -> list[int]:
        """Channels of res2..res5, the FPN's inputs."""
        return self.feature_info.channels()

    def _freeze(self, freeze_at: int) -> None:
        if freeze_at >= 1:
            for p in (*self.conv1.parameters(), *self.bn1.parameters()):
                p.requires_grad_(False)
            self.bn1 = _to_frozen(self.bn1)
        for idx in range(1, 5):
            if freeze_at >= idx + 1:
                layer = getattr(self, f"layer{idx}")
                for p in layer.parameters():
                    p.requires_grad_(False)
                setattr(self, f"layer{idx}", _to_frozen(layer))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        out: OrderedDict[str, Tensor] = OrderedDict()
        for idx in range(4):
            x = getattr(self, f"layer{idx + 1}")(x)
            out[str(idx)] = x
        return out


class ResNetFPN(nn.Module):
    """``body`` (ResNet) + ``fpn``: returns P2..P6 keyed "0", "1", "2", "3", "pool" (strides 4..64).

    ``feature_info`` lists the five outputs; there ``module`` is the output's key, as timm's feature wrappers
    key their output dicts by module name.
    """

    def __init__(self, body: ResNet, out_channels: int, *, norm: FpnNorm) -> None:
        super().__init__()
        self.body = body
        # With a norm, detectron2's FPN convs have no bias, as torchvision's do when given a norm_layer.
        norm_layer = functools.partial(make_norm, norm) if norm else None
        self.fpn = FeaturePyramidNetwork(
            body.out_channels, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer
        )
        self.out_channels = out_channels
        body_strides = body.feature_info.reduction()
        levels = [(str(i), stride) for i, stride in enumerate(body_strides)] + [("pool", 2 * body_strides[-1])]
        info = [{"num_chs": out_channels, "reduction": stride, "module": key} for key, stride in levels]
        self.feature_info = FeatureInfo(info, out_indices=tuple(range(len(info))))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))
