"""The coordinatewise LSTM optimizer of "Learning to learn by gradient
descent by gradient descent" (Andrychowicz et al., 2016).

One small LSTM is applied to every coordinate of the parameters it steps,
with the same weights for all of them (weight tying across coordinates), so
it can step a model of any size. Each coordinate keeps its own hidden and
cell state in the optimizer state. The LSTM's weights are the optimizer's
meta-parameters: one flat vector ``raw`` that ``rc.MetaTrainer``/``rc.unroll``
(or, online, another optimizer through ``hyper=``) learns.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recurse.optim.base import Optimizer, finite_float
from recurse.transforms import log_sign

PREPROCESSING = ("log_sign", "scale")


class LSTMOptimizer(Optimizer):
    """theta_{t+1} = theta_t + output_scale * LSTM(x_t), coordinatewise.

        x_t = (log(|g|) / p, sign(g))   if |g| >= exp(-p)   ("log_sign", L2L's
              (-1, exp(p) g)            otherwise            preprocessing)
            | input_scale * g                                ("scale")
        (h^l, c^l) = LSTMCell_l(h^{l-1}, (h^l, c^l))   l = 1 .. layers, h^0 = x_t
        output = w_out . h^layers + b_out

    Each LSTMCell is torch.nn.LSTMCell's (gates i, f, g, o), written with
    plain differentiable ops so that it can be unrolled and differentiated
    twice on any device. The weights are initialised as torch.nn.LSTM's,
    U(-1/sqrt(H), 1/sqrt(H)), from a generator seeded with ``seed``.

    Meta-trained like any optimizer's hyperparameters, here on one quadratic:

    >>> lstm = rc.LSTMOptimizer(hidden_size=4)           # the default is 2 layers of 20 units
    >>> theta = [torch.zeros(3)]
    >>> objective = lambda params, k: ((params[0] - 1) ** 2).sum()
    >>> trainer = rc.MetaTrainer(theta, objective, [lstm, rc.Adam(1e-3)], unroll_steps=[5], meta_loss="sum")
    >>> meta_loss = trainer.meta_step()
    >>> trainer.optimizers[0].raw.shape == lstm.raw.shape
    True
    """

    def __init__(self, hidden_size: int = 20, layers: int = 2, *, preprocess: str = "log_sign", p: float = 10.0,
                 input_scale: float = 1.0, output_scale: float = 0.1, seed: int = 0, learn=None, **options) -> None:
        owner = "rc.LSTMOptimizer"
        for name, value in (("hidden_size", hidden_size), ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
        if preprocess not in PREPROCESSING:
            raise ValueError(f"{owner}: preprocess must be one of {PREPROCESSING}, got {preprocess!r}")
        for name, value in (("p", p), ("input_scale", input_scale), ("output_scale", output_scale)):
            if finite_float(owner, name, value) <= 0:
                raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")
        if learn is not None and tuple([learn] if isinstance(learn, str) else learn) not in ((), ("weights",)):
            raise ValueError(f"{owner}: learn= must be None, 'weights' or () (frozen weights), got {learn!r}")
        super().__init__(learn=(), **options)
        self.hidden_size, self.layers = hidden_size, layers
        self.preprocess, self.p = preprocess, float(p)
        self.input_scale, self.output_scale, self.seed = float(input_scale), float(output_scale), seed
        self.learnable = () if learn is not None and not learn else ("weights",)
        self.learn_given = learn is not None and bool(learn)  # (by default its weights are meta-trained, or fixed)
        self.shapes = self._weight_shapes()
        self._sizes = [math.prod(shape) for shape in self.shapes]
        bound = 1.0 / math.sqrt(hidden_size)
        generator = torch.Generator().manual_seed(seed)
        self.raw = (torch.rand(sum(self._sizes), generator=generator, dtype=torch.float64) * 2 - 1) * bound

    def _weight_shapes(self) -> list[tuple[int, ...]]:
        """Per layer: w_ih (4H, in), w_hh (4H, H), bias (4H); then w_out (H,), b_out ()."""
        hidden, shapes = self.hidden_size, []
        inputs = 2 if self.preprocess == "log_sign" else 1
        for layer in range(self.layers):
            shapes += [(4 * hidden, inputs if layer == 0 else hidden), (4 * hidden, hidden), (4 * hidden,)]
        return shapes + [(hidden,), ()]

    def unpack(self, weights: Tensor) -> list[Tensor]:
        """The flat weight vector as the tensors of :meth:`_weight_shapes` (views)."""
        return [piece.view(shape) for piece, shape in zip(weights.split(self._sizes), self.shapes)]

    # --- the protocol -------------------------------------------------------

    def init(self, params):
        count = sum(p.numel() for p in params)
        like = params[0] if params else torch.zeros(())
        zeros = [like.new_zeros(count, self.hidden_size) for _ in range(self.layers)]
        return {"hidden": zeros, "cell": [z.clone() for z in zeros]}

    def update_depends_on_params(self):
        return False  # theta + delta(g, state, weights)

    def update(self, params, grads, state, hyper, *, closure=None):
        if not params:
            return [], state
        gradient = torch.cat([g.reshape(-1) for g in grads])
        weights = self.unpack(hyper["weights"].to(device=gradient.device, dtype=gradient.dtype))
        if self.preprocess == "log_sign":
            inputs = log_sign(gradient, self.p)
        else:
            inputs = (self.input_scale * gradient).unsqueeze(1)
        hidden, cell = [], []
        for layer in range(self.layers):
            w_ih, w_hh, bias = weights[3 * layer: 3 * layer + 3]
            gates = torch.addmm(bias, inputs, w_ih.T) + state["hidden"][layer] @ w_hh.T
            in_gate, forget_gate, candidate, out_gate = gates.chunk(4, dim=1)
            new_cell = torch.sigmoid(forget_gate) * state["cell"][layer] + torch.sigmoid(in_gate) * torch.tanh(candidate)
            inputs = torch.sigmoid(out_gate) * torch.tanh(new_cell)
            hidden.append(inputs)
            cell.append(new_cell)
        w_out, b_out = weights[-2:]
        steps = self.output_scale * (inputs @ w_out + b_out)
        new_params = [p + s.view_as(p) for p, s in zip(params, steps.split([p.numel() for p in params]))]
        return new_params, {"hidden": hidden, "cell": cell}

    # --- meta-parameters: one weight vector --------------------------------

    def hyper_values(self, raw: Tensor | None = None):
        """``{"weights": raw}``, the flat weight vector (``self.raw`` by default)."""
        return {"weights": self.raw if raw is None else raw}

    def assign_raw(self, raw: Tensor) -> None:
        self.raw = raw.detach()

    def current_values(self, raw: Tensor | None = None) -> dict[str, float]:
        """The root-mean-square of the weights (a summary: there are thousands)."""
        return {"weights.rms": float(self.tracked_values(raw)[0])}

    def raw_labels(self) -> list[str]:
        return [f"weights[{index}]" for index in range(self.raw.numel())]

    def tracked_names(self) -> tuple[str, ...]:
        return ("weights.rms",) if self.learnable else ()

    def tracked_values(self, raw: Tensor | None = None) -> Tensor:
        weights = (self.raw if raw is None else raw).detach()
        return weights.square().mean().sqrt().reshape(1)

    def hypergradient_values(self, raw: Tensor, gradient: Tensor) -> dict[str, float]:
        """The root-mean-square of d loss / d weights."""
        return {"weights.rms": float(gradient.square().mean().sqrt())}

    # --- saving a learned optimizer -----------------------------------------

    def state_dict(self) -> dict:
        """The architecture options and the weights: all a saved learned
        optimizer needs (``rc.checkpoint.save(lstm.state_dict(), path)``)."""
        options = {"hidden_size": self.hidden_size, "layers": self.layers, "preprocess": self.preprocess,
                   "p": self.p, "input_scale": self.input_scale, "output_scale": self.output_scale,
                   "seed": self.seed}
        return {"options": options, "weights": self.raw.detach().clone()}

    @classmethod
    def from_state_dict(cls, state_dict: dict, **options) -> LSTMOptimizer:
        """A learned optimizer saved by :meth:`state_dict` (``options`` such as
        ``hyper=`` or ``learn=`` are passed to the constructor)."""
        optimizer = cls(**state_dict["options"], **options)
        weights = state_dict["weights"]
        if weights.shape != optimizer.raw.shape:
            raise ValueError(f"rc.LSTMOptimizer.from_state_dict: {weights.numel()} weights saved, but the options "
                             f"{state_dict['options']} need {optimizer.raw.numel()}")
        optimizer.raw = weights.detach().clone()
        return optimizer

    def __repr__(self) -> str:
        hyper = "" if self.hyper is None else (", hyper=<self>" if self.hyper is self else f", hyper={self.hyper!r}")
        return (f"rc.LSTMOptimizer(hidden_size={self.hidden_size}, layers={self.layers}, "
                f"preprocess={self.preprocess!r}, output_scale={self.output_scale:g}{hyper})")
