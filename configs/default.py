"""LLaVA-style MLLM (tower → projector → LLM) on the embedded fine-detail dataset.

`tower=` picks the vision tower (mmjax.models.towers): `vit` (LLaVA-1.5, the default), `llava_hr`,
`mini_gemini`, `eagle`, `leo`, `qwen2vl` (native resolution, M-RoPE), `internvl` (dynamic
aspect-ratio tiles), `onevision` (AnyRes crops in one map), `xcomposer` (XComposer2-4KHD's HD
canvas) or `oryx` (a low-resolution and a native view, dynamic compressor); configs/<method>.py
fix it. Sized for a 2-core CPU by default;
`size=7b` gives the papers' shapes (CLIP ViT-L/14, CLIP-ConvNeXt-L, a Vicuna-7B-shaped decoder)
for accelerators. At every size the mixed towers give the LLM as many visual tokens as `vit`
does (LEO, which interleaves two encoders, twice as many). Everything trains from scratch here
(nothing can be downloaded), so at the CPU sizes the ViTs embed patches with a hierarchical MLP
stem (`model.vit_stem`) rather than CLIP's linear map. The default run first pre-trains its ViT
with a classifier head on the dataset's questions (`pretrain.steps`, stage 0: the stand-in for
CLIP), freezes it, and trains projector and LLM on the questions (LLaVA's stage 2; its
projector-only caption stage needs a pre-trained LLM and is left out). Without stage 0 both
stages train every parameter; starting from converted checkpoints (`train.init_params`), set the
stages' `trainable` patterns to LLaVA's (`^projector/`, then `^(projector|llm)/`).

  python train.py --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run
  python eval.py  --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run
  python train.py --config configs/default.py:tower=llava_hr --workdir /tmp/hr
"""
import ml_collections

from mmjax import config_args
from mmjax.data.datasets import questions
from mmjax.training import build

# Per size: ViT side (low resolution), high resolution (the mixed towers' input), patch, ViT
# width/depth/heads, ConvNeXt widths/depths, LLM width/depth/heads, batch, max_len (with the
# ViT's tokens), dataset, questions per training row, tokenizer. `small` asks every question of
# an image in one row (an image has at most one per kind), which its BPE holds in 248 tokens.
SIZES = {
    "tiny": dict(image=64, high=128, patch=16, vit=(32, 2, 2), convnext=((8, 16, 16, 32),
                 (1, 1, 1, 1)), llm=(64, 2, 2), batch=4, max_len=384,
                 dataset="fine_detail/tiny", questions=3, tokenizer="byte"),
    "small": dict(image=224, high=448, patch=32, vit=(128, 4, 4), convnext=((24, 48, 96, 128),
                  (1, 1, 1, 1)), llm=(192, 4, 4), batch=8, max_len=256,
                  dataset="fine_detail/small", questions=len(questions.ALL_KINDS),
                  tokenizer="bpe:1024"),
    "base": dict(image=224, high=448, patch=16, vit=(256, 6, 8), convnext=((48, 96, 192, 256),
                 (1, 1, 3, 1)), llm=(384, 6, 6), batch=8, max_len=512,
                 dataset="fine_detail/small", questions=4, tokenizer="byte"),
    "7b": dict(image=336, high=768, patch=14, vit=(1024, 24, 16), convnext=(
        (192, 384, 768, 1536), (3, 3, 27, 3)), llm=(4096, 32, 32), batch=128, max_len=2048,
        dataset="fine_detail/large", questions=10, tokenizer="byte"),
}
TOWERS = ("vit", "llava_hr", "mini_gemini", "eagle", "leo", "qwen2vl", "internvl", "onevision",
          "xcomposer", "oryx")
# The papers' resolutions at size=7b, per tower: (ViT side, tower input side).
# EAGLE's "clip-448" runs at 336 in the authors' code (its tower's input_image_size), its 24×24
# map interpolated to the 32×32 grid of the 1024-px ConvNeXt.
PAPER_RESOLUTIONS = {"vit": (336, 336), "llava_hr": (448, 1024), "mini_gemini": (336, 768),
                     "eagle": (336, 1024), "leo": (448, 1024), "qwen2vl": (336, 336),
                     "internvl": (448, 448),
                     # SigLIP's 384-px crops with patch 14 read 378 px (27 × 27 patches).
                     "onevision": (378, 378), "xcomposer": (336, 336),
                     # Oryx: a view of about 384² pixels and the native one up to 1536².
                     "oryx": (384, 1536)}
# Oryx's vision encoder at size=7b: SigLIP-so400m/16 (width, depth, heads, MLP), GELU.
ORYX_VIT = (1152, 27, 16, 4304)


def mrope_sections(head_dim: int) -> tuple[int, int, int]:
  """Qwen2-VL's (temporal, height, width) split of the rotary frequencies, 16:24:24 of 64."""
  half = head_dim // 2
  t = half // 4
  return t, (half - t) // 2, half - t - (half - t) // 2


# The config arguments and their defaults (configs/<method>.py fix `tower` and take the rest).
# pretrain: tower pre-training steps (stage 0, `pretrain.steps`; the stages' trainable patterns
# follow it); -1: PRETRAIN_STEPS's for the size and tower.
# res: the tower's input side when non-zero (the ViT's for `vit`, the high resolution for the
# mixed towers), e.g. LLaVA-1.5 run directly at a high resolution. patch: the ViT's patch side
# when non-zero; the budgets derived from it (tiles, patch budgets, grids) follow.
ARGUMENTS = dict(size="small", steps=900, tower="vit", res=0, patch=0, pretrain=-1)
# Tower pre-training steps (stage 0) by (size, tower) unless `pretrain=` says; 0 elsewhere.
# LLaVA starts from a pre-trained CLIP, and a tower trained from scratch through the language
# loss learns only colour here (docs/results); the mixed towers' pre-training takes hours on a CPU,
# so the ablation harness runs it, or `pretrain=`. With 1,000 steps on the coarse kinds the
# default run's tower reads them as well as with 1,500 on every kind (docs/results), and the MLLM
# gets the minutes.
PRETRAIN_STEPS = {("small", "vit"): 1000}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_args.parse(arg, **ARGUMENTS)
  size = config_args.choose("size", arg.size, SIZES)
  config_args.choose("tower", arg.tower, dict.fromkeys(TOWERS))
  big = arg.size == "7b"
  oryx = big and arg.tower == "oryx"
  patch = arg.patch or (16 if oryx else size["patch"])
  low, high = PAPER_RESOLUTIONS[arg.tower] if big else (size["image"], size["high"])
  # One encoder at one (budgeted) resolution.
  single = arg.tower in ("vit", "qwen2vl", "internvl", "onevision", "xcomposer")
  high = arg.res or (low if single else high)
  low = high if single else low
  if big and arg.tower == "llava_hr":  # The authors' ViT side for a high resolution S.
    low = max(high // 32 * patch, 336)
  vit_width, vit_depth, vit_heads = ORYX_VIT[:3] if oryx else size["vit"]
  llm_width, llm_depth, llm_heads = size["llm"]
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init and the data order.

  c.model = ml_collections.ConfigDict()
  c.model.tower = arg.tower  # Vision tower (mmjax.models.towers.TOWERS).
  # The tower's input side: the ViT's for `vit`, else the high resolution (oryx: max_res, the
  # native view holds at most max_res² pixels).
  c.model.image_size = high
  # Mixed towers: the ViT's side (a bilinear downsample of the input); oryx: the low view's side.
  c.model.low_res = low
  c.model.patch_size = patch
  # llava_hr: the side (px) its ViT's position table is laid out for, when it differs from the
  # ViT's input (0: the same): at 7b CLIP-336's table, resampled to the 448-px input as the
  # authors do, so a converted CLIP-L/14-336 loads as it is.
  c.model.vit_table = 336 if big and arg.tower == "llava_hr" else 0
  c.model.vit_width = vit_width
  c.model.vit_depth = vit_depth
  c.model.vit_heads = vit_heads
  c.model.vit_mlp_dim = ORYX_VIT[3] if oryx else 4 * vit_width
  # CLIP's act for the pretrained shape (SigLIP's, erf GELU, for Oryx).
  c.model.vit_act = "quick_gelu" if big and not oryx else "gelu"
  # The ViT's patch embedding (mmjax.models.vit.STEMS): CLIP's linear "patch" for the papers'
  # shapes, the hierarchical MLP "hmlp" for the ViTs trained from scratch here, which with the
  # linear one read shape count at 0.95 and texture at 0.92 after stage 0 (docs/results).
  # qwen2vl and oryx embed packed patches with their own linear maps (Qwen2-VL's, SigLIP's): "patch" only.
  c.model.vit_stem = "patch" if big or arg.tower in build.LINEAR_PATCH_TOWERS else "hmlp"
  # ViT hidden state fed on: LLaVA's penultimate; the last in EAGLE's and LEO's code (LLaVA-HR
  # always runs every block).
  c.model.select_layer = -1 if arg.tower in ("eagle", "leo") else -2
  c.model.convnext_widths = size["convnext"][0]  # High-resolution ConvNeXt stage widths.
  c.model.convnext_depths = size["convnext"][1]  # …and blocks per stage.
  c.model.convnext_layer_scale = 1e-6 if big else 1.0  # Initial layer scale (HF: 1e-6).
  c.model.convnext_stage = -1  # EAGLE / LEO: the ConvNeXt stage whose map is used.
  # EAGLE / LEO: their encoders, in order, from "vit" (the low-res ViT) and "convnext" (the
  # high-res ConvNeXt); one alone makes a single-encoder tower, e.g. "convnext" to pre-train
  # the ConvNeXt that LLaVA-HR and Mini-Gemini share (benchmarks/ablation.py).
  c.model.encoders = "vit,convnext"
  c.model.adapter_gate = "scalar"  # LLaVA-HR gate: "scalar" (author code) or "channel" (paper).
  c.model.adapter_after = ()  # LLaVA-HR: ViT blocks followed by an adapter; (): depth/4·{1,2,3}.
  c.model.mgm_hd = False  # Mini-Gemini HD: global view + 2×2 crops (5× the tokens).
  # EAGLE / LEO token grid side: the ViT's grid (LEO pixel-unshuffles to it, 16 in the paper);
  # EAGLE at 7b: 32, the 1024-px ConvNeXt's.
  c.model.grid = (high // 32 if arg.tower == "eagle" and big
                  else low // patch // (2 if arg.tower == "leo" and big else 1))
  c.model.fusion = "channel"  # EAGLE: "channel" concat or "sequence" append.
  # "linear", "mlp<N>x_gelu", or "identity" (LEO projects per encoder inside its tower).
  # qwen2vl: the patch merger maps to the LLM width; its patch budget per image equals the
  # ViT's token count (4 patches per LLM token) and it takes M-RoPE positions.
  c.model.projector = ("identity" if arg.tower in ("leo", "qwen2vl", "onevision", "oryx")
                       else "mlp2x_gelu")
  c.model.max_patches = 4 * (low // patch) ** 2  # qwen2vl: patches per image (static budget).
  c.model.min_pixels = (4 * patch) ** 2  # qwen2vl: smallest encoded area (2×2 LLM tokens).
  grid = low // patch + (low // patch) % 2  # The ViT's grid, made even for pixel unshuffle.
  # internvl / xcomposer: tile side (their papers' 448 / 336 px; at CPU sizes an even grid).
  c.model.tile = (448 if arg.tower == "internvl" else 336) if big else grid * patch
  # internvl: most grid tiles (a thumbnail comes on top); at CPU sizes all tiles together give
  # about as many tokens as the ViT alone, 12 as in the paper at 7b.
  c.model.max_num = 12 if big else max(round((low // patch) ** 2 / (grid // 2) ** 2) - 1, 1)
  # onevision: canvases of 1…anyres_grid crops a side (OneVision: 6), the map shrunk to about
  # anyres_max crops' tokens (`anyres_max_9`), a newline token after every map row.
  c.model.anyres_grid = 6 if big else 2
  c.model.anyres_max = 9 if big else 4
  c.model.anyres_projector = "mlp2x_gelu"  # onevision: per crop token, before the resampling.
  c.model.hd_num = 25 if big else 4  # xcomposer: most tiles of the HD canvas (HD-25).
  # oryx: compressor pooling per side (1: images, as Oryx; 2 / 4: its video modes' 4× / 16×).
  c.model.oryx_ratio = 1
  # oryx: side of the learned position table, resized to every view's grid (SigLIP's 128).
  c.model.pos_table = 128 if big else high // patch
  # oryx: longest aspect ratio its static budget holds; the embedded dataset's 3:1 is up to 3.006
  # in whole pixels (scenes.SceneSpec.pixel_aspect), and a larger one is refused.
  c.model.max_aspect = 3.01
  c.model.vocab_size = 32000 if big else 0  # 0: the tokenizer's vocabulary size.
  c.model.llm_width = llm_width
  c.model.llm_depth = llm_depth
  c.model.llm_heads = llm_heads
  c.model.llm_kv_heads = llm_heads  # < llm_heads for grouped-query attention.
  c.model.llm_mlp_dim = 11008 if big else 4 * llm_width
  c.model.rope_theta = 10000.0
  # M-RoPE (temporal, height, width) frequency sections; (): 1D RoPE.
  c.model.mrope_sections = mrope_sections(llm_width // llm_heads) if arg.tower == "qwen2vl" else ()
  c.model.dtype = "bfloat16" if big else "float32"  # Compute dtype (CPUs run f32 faster).
  c.model.param_dtype = "float32"
  c.model.scan_layers = big  # nn.scan over blocks: fast compiles for deep models.
  c.model.remat = big  # Rematerialise blocks in the backward pass (memory for compute).
  c.model.attention_impl = ml_collections.FieldReference(None, field_type=str)  # None/xla/cudnn.

  c.data = ml_collections.ConfigDict()
  c.data.dataset = size["dataset"]  # "fine_detail/<config>" or "llava_json:<ingested dir>".
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS dir (None: default).
  c.data.template = "vicuna_short"  # Chat template (mmjax.data.tokenizer.TEMPLATES).
  # "byte"; "bpe:N", a byte-level BPE of at most N ids learned from the dataset's training text
  # (mmjax.data.bpe: 40 % of the byte tokenizer's text tokens); or a Hugging Face tokenizer.json.
  c.data.tokenizer = size["tokenizer"]
  # Tokens per row: the tower's visual tokens (dynamic towers: their largest image's) and the
  # text room the size's max_len leaves beside its ViT's tokens, whatever res/patch/tower give.
  text = size["max_len"] - (size["image"] // size["patch"]) ** 2
  c.data.max_len = text + build.num_image_tokens(  # Token counts ignore the vocabulary.
      build.model_config(c, vocab_size=1), c)
  c.data.max_questions = size["questions"]  # Questions per training conversation (vqa task).
  # Comma-separated question kinds the vqa task trains and eval.py asks (questions.ALL_KINDS),
  # e.g. "pattern_colours" for one rung of the fine ladder; "": every kind.
  c.data.kinds = ""
  c.data.aspect = "pad"  # "pad" (LLaVA-1.5) or "squash" to make the image square.
  c.data.worker_count = 0 if arg.size == "tiny" else 1  # grain decoding processes.
  c.data.eval_split = "validation"
  c.data.eval_examples = 64 if arg.size == "tiny" else 400  # Images evaluated (each question).

  # Stage 0 (before the MLLM's stages): the tower pre-trained with a classifier head on the
  # embedded dataset's questions (mmjax.training.pretrain_tower) into WORKDIR/tower, then
  # frozen under the MLLM's stages: the stand-in for a pre-trained CLIP.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = (arg.pretrain if arg.pretrain >= 0  # 0: no stage 0.
                      else PRETRAIN_STEPS.get((arg.size, arg.tower), 0))
  c.pretrain.batch = 32  # Images per update, each with all its questions.
  c.pretrain.lr = 2e-3  # Peak AdamW learning rate (after a linear warm-up).
  # After the warm-up: "cosine" (decay to 0 at pretrain.steps) or "constant" (for `until`, where
  # the steps are a cap, not the run's length).
  c.pretrain.schedule = "cosine"
  c.pretrain.eval_every = 500  # Steps between validation passes (accuracy per question kind).
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
  # Comma-separated question kinds stage 0 trains on and its `until` waits for; "": data.kinds.
  # E.g. one fine rung for the tower while the MLLM learns it with the coarse kinds, which a
  # head does not all reach `until` on (shape colour). "legible" (build.LEGIBLE): data.kinds'
  # coarse kinds for a tower that sees one view of at most the dataset's 224 px, whose fine and
  # position content is illegible there by construction (learning it anyway costs the coarse
  # kinds: shape count 0.82 after 1,500 steps on every kind, 0.95 after 1,000 on the coarse
  # ones; docs/results); data.kinds for a tower that sees more (a larger view, tiles, crops, native
  # resolution), or when none of them is coarse.
  c.pretrain.kinds = build.LEGIBLE

  c.train = ml_collections.ConfigDict()
  c.train.steps = arg.steps  # Optimizer updates over both stages.
  c.train.batch_size = size["batch"]  # Global batch (rows); split over processes and devices.
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
  # "tower=runs/pre/tower" after `python -m mmjax.training.pretrain_tower`, or a converted
  # CLIP / LLM (`python -m mmjax.convert`) as "tower/vit=DIR,llm=DIR" (build.initial_params).
  c.train.init_params = ""
  c.train.task = "vqa"  # Stage 2 data: multi-turn question answering.
  # Regex over parameter paths; LLaVA: "^(projector|llm)/" (the default after stage 0).
  c.train.trainable = "^(projector|llm)/" if c.pretrain.steps else ".*"
  c.train.lr = 1e-3 if not big else 2e-5
  c.train.warmup_fraction = 0.05  # Of each stage's steps.
  c.train.weight_decay = 0.0  # LLaVA uses none.
  c.train.adam_eps = 1e-8
  c.train.grad_clip = 1.0  # Global-norm clipping of the trainable gradients (0: off).
  c.train.log_every = 10  # Steps between metrics.jsonl / TensorBoard rows.
  c.train.checkpoint_every = 100  # Steps between checkpoints (also at the end and on SIGTERM).
  c.train.keep_checkpoints = 3

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Mesh axis sizes; -1 takes the remaining devices.
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.eval = ml_collections.ConfigDict()
  # Bytes: the longest embedded answer, "green and magenta", is 17 + eos; eval refuses a split
  # holding an answer longer than this rather than count it wrong.
  c.eval.max_new_tokens = 24
  c.eval.batch_size = 64
  c.lock()
  return c
