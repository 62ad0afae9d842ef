"""An image task for convolutional networks: sklearn's digits as 1x8x8 images."""

from __future__ import annotations

from torch import nn

from recurse.problems.digits import Digits


class DigitsCNN(Digits):
    """sklearn's digits (the same standardised split as :class:`Digits`) as
    1x8x8 images, trained with a small CNN: two 3x3 convolutions of
    ``hidden`` and ``2 * hidden`` channels, each followed by ReLU and 2x2
    max pooling, then a linear classifier.

    >>> task = rc.problems.make_task("digits_cnn")
    >>> task.train_inputs.shape, sum(p.numel() for p in task.model(hidden=16).parameters())
    (torch.Size([1348, 1, 8, 8]), 6090)
    """

    name = "digits_cnn"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.train_inputs = self.train_inputs.reshape(-1, 1, 8, 8)
        self.valid_inputs = self.valid_inputs.reshape(-1, 1, 8, 8)

    def network(self, hidden: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),           # 8x8 -> 4x4
            nn.Conv2d(hidden, 2 * hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4 -> 2x2
            nn.Flatten(), nn.Linear(2 * hidden * 4, self.outputs))
