"""Integrations with training frameworks. Each module imports its framework
and is imported only by users of it: the core never imports them.

- :mod:`recurse.integrations.transformers`: a Hugging Face ``TrainerCallback``
  that logs the learned hyperparameters (needs the ``transformers`` extra).
- :mod:`recurse.integrations.lightning`: a Lightning ``Callback`` that logs
  them and their hypergradients every step (needs the ``lightning`` extra).
- :mod:`recurse.integrations.values`: what both log (no framework needed).
"""
