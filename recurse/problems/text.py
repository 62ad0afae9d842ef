"""A language-modelling task on text every machine has: Python's own sources."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from recurse.problems.supervised import SupervisedTask, split

# Pure-Python standard-library modules present in every supported Python, read in this order.
SOURCES = ("argparse", "textwrap", "string", "difflib", "shlex", "calendar", "fractions", "heapq", "bisect",
           "functools", "dataclasses", "enum", "contextlib", "inspect", "pathlib", "typing")
VOCABULARY = 128  # ASCII; any other character reads as "?"


def standard_library_text(characters: int) -> str:
    """The first ``characters`` characters of :data:`SOURCES`' files,
    concatenated (the same on every machine with the same Python minor version)."""
    pieces, total = [], 0
    for name in SOURCES:
        origin = importlib.util.find_spec(name).origin
        text = Path(origin).read_text(encoding="utf-8")
        pieces.append(text)
        total += len(text)
        if total >= characters:
            break
    text = "".join(pieces)
    if len(text) < characters:
        raise ValueError(f"CharLM: the standard library sources hold {len(text)} characters, fewer than the "
                         f"{characters} asked for")
    return text[:characters]


class CausalTransformer(nn.Module):
    """A pre-norm causal transformer language model: token and position
    embeddings of width ``width``, ``layers`` self-attention blocks
    (``width // 16`` heads, a 4x GELU MLP, no dropout) and a linear head."""

    def __init__(self, vocabulary: int, width: int, layers: int, block: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Embedding(block, width)
        layer = nn.TransformerEncoderLayer(width, max(1, width // 16), 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device, dtype=self.head.weight.dtype)
        hidden = self.tokens(ids) + self.positions(torch.arange(length, device=ids.device))
        return self.head(self.norm(self.blocks(hidden, mask=mask, is_causal=True)))


class CharLM(SupervisedTask):
    """Next-character prediction on ``characters`` characters of Python's
    standard-library sources (:data:`SOURCES`, read from disk: no download;
    the text is that of the running Python's version), cut into blocks of
    ``block`` characters, 10% of them held out by a seeded split. The model
    is a causal transformer (:class:`CausalTransformer`) of width
    ``hidden`` with ``layers`` layers; the loss is the mean cross-entropy
    per character (nats). Trained with AdamW and weight decay, as language
    models are.

    >>> task = rc.problems.make_task("char_lm", characters=20_000)
    >>> task.train_inputs.shape, task.train_inputs.dtype, task.outputs
    (torch.Size([281, 64]), torch.int64, 128)
    """

    name = "char_lm"
    classification = True

    def __init__(self, characters: int = 200_000, *, block: int = 64, layers: int = 2, valid_fraction: float = 0.1,
                 seed: int = 0, dtype=torch.float32, device="cpu") -> None:
        text = standard_library_text(characters)
        ids = torch.tensor([ord(c) if ord(c) < VOCABULARY else ord("?") for c in text])
        count = (len(ids) - 1) // block
        inputs = ids[:count * block].reshape(count, block)
        targets = ids[1:count * block + 1].reshape(count, block)
        train_x, train_y, valid_x, valid_y = split(inputs, targets, valid_fraction, seed)
        self.train_inputs, self.train_targets = train_x.to(device), train_y.to(device)
        self.valid_inputs, self.valid_targets = valid_x.to(device), valid_y.to(device)
        self.block, self.layers, self._dtype = block, layers, dtype
        self.python = f"{sys.version_info.major}.{sys.version_info.minor}"  # (whose sources these are)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def outputs(self) -> int:
        return VOCABULARY

    def network(self, hidden: int) -> nn.Module:
        return CausalTransformer(VOCABULARY, hidden, self.layers, self.block)

    def criterion(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    def valid_accuracy(self, model: nn.Module) -> float:
        """Fraction of held-out characters predicted right."""
        with torch.no_grad():
            return (model(self.valid_inputs).argmax(-1) == self.valid_targets).double().mean().item()
