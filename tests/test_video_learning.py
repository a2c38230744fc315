"""Temporal models learn the synthetic motion-order task on a small budget; frame averaging cannot.

Plain torch loops on generated mp4s (decoded once): the Lightning path is smoke-tested elsewhere.
"""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.video.decode import read_all
from data.video.synthetic import CLASSES, generate
from models.backbones import LeNet
from models.net import Net
from models.temporal import GRU, LSTM, MaxPool, MeanPool


def load_clips(tmp_path_factory, *, size: int, train: int, test: int):
    """Train and test videos ``(N, C, 16, size, size)`` in [-1, 1] with labels."""
    root = generate(tmp_path_factory.mktemp("synthetic"), per_class={"train": train, "val": 1, "test": test}, size=size)

    def load(split):
        lines = [line.split() for line in (root / f"{split}list.txt").read_text().splitlines()]
        x = np.stack([read_all(root / rel) for rel, _ in lines])  # (N, T, H, W, 3)
        x = torch.from_numpy(x).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (N, C, T, H, W)
        return x, torch.tensor([int(y) - 1 for _, y in lines])

    return load("train"), load("test")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return load_clips(tmp_path_factory, size=32, train=40, test=12)


def train_and_test(temporal, clips, *, epochs: int, lr: float = 5e-3, seed: int = 0) -> float:
    (x, y), (x_test, y_test) = clips
    torch.manual_seed(seed)
    net = Net(backbone=LeNet(), num_classes=len(CLASSES), temporal=temporal)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x), generator=gen).split(16):
            start = int(torch.randint(2, (1,), generator=gen))  # 8 frames, every 2nd: start 0 or 1
            loss = F.cross_entropy(net(x[batch][:, :, start::2]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return (net(x_test[:, :, 0::2]).argmax(1) == y_test).float().mean().item()


def test_gru_learns_temporal_order(clips):
    assert train_and_test(partial(GRU, hidden_size=64), clips, epochs=12) >= 0.8  # chance: 0.25


def test_mean_pooling_stays_near_chance(clips):
    assert train_and_test(MeanPool, clips, epochs=12) <= 0.4


@pytest.mark.slow
def test_lstm_learns_temporal_order(clips):
    assert train_and_test(partial(LSTM, hidden_size=128), clips, epochs=12) >= 0.8


@pytest.mark.slow
def test_max_pooling_stays_near_chance(clips):
    assert train_and_test(MaxPool, clips, epochs=12) <= 0.4


def test_temporal_modules_shapes():
    x = torch.randn(3, 5, 7)  # (B, T, D)
    for module, out in [
        (LSTM(in_features=7, hidden_size=4), 4),
        (GRU(in_features=7, hidden_size=4, num_layers=2), 4),
        (LSTM(in_features=7, hidden_size=4, bidirectional=True), 8),
        (MeanPool(in_features=7), 7),
        (MaxPool(in_features=7), 7),
    ]:
        assert module(x).shape == (3, out) and module.out_features == out
    torch.testing.assert_close(MeanPool(in_features=7)(x), x.mean(1))
    torch.testing.assert_close(MaxPool(in_features=7)(x), x.amax(1))


def test_recurrent_output_is_the_final_state_of_each_direction():
    torch.manual_seed(0)
    m = GRU(in_features=3, hidden_size=4, bidirectional=True)
    x = torch.randn(2, 6, 3)
    out, _ = m.rnn(x)  # (B, T, 2H): forward half ends at t = T-1, backward half at t = 0
    torch.testing.assert_close(m(x), torch.cat([out[:, -1, :4], out[:, 0, 4:]], dim=1))
    # Order matters to a recurrent module but not to pooling.
    assert not torch.allclose(m(x), m(x.flip(1)))
    torch.testing.assert_close(MeanPool(in_features=3)(x), MeanPool(in_features=3)(x.flip(1)))
