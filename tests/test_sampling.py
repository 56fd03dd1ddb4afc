"""Generation: cached decoding equals full recomputation, EOS and early exit, sampling rules,
determinism under a key, and one compilation per shape."""
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import sampling
from mmjax.models import connectors
from mmjax.models import llm
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models import vit

IMAGE = -200
TINY = mllm.MLLMConfig(
    tower=towers.ViTTowerConfig(vit.ViTConfig(image_size=28, patch_size=7, width=24, depth=2,
                                              num_heads=4, mlp_dim=48)),
    llm=llm.LLMConfig(vocab_size=61, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=48),
    image_token_id=IMAGE)
N_VISUAL = 16  # (28 / 7)^2 patches, class token dropped.
STEPS = 10
BUCKET = 32  # Every prompt here (9 to 29 tokens) pads to one prefill shape.


def _prompts(rng, text_lengths=(4, 9, 13), with_image=(True, False, True)):
  """Prompts of different lengths: a few text ids, the image's placeholder run, more text."""
  prompts = []
  for n, has_image in zip(text_lengths, with_image):
    text = rng.integers(0, TINY.llm.vocab_size, n).astype(np.int32)
    run = np.full(N_VISUAL if has_image else 0, IMAGE, np.int32)
    prompts.append(np.concatenate([text[:2], run, text[2:]]))
  return prompts


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  prompts = _prompts(rng)
  images = rng.normal(size=(len(prompts), 28, 28, 3)).astype(np.float32)
  batch = dict(sampling.pad_prompts(prompts, bucket=BUCKET), images=images)
  # A fast key: compiling the default threefry for every parameter costs ~10 s on CPU.
  key = jax.random.key(0, impl="unsafe_rbg")
  variables = nn.unbox(jax.jit(mllm.MLLM(TINY).init)(key, batch))
  return variables, prompts, images


def _greedy(variables, prompts, images, *, eos_id, pad_id=0):
  batch = dict(sampling.pad_prompts(prompts, bucket=BUCKET), images=images)
  return sampling.decode(TINY, variables, batch, None, max_new_tokens=STEPS, eos_id=eos_id,
                         pad_id=pad_id)


@jax.jit
def _full_forward(variables, batch):
  return mllm.MLLM(TINY).apply(variables, batch)[0]


def test_pad_prompts_left_pads_to_a_bucket_multiple():
  out = sampling.pad_prompts([np.array([5, 6, 7]), np.array([8])], bucket=4)
  np.testing.assert_array_equal(out["tokens"], [[0, 5, 6, 7], [0, 0, 0, 8]])
  np.testing.assert_array_equal(out["positions"], [[0, 0, 1, 2], [0, 0, 0, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [[0, 1, 1, 1], [0, 0, 0, 1]])
  assert sampling.pad_prompts([np.arange(5)], bucket=4)["tokens"].shape == (1, 8)
  with pytest.raises(ValueError, match="bucket"):
    sampling.pad_prompts([np.arange(5)], bucket=0)
  with pytest.raises(ValueError, match=r"prompts\[1\]"):
    sampling.pad_prompts([np.arange(5), np.array([], np.int32)])


def test_cached_greedy_equals_full_recomputation(setup):
  variables, prompts, images = setup
  got = _greedy(variables, prompts, images, eos_id=None)
  assert int(got.steps) == STEPS
  np.testing.assert_array_equal(got.lengths, [STEPS] * 3)
  # Reference: the whole sequence (right-padded to one shape) through the model for every token.
  width = max(map(len, prompts)) + STEPS
  seqs = [list(p) for p in prompts]
  for _ in range(STEPS):
    tokens = np.zeros((len(seqs), width), np.int32)
    segments = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
      tokens[i, :len(s)], segments[i, :len(s)] = s, 1
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
    logits = _full_forward(variables, {"tokens": tokens, "positions": positions,
                                       "segment_ids": segments, "images": images})
    for i, s in enumerate(seqs):
      s.append(int(np.argmax(logits[i, len(s) - 1])))
  ref = np.array([s[-STEPS:] for s in seqs])
  np.testing.assert_array_equal(got.tokens, ref)


def test_rows_stop_at_eos_and_the_loop_exits_when_all_have(setup):
  variables, prompts, images = setup
  free = np.asarray(_greedy(variables, prompts, images, eos_id=None).tokens)
  # An EOS that row r first emits at step s (as late as possible, before the last steps) and
  # some other row never emits.
  r, s = next((r, s) for s in range(STEPS - 3, 0, -1) for r in range(3)
              if free[r, s] not in free[r, :s] and
              any(free[r, s] not in free[q] for q in range(3) if q != r))
  eos = int(free[r, s])
  got = _greedy(variables, prompts, images, eos_id=eos, pad_id=-1)
  for q in range(3):
    hits = np.flatnonzero(free[q] == eos)
    length = hits[0] + 1 if hits.size else STEPS
    assert got.lengths[q] == length
    np.testing.assert_array_equal(got.tokens[q, :length], free[q, :length])
    assert np.all(np.asarray(got.tokens[q, length:]) == -1)
  assert got.lengths[r] == s + 1 and max(got.lengths) == STEPS
  # All three rows are row r, so all stop at step s and the loop exits after s + 1 steps.
  same = _greedy(variables, [prompts[r]] * 3, np.repeat(images[r:r + 1], 3, axis=0),
                 eos_id=eos, pad_id=-1)
  assert int(same.steps) == s + 1
  np.testing.assert_array_equal(same.lengths, [s + 1] * 3)
  np.testing.assert_array_equal(same.tokens, np.repeat(got.tokens[r:r + 1], 3, axis=0))


def test_text_only_decoder_takes_the_same_path(setup):
  variables, prompts, images = setup
  decoder_vars = {"params": variables["params"]["llm"]}
  tokens, lengths = sampling.generate(llm.Decoder(TINY.llm), decoder_vars, [prompts[1]],
                                      max_new_tokens=STEPS, eos_id=None, pad_id=0,
                                      bucket=BUCKET)
  np.testing.assert_array_equal(tokens[0], _greedy(variables, prompts, images,
                                                   eos_id=None).tokens[1])
  np.testing.assert_array_equal(lengths, [STEPS])


def test_sampled_generation_is_a_function_of_the_key(setup):
  variables, prompts, images = setup
  run = lambda key: sampling.generate(
      mllm.MLLM(TINY), variables, prompts, images, max_new_tokens=STEPS, eos_id=None, pad_id=0,
      temperature=1.0, rng=jax.random.key(key), bucket=BUCKET)[0]
  first = run(1)
  np.testing.assert_array_equal(run(1), first)
  assert not np.array_equal(run(2), first)
  assert first.shape == (3, STEPS) and np.all((first >= 0) & (first < TINY.llm.vocab_size))


@contextlib.contextmanager
def _count_compilations():
  names = []
  listener = lambda name, *args, **kwargs: names.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_second_call_with_the_same_shapes_does_not_recompile(setup):
  variables, prompts, images = setup
  run = lambda p: sampling.generate(mllm.MLLM(TINY), variables, p, images,
                                    max_new_tokens=STEPS, eos_id=None, pad_id=0, bucket=BUCKET)
  run(prompts)
  # Other ids and a shorter longest prompt that rounds up to the same bucket.
  others = _prompts(np.random.default_rng(5), text_lengths=(3, 8, 11))
  with _count_compilations() as events:
    tokens, _ = run(others)
  assert "/jax/core/compile/backend_compile_duration" not in events
  assert tokens.shape == (3, STEPS)


def test_generate_rejects_bad_prompts(setup):
  variables, prompts, images = setup
  model = mllm.MLLM(TINY)
  kw = dict(max_new_tokens=STEPS, eos_id=None, pad_id=0)
  with pytest.raises(ValueError, match="images is None"):
    sampling.generate(model, variables, prompts, None, **kw)
  short_run = np.where(np.arange(len(prompts[0])) == 2, 1, prompts[0])
  with pytest.raises(ValueError, match="holds 15 image placeholders.*gives 16"):
    sampling.generate(model, variables, [short_run], images[:1], **kw)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    sampling.generate(model, variables, [np.array([1, 99])], None, **kw)
  with pytest.raises(ValueError, match="rng"):
    sampling.generate(model, variables, prompts, images, temperature=0.5, **kw)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.generate(model, variables, prompts, images, **{**kw, "max_new_tokens": 0})
  with pytest.raises(ValueError, match="eos_id"):
    sampling.generate(model, variables, prompts, images, **{**kw, "eos_id": 61})


# sample_logits --------------------------------------------------------------------------------

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
DRAWS = 40_000


def _draws(key=0, logits=np.log(PROBS), **kw):
  """DRAWS independent samples from one distribution (one row each)."""
  rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (DRAWS, len(logits)))
  return np.asarray(sampling.sample_logits(rows, jax.random.key(key), **kw))


def _frequencies(draws, size):
  return np.bincount(draws, minlength=size) / len(draws)


def test_greedy_limits_equal_argmax(rng):
  logits = jnp.asarray(rng.normal(size=(64, 50)) * 3, jnp.float32)
  best = np.argmax(logits, axis=-1)
  key = jax.random.key(3)
  np.testing.assert_array_equal(sampling.sample_logits(logits, None, temperature=0.0), best)
  for temperature in (0.5, 5.0):
    np.testing.assert_array_equal(
        sampling.sample_logits(logits, key, temperature=temperature, top_k=1), best)
    np.testing.assert_array_equal(
        sampling.sample_logits(logits, key, temperature=temperature, top_p=1e-6), best)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_frequencies_match_the_tempered_softmax(temperature):
  expected = np.asarray(jax.nn.softmax(np.log(PROBS) / temperature))
  freq = _frequencies(_draws(temperature=temperature), len(PROBS))
  np.testing.assert_allclose(freq, expected, atol=0.01)  # 4 standard errors at most.


@pytest.mark.parametrize("kw,allowed", [
    (dict(top_k=2), {0, 1}),
    (dict(top_k=3), {0, 1, 2}),
    (dict(top_p=0.8), {0, 1}),  # 0.5 + 0.3 reaches 0.8 exactly.
    (dict(top_p=0.81), {0, 1, 2}),
    (dict(top_p=0.45), {0}),
    (dict(top_k=3, top_p=0.6), {0, 1}),  # Within the top 3: 0.53 + 0.32 >= 0.6.
])
def test_filters_keep_exactly_the_allowed_tokens(kw, allowed):
  draws = _draws(temperature=1.0, **kw)
  assert set(np.unique(draws)) == allowed
  kept = np.array(sorted(allowed))
  np.testing.assert_allclose(_frequencies(draws, len(PROBS))[kept],
                             PROBS[kept] / PROBS[kept].sum(), atol=0.01)


def test_the_key_decides_the_samples():
  first = _draws(key=7, temperature=1.0)
  np.testing.assert_array_equal(_draws(key=7, temperature=1.0), first)
  assert not np.array_equal(_draws(key=8, temperature=1.0), first)


@pytest.mark.parametrize("kw,message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=1.0, top_k=-1), "top_k"),
    (dict(temperature=1.0, top_k=2.5), "top_k"),
    (dict(temperature=1.0, top_p=0.0), "top_p"),
    (dict(temperature=1.0, top_p=1.5), "top_p"),
])
def test_invalid_sampling_arguments_are_rejected(kw, message):
  with pytest.raises(ValueError, match=message):
    sampling.sample_logits(jnp.zeros((2, 5)), jax.random.key(0), **kw)
  with pytest.raises(ValueError, match="rng"):
    sampling.sample_logits(jnp.zeros((2, 5)), None, temperature=1.0)


def test_mrope_native_generation_equals_full_recomputation():
  """Qwen2-VL style: packed patches, M-RoPE prompt positions; decoding continues every axis."""
  from mmjax.data import patches as patches_lib
  from mmjax.data import pipeline
  from mmjax.models import native_vit
  config = mllm.MLLMConfig(
      tower=towers.Qwen2VLTowerConfig(native_vit.NativeViTConfig(
          patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32, out_width=32),
          max_patches=32),
      llm=llm.LLMConfig(vocab_size=61, width=32, depth=2, num_heads=4, num_kv_heads=2,
                        mlp_dim=48, mrope_sections=(1, 1, 2)),
      connector=connectors.ProjectorConfig("identity"), image_token_id=IMAGE)
  rng = np.random.default_rng(1)
  natives = [patches_lib.patchify(rng.normal(size=s).astype(np.float32), 4, 2)
             for s in [(16, 16, 3), (8, 24, 3)]]
  rows = [patches_lib.pack([n], 32) for n in natives]
  views = {"patches": np.stack([r["patches"] for r in rows]),
           "patch_positions": np.stack([r["positions"] for r in rows]),
           "patch_segments": np.stack([r["segment_ids"] for r in rows])}
  prompts = [np.concatenate([[5, 6], np.full(n.num_tokens // 4, IMAGE), [7, 8, 9][:k]])
             .astype(np.int32) for n, k in zip(natives, (3, 1))]
  positions = [pipeline.mrope_row(p, len(p), IMAGE, np.array([1, *n.grid]), 2)
               for p, n in zip(prompts, natives)]
  model = mllm.MLLM(config)
  batch = {**sampling.pad_prompts(prompts, bucket=8, positions=positions), **views}
  variables = nn.unbox(jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), batch))
  tokens, _ = sampling.generate(model, variables, prompts, views, max_new_tokens=5, eos_id=None,
                                pad_id=0, bucket=8, positions=positions)
  for i, (prompt, pos) in enumerate(zip(prompts, positions)):
    seq, seq_pos = list(prompt), list(pos)
    for _ in range(5):
      row_views = {k: v[i:i + 1] for k, v in views.items()}
      logits = model.apply(variables, {
          "tokens": np.array([seq], np.int32), "positions": np.array([seq_pos], np.int32),
          "segment_ids": np.ones((1, len(seq)), np.int32), **row_views})[0]
      seq.append(int(np.argmax(logits[0, -1])))
      seq_pos.append(seq_pos[-1] + 1)
    np.testing.assert_array_equal(tokens[i], seq[-5:])
  with pytest.raises(ValueError, match="M-RoPE model needs"):
    sampling.generate(model, variables, prompts, views, max_new_tokens=2, eos_id=None, pad_id=0)


def test_several_eos_ids_end_a_row_at_the_first_of_them(setup):
  """eos_id=(a, b), as a generation config's list: each row stops at whichever comes first."""
  variables, prompts, images = setup
  free = np.asarray(_greedy(variables, prompts, images, eos_id=None).tokens)
  a, b = int(free[0, STEPS // 2]), int(free[1, STEPS // 3])
  got = _greedy(variables, prompts, images, eos_id=(a, b), pad_id=-1)
  for q in range(3):
    hits = np.flatnonzero(np.isin(free[q], [a, b]))
    length = hits[0] + 1 if hits.size else STEPS
    assert got.lengths[q] == length
    np.testing.assert_array_equal(got.tokens[q, :length], free[q, :length])
