"""Decoder LLM: parity with transformers LLaMA / Qwen2, KV cache, scan/remat, purity, full size."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mmjax.convert import hf
from mmjax.convert import layout
from mmjax.models import llm
from tests import hf_models

TINY = llm.LLMConfig(vocab_size=97, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=48)

HF_CONFIGS = {
    # GQA, untied head, biases on q/k/v/o and the MLP, a non-default theta and head_dim.
    "llama": transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=16, attention_bias=True,
        mlp_bias=True, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    # GQA, tied embeddings, q/k/v bias only.
    "qwen2": transformers.Qwen2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
}
HF_CLASSES = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_pair(request, tmp_path_factory):
  """(HF torch model, mmjax config, mmjax params) converted through a safetensors directory."""
  torch.manual_seed(0)
  model = hf_models.perturb(HF_CLASSES[request.param](HF_CONFIGS[request.param]))
  directory = hf_models.save(model, tmp_path_factory.mktemp(request.param))
  config, params = hf.load_hf(directory)
  return model, config, {"params": params}


def _text_inputs(rng, batch, length, vocab):
  tokens = rng.integers(0, vocab, (batch, length))
  positions = np.broadcast_to(np.arange(length), (batch, length))
  return tokens, positions, np.ones((batch, length), np.int32)


@jax.jit(static_argnums=0)
def _forward(config, variables, tokens, positions, segment_ids, cache=None):
  model = llm.Decoder(config)
  return model.apply(variables, tokens, positions, segment_ids, cache,
                     method=model.forward_tokens)


@pytest.mark.parametrize("length", [7, 19])
def test_logits_match_transformers(hf_pair, rng, length):
  model, config, variables = hf_pair
  tokens, positions, segments = _text_inputs(rng, 2, length, config.vocab_size)
  segments[1, length - 3:] = 0  # Right padding in the second row.
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(tokens),
                attention_mask=torch.from_numpy(segments != 0).long()).logits.numpy()
  logits, _, _ = _forward(config, variables, tokens, positions, segments)
  valid = segments != 0
  np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=1e-4, rtol=0)


def _greedy(config, variables, prompts, steps):
  """Left-pads the prompts, prefills a cache, then decodes `steps` tokens one at a time."""
  batch, width = len(prompts), max(len(p) for p in prompts)
  tokens = np.zeros((batch, width), np.int64)
  segments = np.zeros((batch, width), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):], segments[i, width - len(p):] = p, 1
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
  cache = llm.init_cache(config, batch, width + steps)
  logits, _, cache = _forward(config, variables, tokens, positions, segments, cache)
  nxt, pos, out = jnp.argmax(logits[:, -1], -1), positions[:, -1], []
  for _ in range(steps):
    out.append(np.asarray(nxt))
    pos = pos + 1
    logits, _, cache = _forward(config, variables, nxt[:, None], pos[:, None],
                                np.ones((batch, 1), np.int32), cache)
    nxt = jnp.argmax(logits[:, -1], -1)
  return np.stack(out, axis=1), tokens, segments


def test_greedy_decoding_matches_transformers_generate(hf_pair, rng):
  model, config, variables = hf_pair
  prompts = [rng.integers(0, config.vocab_size, n) for n in (5, 9)]
  ours, tokens, segments = _greedy(config, variables, prompts, steps=20)
  gen_config = transformers.GenerationConfig(max_new_tokens=20, min_new_tokens=20,
                                             do_sample=False, eos_token_id=None, pad_token_id=0)
  with torch.no_grad():
    ref = model.generate(input_ids=torch.from_numpy(tokens),
                         attention_mask=torch.from_numpy(segments).long(),
                         generation_config=gen_config)
  np.testing.assert_array_equal(ours, ref[:, tokens.shape[1]:].numpy())


def test_cached_decoding_equals_full_forward(rng):
  variables = llm.Decoder(TINY).init(jax.random.key(1), *map(jnp.asarray, _text_inputs(
      rng, 2, 4, TINY.vocab_size)), method=llm.Decoder.forward_tokens)
  tokens, positions, segments = _text_inputs(rng, 2, 12, TINY.vocab_size)
  full, _, _ = _forward(TINY, variables, tokens, positions, segments)
  cache = llm.init_cache(TINY, 2, 16)
  logits, _, cache = _forward(TINY, variables, tokens[:, :5], positions[:, :5], segments[:, :5],
                              cache)
  pieces = [logits]
  for t in range(5, 12):
    logits, _, cache = _forward(TINY, variables, tokens[:, t:t + 1], positions[:, t:t + 1],
                                segments[:, t:t + 1], cache)
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)
  assert int(cache["index"]) == 12


def test_packed_segments_do_not_see_each_other(rng):
  tokens, positions, _ = _text_inputs(rng, 1, 10, TINY.vocab_size)
  variables = llm.Decoder(TINY).init(jax.random.key(0), tokens, positions, np.ones_like(tokens),
                                     method=llm.Decoder.forward_tokens)
  packed_seg = np.array([[1] * 4 + [2] * 6])
  packed_pos = np.array([list(range(4)) + list(range(6))])
  packed, _, _ = _forward(TINY, variables, tokens, packed_pos, packed_seg)
  alone, _, _ = _forward(TINY, variables, tokens[:, 4:], packed_pos[:, 4:], packed_seg[:, 4:])
  np.testing.assert_allclose(packed[:, 4:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", ["scan_layers", "remat"])
def test_scan_and_remat_equal_the_unrolled_loop(rng, option):
  tokens, positions, segments = _text_inputs(rng, 2, 8, TINY.vocab_size)
  variables = nn.unbox(llm.Decoder(TINY).init(jax.random.key(0), tokens, positions, segments,
                                              method=llm.Decoder.forward_tokens))
  other = llm.LLMConfig(**{**TINY.__dict__, option: True})
  other_vars = {"params": layout.scan_layout(variables["params"])} if option == "scan_layers" \
      else variables

  def loss(config, v):
    logits, _, _ = _forward(config, v, tokens, positions, segments)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  ref_loss, ref_grad = jax.value_and_grad(loss, argnums=1)(TINY, variables)
  got_loss, got_grad = jax.value_and_grad(loss, argnums=1)(other, other_vars)
  np.testing.assert_allclose(got_loss, ref_loss, atol=1e-6)
  if option == "scan_layers":
    got_grad = {"params": layout.unrolled_layout(got_grad["params"])}
  chex.assert_trees_all_close(got_grad, ref_grad, atol=1e-5)


class PurityTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_apply_is_pure_and_traced_once(self):
    rng = np.random.default_rng(0)
    tokens, positions, segments = _text_inputs(rng, 2, 6, TINY.vocab_size)
    model = llm.Decoder(TINY)
    variables = model.init(jax.random.key(0), tokens, positions, segments,
                           method=model.forward_tokens)

    @self.variant
    @chex.assert_max_traces(n=1)
    def run(v, t, p, s):
      return model.apply(v, t, p, s, method=model.forward_tokens)[0]

    first = run(variables, tokens, positions, segments)
    again = run(variables, tokens, positions, segments)
    other = run(variables, (tokens + 1) % TINY.vocab_size, positions, segments)
    np.testing.assert_array_equal(first, again)
    self.assertFalse(np.allclose(first, other))
    plain = model.apply(variables, tokens, positions, segments, method=model.forward_tokens)[0]
    np.testing.assert_allclose(first, plain, atol=1e-5)


def test_llama2_7b_shapes_without_allocating():
  config = llm.LLMConfig(scan_layers=True)  # The defaults are LLaMA-2-7B / Vicuna-7B.
  model = llm.Decoder(config)
  tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  variables = jax.eval_shape(lambda t: model.init(jax.random.key(0), t, t, t,
                                                 method=model.forward_tokens), tokens)
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(variables))
  assert count == 6_738_415_616  # LLaMA-2-7B's parameter count.
  logits, _, _ = jax.eval_shape(lambda v, t: model.apply(v, t, t, t, method=model.forward_tokens),
                                variables, tokens)
  assert logits.shape == (1, 16, 32000)


def test_every_parameter_has_logical_axes(rng):
  tokens, positions, segments = _text_inputs(rng, 1, 4, TINY.vocab_size)
  for scan in (False, True):
    config = llm.LLMConfig(**{**TINY.__dict__, "scan_layers": scan})
    boxed = llm.Decoder(config).init(jax.random.key(0), tokens, positions, segments,
                                     method=llm.Decoder.forward_tokens)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


@pytest.mark.parametrize("fields,message", [
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (dict(act="tanhh"), "valid"),
    (dict(attention_impl="flash"), "attention_impl"),
])
def test_invalid_config_is_rejected(fields, message):
  with pytest.raises(ValueError, match=message):
    llm.LLMConfig(**{**TINY.__dict__, **fields})


def test_conversion_errors_name_the_tensor(hf_pair):
  model, config, _ = hf_pair
  hf_config, tensors = hf.to_hf_tensors(config, jax.tree.map(np.asarray, hf_pair[2]["params"]),
                                        model.config.architectures[0])
  missing = dict(tensors)
  del missing["model.norm.weight"]
  with pytest.raises(ValueError, match="missing.*model.norm.weight"):
    hf.from_hf_tensors(hf_config, missing)
  with pytest.raises(ValueError, match="unknown.*model.extra.weight"):
    hf.from_hf_tensors(hf_config, {**tensors, "model.extra.weight": np.zeros(3)})


def test_round_trip_is_exact(hf_pair, tmp_path):
  model, config, variables = hf_pair
  arch = model.config.architectures[0]
  hf.save_hf(tmp_path / "hf", config, variables["params"], arch)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
  original = model.state_dict()
  for name, value in reloaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)
  scanned_config, scanned = hf.load_hf(tmp_path / "hf", scan_layers=True)
  assert "layers" in scanned["blocks"]
  _, again = hf.to_hf_tensors(scanned_config, scanned, arch)
  for name, value in again.items():
    np.testing.assert_array_equal(value, original[name].numpy(), err_msg=name)
