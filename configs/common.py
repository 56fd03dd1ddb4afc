"""The settings every method config shares, and the sizes they run at (big_vision style).

A method config (configs/<method>.py) parses its argument string with `parse`, builds its model
blocks — `c.model.tower` (its `name` picks the tower in `mmjax.models.towers`, the other fields
are that tower's), `c.model.connector` (`name` picks it in `mmjax.models.connectors`) — with the
helpers here, and calls `config(arg, tower, connector, …)` for the rest. Network sizes are named
variants that live with the model code (`vit.VARIANTS`, `convnext.VARIANTS`, `llm.VARIANTS`).
Parsing a config imports no training or data code.

Arguments every method takes (`configs/<method>.py:size=tiny,steps=50`):
  size      "tiny" (a 2-core CPU in minutes), "small" (the CPU default), "base", or "7b" (the
            papers' shapes: CLIP ViT-L/14, CLIP-ConvNeXt-L, a Vicuna-7B-shaped decoder, bf16,
            for accelerators).
  steps     optimizer updates of the MLLM's stages.
  res       the tower's input side when non-zero (the ViT's for one-encoder towers, the high
            resolution for the mixed ones), e.g. LLaVA-1.5 run directly at a high resolution.
  patch     the ViT's patch side when non-zero (budgets, tiles and grids follow it).
  pretrain  stage-0 steps (tower pre-training with a classifier head); -1: the method's default.
"""
import ml_collections

from mmjax import config_args
from mmjax.models import convnext
from mmjax.models import llm
from mmjax.models import vit

ARGUMENTS = dict(size="small", steps=900, res=0, patch=0, pretrain=-1)

# Per size: the image side (one-encoder towers and the mixed towers' ViT), the mixed towers' high
# resolution, the patch side, the networks' variants, the batch, the row length a ViT's tokens
# leave `text` room in (max_len − (image / patch)²), the dataset, questions per training row, and
# the tokenizer. `small` asks every question of an image in one row (an image has at most one per
# kind), which its BPE holds in 248 tokens.
SIZES = {
    "tiny": dict(image=64, high=128, patch=16, vit="tiny", convnext="tiny", llm="tiny", batch=4,
                 max_len=384, dataset="fine_detail/tiny", questions=3, tokenizer="byte"),
    "small": dict(image=224, high=448, patch=32, vit="small", convnext="small", llm="small",
                  batch=8, max_len=256, dataset="fine_detail/small", questions=11,
                  tokenizer="bpe:1024"),
    "base": dict(image=224, high=448, patch=16, vit="base", convnext="base", llm="base", batch=8,
                 max_len=512, dataset="fine_detail/small", questions=4, tokenizer="byte"),
    "7b": dict(image=336, high=768, patch=14, vit="L", convnext="L", llm="7b", batch=128,
               max_len=2048, dataset="fine_detail/large", questions=10, tokenizer="byte"),
}
PAPER = "7b"  # The size with the papers' shapes.


def parse(arg: str | None, paper_patch: int = 0) -> ml_collections.ConfigDict:
  """The argument string as typed values (unknown names fail, listing the valid ones), plus
  `s` (the size's row of SIZES), `big` (the papers' size) and `patch` (the ViT's patch side:
  `patch=`, else `paper_patch` at the papers' size when non-zero, else the size's)."""
  a = config_args.parse(arg, **ARGUMENTS)
  s = config_args.choose("size", a.size, SIZES)
  a.s = ml_collections.ConfigDict(s)
  a.big = a.size == PAPER
  a.patch = a.patch or (paper_patch if a.big and paper_patch else s["patch"])
  return a


def block(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def vit_block(a: ml_collections.ConfigDict, image_size: int, variant: str | None = None,
              **overrides) -> ml_collections.ConfigDict:
  """A ViT's fields (`mmjax.models.vit.ViTConfig`) at `image_size`: the size's variant (or
  `variant`), CLIP's quick GELU and linear patch map at the papers' size, and at the CPU sizes,
  where ViTs train from scratch, GELU and the hierarchical MLP stem (with the linear map they read
  shape count at 0.95 and texture at 0.92 after stage 0, against 1.0: docs/results)."""
  return block(image_size=image_size, patch_size=a.patch, **vit.variant(variant or a.s.vit),
               act="quick_gelu" if a.big else "gelu", stem="patch" if a.big else "hmlp",
               **overrides)


def convnext_block(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The high-resolution ConvNeXt's fields (`mmjax.models.convnext.ConvNeXtConfig`): the size's
  variant; HF's initial layer scale 1e-6 for the papers' shape, 1.0 for the CPU sizes trained
  from scratch."""
  return block(**convnext.variant(a.s.convnext), layer_scale_init=1e-6 if a.big else 1.0)


def mlp(kind: str = "mlp2x_gelu") -> ml_collections.ConfigDict:
  """LLaVA's projector connector: "linear", "mlp<N>x_gelu" or "identity" (towers that already
  project to the LLM's width)."""
  return block(name="mlp", kind=kind)


def mrope_sections(head_dim: int) -> tuple[int, int, int]:
  """Qwen2-VL's (temporal, height, width) split of the rotary frequencies, 16:24:24 of 64."""
  half = head_dim // 2
  t = half // 4
  return t, (half - t) // 2, half - t - (half - t) // 2


def config(a: ml_collections.ConfigDict, tower: ml_collections.ConfigDict,
           connector: ml_collections.ConfigDict, *, pretrain_steps: int = 0,
           mrope: bool = False) -> ml_collections.ConfigDict:
  """The whole config of a method: its `tower` and `connector` blocks, the size's LLM, data and
  training settings; `pretrain_steps` is its stage-0 default (`pretrain=` overrides it), `mrope`
  gives the LLM Qwen2-VL's M-RoPE."""
  s = a.s
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init and the data order.

  c.model = ml_collections.ConfigDict()
  c.model.tower = tower  # The vision tower: `name` (mmjax.models.towers) and its fields.
  c.model.connector = connector  # Features → LLM width: `name` (mmjax.models.connectors), fields.
  # The decoder: `name` (mmjax.models.decoders) and its fields (for "llama",
  # mmjax.models.llm.LLMConfig's): the size's variant.
  c.model.llm = block(name="llama", **llm.variant(s.llm),
                      vocab_size=32000 if a.big else 0,  # 0: the tokenizer's vocabulary size.
                      rope_theta=10000.0,
                      # M-RoPE (temporal, height, width) frequency sections; (): 1D RoPE.
                      mrope_sections=())
  if mrope:
    c.model.llm.mrope_sections = mrope_sections(c.model.llm.width // c.model.llm.num_heads)
  c.model.dtype = "bfloat16" if a.big else "float32"  # Compute dtype (CPUs run f32 faster).
  c.model.param_dtype = "float32"
  c.model.scan_layers = a.big  # nn.scan over blocks: fast compiles for deep models.
  c.model.remat = a.big  # Rematerialise blocks in the backward pass (memory for compute).
  c.model.attention_impl = ml_collections.FieldReference(None, field_type=str)  # None/xla/cudnn.

  c.data = ml_collections.ConfigDict()
  c.data.dataset = s.dataset  # "fine_detail/<config>" or "llava_json:<ingested dir>".
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS dir (None: default).
  c.data.template = "vicuna_short"  # Chat template (mmjax.data.tokenizer.TEMPLATES).
  # "byte"; "bpe:N", a byte-level BPE of at most N ids learned from the dataset's training text
  # (mmjax.data.bpe: 40 % of the byte tokenizer's text tokens); or a Hugging Face tokenizer.json.
  c.data.tokenizer = s.tokenizer
  # Text tokens per row beside the image's: the room the size's max_len leaves beside its ViT's
  # tokens, whatever res / patch / tower give.
  c.data.text_len = s.max_len - (s.image // s.patch) ** 2
  # Tokens per row; 0: text_len + the model's most visual tokens (dynamic towers: their
  # largest image's; with several images a row, max_images of them).
  c.data.max_len = 0
  # Images a row holds (the model's max_images): records of several images (an ingested
  # LLaVA-OneVision-format JSON) up to it train, each image its own row of the tower; records of
  # more are dropped and counted (metrics' too_many_images). 1: one image a row, as before.
  c.data.max_images = 1
  c.data.max_questions = s.questions  # Questions per training conversation (vqa task).
  # Comma-separated question kinds the vqa task trains and eval.py asks (questions.ALL_KINDS),
  # e.g. "pattern_colours" for one rung of the fine ladder; "": every kind.
  c.data.kinds = ""
  c.data.aspect = "pad"  # One-view towers: "pad" (LLaVA-1.5) or "squash" the image to a square.
  c.data.worker_count = 0 if a.size == "tiny" else 1  # grain decoding processes.
  c.data.eval_split = "validation"
  c.data.eval_examples = 64 if a.size == "tiny" else 400  # Images evaluated (each question).

  # Stage 0 (before the MLLM's stages): the tower pre-trained with a classifier head on the
  # embedded dataset's questions (mmjax.training.pretrain_tower) into WORKDIR/tower, then
  # frozen under the MLLM's stages: the stand-in for a pre-trained CLIP. train.steps=0 runs it
  # alone.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = a.pretrain if a.pretrain >= 0 else pretrain_steps  # 0: no stage 0.
  c.pretrain.batch = 32  # Images per update, each with all its questions.
  c.pretrain.lr = 2e-3  # Peak AdamW learning rate (after a linear warm-up).
  c.pretrain.weight_decay = 0.05  # AdamW's, on matrices (as train.weight_decay).
  # After the warm-up: "cosine" (decay to 0 at pretrain.steps) or "constant" (for `until`, where
  # the steps are a cap, not the run's length).
  c.pretrain.schedule = "cosine"
  # Steps between validation passes (accuracy per question kind), each also a checkpoint.
  c.pretrain.eval_every = 500
  # Stop once every kind's validation accuracy reaches this (None: run all steps).
  c.pretrain.until = ml_collections.FieldReference(None, field_type=float)
  c.pretrain.workers = 2  # Threads preparing batches ahead of the step.
  # Keep every image's views in memory after their first decoding (4,000 at 224 px: 2.4 GB):
  # decoding and resizing bound a CPU run, the compute of later epochs does not.
  c.pretrain.cache_views = True
  # Parts of the tower started from saved parameters before stage 0, "tower/…=PATH[#INNER],…"
  # as train.init_params, e.g. encoders pre-trained alone; "": all random.
  c.pretrain.init_params = ""
  # Regular expression over the tower's parameter paths held fixed in stage 0, e.g.
  # "^tower/(vit|convnext)/" to train only a fusion on such encoders; "": all train.
  c.pretrain.frozen = ""
  # A tower file (another tower's stage 0: DIR/params.safetensors) whose `vit` and `convnext`
  # start every ViT and ConvNeXt of this tower, frozen: only the fusion and the head train
  # (LLaVA-HR, Mini-Gemini and EAGLE all start from the same CLIP and ConvNeXt). Sets
  # init_params and frozen itself; "": off.
  c.pretrain.encoders_from = ""
  c.pretrain.train_encoders = False  # With encoders_from: the encoders train with the fusion.
  # Comma-separated question kinds stage 0 trains on and its `until` waits for; "": data.kinds.
  # E.g. one fine rung for the tower while the MLLM learns it with the coarse kinds, which a
  # head does not all reach `until` on (shape colour). "legible": data.kinds' coarse kinds for a
  # tower that sees one view of at most the dataset's 224 px, whose fine and position content is
  # illegible there by construction (learning it anyway costs the coarse kinds: shape count 0.82
  # after 1,500 steps on every kind, 0.95 after 1,000 on the coarse ones; docs/results);
  # data.kinds for a tower that sees more (a larger view, tiles, crops, native resolution), or
  # when none of them is coarse.
  c.pretrain.kinds = "legible"

  c.train = ml_collections.ConfigDict()
  # Optimizer updates over the MLLM's stages (0 with pretrain.steps > 0: stage 0 alone).
  c.train.steps = a.steps
  c.train.batch_size = s.batch  # Global batch (rows); split over processes and devices.
  c.train.grad_accum_steps = 1  # Micro-batches per update (the batch must split evenly).
  # Share of the steps in stage 1 (alignment on captions); 0 after stage 0: with an LLM trained
  # from scratch, the projector alone on captions leaves the MLLM worse than no stage 1 (coarse
  # 0.45 against 0.67 on the default run, docs/results).
  c.train.align_fraction = 0.0 if c.pretrain.steps else 0.2
  c.train.align_task = "caption"  # Stage 1 data: dense captions.
  # Regex over parameter paths; LLaVA: "^projector/" (the default after stage 0).
  c.train.align_trainable = "^projector/" if c.pretrain.steps else ".*"
  c.train.align_lr = 1e-3
  # "SUBTREE=PATH,…": parameters that start from safetensors files instead of random, e.g.
  # "tower=runs/pre/tower" after stage 0 alone in runs/pre (train.steps=0), or a converted
  # CLIP / LLM (`python -m mmjax.convert`) as "tower/vit=DIR,llm=DIR"; "DIR" alone: a converted
  # whole model, every parameter (build.initial_params).
  c.train.init_params = ""
  c.train.task = "vqa"  # Stage 2 data: multi-turn question answering.
  # Regex over parameter paths; LLaVA: "^(projector|llm)/" (the default after stage 0).
  c.train.trainable = "^(projector|llm)/" if c.pretrain.steps else ".*"
  c.train.lr = 1e-3 if not a.big else 2e-5
  c.train.warmup_fraction = 0.05  # Of each stage's steps.
  c.train.weight_decay = 0.0  # LLaVA uses none.
  c.train.adam_eps = 1e-8
  c.train.grad_clip = 1.0  # Global-norm clipping of the trainable gradients (0: off).
  c.train.log_every = 10  # Steps between metrics.jsonl / TensorBoard rows.
  c.train.checkpoint_every = 100  # Steps between checkpoints (also at the end and on SIGTERM).
  c.train.keep_checkpoints = 3
  # The largest share of rows a run may drop as longer than data.max_len (counted in the metrics'
  # `dropped`): the start checks the first rows of each stage, the loop every logged window; a
  # run over it stops with an error naming data.max_len.
  c.train.max_dropped_share = 0.25

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Mesh axis sizes; -1 takes the remaining devices.
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.eval = ml_collections.ConfigDict()
  # Bytes: the longest embedded answer, "green and magenta", is 17 + eos; eval refuses a split
  # holding an answer longer than this rather than count it wrong.
  c.eval.max_new_tokens = 24
  c.eval.batch_size = 64  # Questions generated at once (vqa), rows per loss batch (loss).

  # The evaluators eval.py runs (mmjax.evaluators), by name: `type` picks one, `every` also runs
  # it during training every that many steps (0: eval.py only), into metrics.jsonl and
  # TensorBoard as NAME/metric.
  c.evals = ml_collections.ConfigDict()
  c.evals.vqa = ml_collections.ConfigDict({"type": "vqa", "every": 0})  # Accuracy by kind.
  c.evals.loss = ml_collections.ConfigDict({"type": "loss", "every": 0})  # Loss, perplexity.
  c.lock()
  return c
