"""Small random-init Hugging Face models for parity tests, saved as safetensors checkpoints."""
import pathlib

import torch


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
  """Adds noise to every parameter so norms, biases and scales are not at their init values."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
  return model.eval()


def save(model: torch.nn.Module, directory: pathlib.Path) -> pathlib.Path:
  model.save_pretrained(directory, safe_serialization=True)
  return directory
