"""Flax Linen modules: vision encoders, fusion, connectors, the decoder LLM and their assembly."""
