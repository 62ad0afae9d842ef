"""What this machine's PyTorch can do, for the few expectations that depend on it.

With ``ATEN_CPU_CAPABILITY=default`` (PyTorch's non-vectorised kernels, one
of the passes .ci/run makes), torch 2.13's inductor still emits C++ that
calls ``at::vec`` reductions without including them, so ``torch.compile``
of a sum over a large tensor fails to build there. ``rc.Adam(compile=True)``
then falls back to its eager closed form with one warning (tested in
tests/test_closed_form.py), and the tests that check the compiled path
really compiled accept that fallback on such a machine only.
"""

import torch

INDUCTOR_BUILDS_REDUCTIONS = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
