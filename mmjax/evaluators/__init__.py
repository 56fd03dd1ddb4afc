"""Evaluators: small modules that score parameters, listed by name in the config's `c.evals`
(one concept per file, registered by type; `base` holds the interface).

  vqa    exact-match VQA accuracy by question family and kind, from greedy generation  (vqa.py)
  loss   answer-token loss and perplexity                                             (loss.py)

Every module of this package is imported here and registers itself (`base.register`).
"""
import importlib
import pkgutil

from mmjax.evaluators import base
from mmjax.evaluators.base import Context, Evaluator, build, check, scalars

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

EVALUATORS = base.REGISTRY
