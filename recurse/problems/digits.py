"""Classification tasks generated or shipped offline: sklearn's 8x8 digits
and the mnist1d generator (both need no download)."""

from __future__ import annotations

import torch

from recurse.problems.supervised import SupervisedTask, split, standardize


class Digits(SupervisedTask):
    """sklearn's ``load_digits`` (1,797 8x8 images, 10 classes), standardised,
    split into train and validation sets with a seeded permutation.

    >>> task = rc.problems.Digits()
    >>> task.train_inputs.shape, task.valid_inputs.shape, task.classification
    (torch.Size([1348, 64]), torch.Size([449, 64]), True)
    """

    name = "digits"
    classification = True

    def __init__(self, *, valid_fraction: float = 0.25, seed: int = 0, dtype=torch.float32, device="cpu") -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        inputs = torch.as_tensor(data.data, dtype=dtype)
        targets = torch.as_tensor(data.target, dtype=torch.long)
        train_x, train_y, valid_x, valid_y = split(inputs, targets, valid_fraction, seed)
        train_x, valid_x = standardize(train_x, valid_x)
        self.train_inputs, self.valid_inputs = train_x.to(device), valid_x.to(device)
        self.train_targets, self.valid_targets = train_y.to(device), valid_y.to(device)


class MNIST1D(SupervisedTask):
    """The mnist1d data set (Greydanus, 2020): 40-sample 1-D signals of 10
    digit templates, shifted, scaled and noised; made by the ``mnist1d``
    package's generator from ``seed``, so nothing is downloaded.

    >>> task = rc.problems.MNIST1D(samples=400)
    >>> task.train_inputs.shape, task.outputs
    (torch.Size([320, 40]), 10)
    """

    name = "mnist1d"
    classification = True

    def __init__(self, samples: int = 4000, *, seed: int = 0, dtype=torch.float32, device="cpu") -> None:
        from mnist1d.data import get_dataset_args, make_dataset

        arguments = get_dataset_args()
        arguments.num_samples = samples
        arguments.seed = seed
        data = make_dataset(arguments)
        train_x, valid_x = standardize(torch.as_tensor(data["x"], dtype=dtype),
                                       torch.as_tensor(data["x_test"], dtype=dtype))
        self.train_inputs, self.valid_inputs = train_x.to(device), valid_x.to(device)
        self.train_targets = torch.as_tensor(data["y"], dtype=torch.long).to(device)
        self.valid_targets = torch.as_tensor(data["y_test"], dtype=torch.long).to(device)
