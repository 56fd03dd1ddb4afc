"""Connectors: tower features → the decoder's width (one concept per file, registered by name).

  mlp       LLaVA's projector: Linear, or Linear (GELU, Linear)×(N−1); identity  (projector.py)

Every module of this package is imported here and registers itself (`base.register`).
"""
import importlib
import pkgutil

from mmjax.models.connectors import base
from mmjax.models.connectors.base import ConnectorConfig, from_config, module_for
from mmjax.models.connectors.projector import Projector, ProjectorConfig, validate_projector

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

CONNECTORS = base.REGISTRY
