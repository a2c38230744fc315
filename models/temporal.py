"""Temporal modules: per-frame features ``(B, T, D)`` -> one clip feature ``(B, D')``.

``Net`` builds them as ``temporal(in_features=D)`` from partials and reads ``out_features``. ``LSTM`` and
``GRU`` see the frames in order; ``MeanPool`` (the frame-averaging, TSN-style baseline) and ``MaxPool``
do not, which is what the synthetic motion-order dataset exposes.
"""

from __future__ import annotations

from torch import Tensor, nn


class Recurrent(nn.Module):
    """A recurrent network over the frames; the clip feature is its final hidden state.

    For a bidirectional network the final states of both directions are concatenated (the backward
    direction's final state is the one after reading the first frame), so ``out_features = 2 * hidden_size``.
    """

    cell: type[nn.RNNBase]

    def __init__(
        self,
        *,
        in_features: int,
        hidden_size: int = 256,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"hidden_size={hidden_size} and num_layers={num_layers} must be positive")
        self.rnn = self.cell(
            in_features,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # between layers only; torch warns otherwise
            batch_first=True,
        )
        self.out_features = hidden_size * (2 if bidirectional else 1)

    def forward(self, x: Tensor) -> Tensor:
        _, state = self.rnn(x)  # x: (B, T, D)
        h = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c): (layers * dirs, B, H)
        dirs = 2 if self.rnn.bidirectional else 1
        return h[-dirs:].transpose(0, 1).reshape(x.shape[0], -1)  # last layer, all directions: (B, D')


class LSTM(Recurrent):
    cell = nn.LSTM


class GRU(Recurrent):
    cell = nn.GRU


class MeanPool(nn.Module):
    """Average over frames: order-blind."""

    def __init__(self, *, in_features: int) -> None:
        super().__init__()
        self.out_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1)  # (B, T, D) -> (B, D)


class MaxPool(MeanPool):
    """Maximum over frames: order-blind."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(1)  # (B, T, D) -> (B, D)
