"""Decoders: the language model visual tokens are written into (one concept per file).

  llama    LLaMA / Vicuna / Qwen2: RMSNorm, RoPE (or M-RoPE), SwiGLU, grouped-query attention
           (llama.py; the model is mmjax.models.llm)

Every module of this package is imported here and registers itself (`base.register`).
"""
import importlib
import pkgutil

from mmjax.models.decoders import base
from mmjax.models.decoders.base import DecoderConfig, from_config, module_for

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

DECODERS = base.REGISTRY
