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
