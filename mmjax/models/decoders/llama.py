"""The LLaMA / Qwen2 decoder (`mmjax.models.llm`) as the decoder named "llama"."""
from mmjax.models import llm
from mmjax.models.decoders import base

base.register("llama", llm.LLMConfig, llm.Decoder, llm.from_block)
