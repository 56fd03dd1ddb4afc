"""TFDS builders: the embedded fine-detail VQA set and LLaVA-format ingestion."""
