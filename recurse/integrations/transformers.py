"""Hugging Face ``Trainer`` with an rc.HyperOptimizer.

Hand the optimizer to Trainer and keep everything else, its default
schedule included (``pip install "recurse[transformers]"``)::

    opt = rc.HyperOptimizer(model.parameters(), rc.tower(rc.AdamW(5e-4), depth=2))
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None),
                      callbacks=[LearnedHyperparameters()])

Trainer builds its schedule (``lr_scheduler_type``, linear decay to 0 by
default) over the optimizer's param groups; over a learned lr that schedule
scales what the tower learns (see :mod:`recurse.param_group`), and the
last step of a decay to 0 takes no step. Trainer's checkpoints
(``optimizer.pt``, ``scheduler.pt``) hold the tower's state, so
``trainer.train(resume_from_checkpoint=...)`` ends where the uninterrupted run ends.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from recurse.integrations.values import PREFIX, hyper_optimizer, learned_values

__all__ = ["PREFIX", "LearnedHyperparameters", "learned_values"]


class LearnedHyperparameters(TrainerCallback):
    """Adds every learned hyperparameter of the rc.HyperOptimizer that
    Trainer steps to each of Trainer's log entries, as
    ``"recurse/<level>.<name>"`` (``opt.learned_hyperparameters()``), with
    ``"recurse/group<i>.lr_used"`` for the lr each param group stepped with
    (the learned lr times the schedule's factor). The values go into
    ``trainer.state.log_history`` and reach the callbacks that log after
    this one; Trainer runs its reporting integrations (TensorBoard, W&B)
    first, so pass this callback to reach them through the history."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any):
        optimizer = hyper_optimizer(kwargs.get("optimizer"))
        if optimizer is None or logs is None:
            return control
        values = learned_values(optimizer)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
        return control
