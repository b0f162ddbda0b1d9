"""Small models that exercise the converter's corner cases."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Zoo(nn.Module):
    """Aliased conv, a conv used twice, a functional conv, dilated/strided convs, Conv1d, Conv3d,
    padding="same", reflect padding."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.alias = self.dw                      # same module under a second name
        self.block = nn.Sequential(nn.Conv2d(8, 8, 5, padding="same", groups=8), nn.ReLU())
        self.twice = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # called twice in forward
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect", groups=8)
        self.seq1d = nn.Conv1d(8, 8, 5, padding=2, groups=8)
        self.vol = nn.Conv3d(2, 2, 3, padding=1, groups=2)
        self.register_buffer("fixed", torch.randn(8, 1, 3, 3) * 0.1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = self.dw(x) + self.alias(x)
        x = self.block(x)
        x = self.twice(self.twice(x))
        x = F.conv2d(x, self.fixed, padding=1, groups=8)  # functional call site
        x = self.dilated(x)
        x = self.reflect(x)
        x = self.strided(x)
        s = self.seq1d(x.flatten(2))
        v = self.vol(x[:, :2].unsqueeze(2).expand(-1, -1, 3, -1, -1).contiguous())
        feat = s.mean(-1) + v.mean((2, 3, 4)).repeat(1, 4)
        return self.head(feat)


class FunctionalMixer(nn.Module):
    """Conv calls written in forward: depthwise with bias, strided through a weight transform (centring), 1-D."""

    def __init__(self, c=8):
        super().__init__()
        self.c = c
        self.dw_weight = nn.Parameter(torch.randn(c, 1, 7, 7) * 0.1)
        self.dw_bias = nn.Parameter(torch.randn(c) * 0.1)
        self.dense_weight = nn.Parameter(torch.randn(c, c, 3, 3) * 0.1)
        self.line_weight = nn.Parameter(torch.randn(c, 1, 5) * 0.1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        x = F.conv2d(x, self.dw_weight, self.dw_bias, padding=3, groups=self.c)
        centred = self.dense_weight - self.dense_weight.mean(dim=(1, 2, 3), keepdim=True)
        x = F.conv2d(x, centred, None, 2, 1)
        y = F.conv1d(x.flatten(2), self.line_weight, padding=2, groups=self.c).view_as(x)
        return self.proj(x + y)


class StandardisedConv2d(nn.Conv2d):
    """A conv subclass that standardises its weight in forward (as timm's StdConv2d)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.var(dim=(1, 2, 3), keepdim=True) + 1e-5).sqrt()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FunctionalNet(nn.Module):
    """Functional calls in a submodule, a standardised conv subclass, a conv behind a weight_norm parametrization."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.mixer = FunctionalMixer(c)
        self.std = StandardisedConv2d(c, c, 5, padding=2, groups=c)
        self.normed = nn.utils.parametrizations.weight_norm(nn.Conv2d(c, c, 3, padding=1, groups=c))
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        x = self.normed(self.std(self.mixer(self.stem(x))))
        return self.head(x.mean((2, 3)))


class DynamicWeights(nn.Module):
    """A conv whose weight depends on the input."""

    def __init__(self, c=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, 1, 3, 3) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight * x.detach().std(), padding=1, groups=8)


class Untraceable(nn.Module):
    """Data-dependent control flow around a conv call: FX cannot trace it."""

    def __init__(self, c=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, 1, 3, 3) * 0.1)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return F.conv2d(x, self.weight, padding=1, groups=8)


class RootCall(nn.Module):
    """A conv call in the root's own forward, next to a module conv."""

    def __init__(self, c=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, 1, 3, 3) * 0.1)
        self.dw = nn.Conv2d(c, c, 5, padding=2, groups=c)

    def forward(self, x):
        return self.dw(F.conv2d(x, self.weight, padding=1, groups=8))
