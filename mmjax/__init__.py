"""mmjax: multimodal LLMs that see images at many resolutions, in JAX/Flax (Linen)."""
