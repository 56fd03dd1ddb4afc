"""Hugging Face checkpoints (config.json + safetensors) ↔ mmjax configs and params."""
