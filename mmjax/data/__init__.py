"""Data: image decoding, resolution policies, tokenizers, datasets and the input pipeline."""
