import itertools

import pytest
import torch
from torch import nn

torch.set_num_threads(2)


class MLP(nn.Module):
    """A plain MLP: the smallest model the inventory must handle with no tables."""

    def __init__(self, sizes=(64, 128, 64, 10)):
        super().__init__()
        layers = []
        for a, b in itertools.pairwise(sizes[:-1]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP()


@pytest.fixture
def tiny_swin():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=2, in_chans=3, num_classes=10, window_size=4,
                           embed_dim=32, depths=(2, 2), num_heads=(2, 4))


@pytest.fixture
def resnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


def batches(n=2, shape=(8, 3, 32, 32), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)) for _ in range(n)]
