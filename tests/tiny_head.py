"""A small head with the Head call signature (features, gist256) → descriptor, for step-exactness tests."""

import torch
from torch import nn

D, G, E = 12, 6, 6  # backbone feature, gist and descriptor dims


class TinyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(D + G, 16), nn.ReLU(), nn.Linear(16, E))

    def forward(self, feat, g):
        return 0.1 * self.ffn(torch.cat([feat, g], 1)) + g
