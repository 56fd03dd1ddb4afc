"""CLIP-style Vision Transformer.

The blocks run in consecutive groups (`layer_groups`), and a tower may call `embed`, `run_group`
and `__call__` separately, so it can modify the tokens between groups (LLaVA-HR injects high-res
features after blocks 6/12/18). Position information comes from a learned table resampled
bicubically to the input's patch grid; `position_embedding="none"` leaves positions to the
attention (2D rotary embeddings) instead.

Patches are embedded by one linear map (CLIP's patch convolution) or by a hierarchical MLP stem
(`stem="hmlp"`, after Touvron et al. 2022, "Three things everyone should know about Vision
Transformers"): linear maps of 4×4-pixel cells, then of 2×2 cells of those, with the activation
between, each patch still embedded on its own. A ViT trained from scratch on a few thousand
images needs it to see shapes (docs/results: the default run's tower).
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import attention
from mmjax.models import interpolate
from mmjax.models import layers
from mmjax.models import stack
from mmjax.shapes import Array, Float

POSITION_EMBEDDINGS = ("learned", "none")
STEMS = ("patch", "hmlp")
NORMS = ("layer_norm", "rms_norm")
# Named sizes (width, depth, heads, MLP width): the CPU sizes trained from scratch here, CLIP's
# ViT-L and SigLIP-so400m. Configs expand one into their `vit` block (configs/common.py).
VARIANTS = {
    "tiny": dict(width=32, depth=2, num_heads=2, mlp_dim=128),
    "small": dict(width=128, depth=4, num_heads=4, mlp_dim=512),
    "base": dict(width=256, depth=6, num_heads=8, mlp_dim=1024),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "so400m": dict(width=1152, depth=27, num_heads=16, mlp_dim=4304),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int = 224  # The input size the position table is laid out for (grid = size / patch).
  patch_size: int = 14
  width: int = 1024
  depth: int = 24
  num_heads: int = 16
  mlp_dim: int = 4096
  act: str = "quick_gelu"  # OpenAI CLIP uses quick_gelu; most others exact gelu.
  norm_eps: float = 1e-5
  use_cls: bool = True  # Prepend a learned class token.
  # False: the class token (with its position) is added by the embeddings and dropped before
  # pre_norm and the blocks, which see patch tokens only — LLaVA-HR's and EAGLE's CLIP
  # (`pre_layrnorm(embeddings(y)[:, 1:])`). Its parameters stay, so a CLIP checkpoint loads.
  cls_in_blocks: bool = True
  patch_bias: bool = False  # CLIP's patch convolution has no bias; SigLIP's has one.
  pre_norm: bool = True  # CLIP's `pre_layrnorm` on the embeddings.
  # The blocks' norms: "layer_norm" (CLIP, SigLIP, InternViT-300M) or "rms_norm" (InternViT-6B).
  norm: str = "layer_norm"
  qkv_bias: bool = True  # Biases on q, k, v (InternViT's `attention_bias` may drop them).
  qk_norm: bool = False  # RMSNorm of q and k over all heads (InternViT-6B's QK-norm, eps 1e-6).
  layer_scale: bool = False  # Learned per-channel scales on both branches (InternViT's λ1, λ2).
  position_embedding: str = "learned"
  # How the learned table is resampled to another patch grid: torch's bicubic (False: HF CLIP's
  # `interpolate_pos_encoding`) or its antialiased bicubic (True: LLaVA-HR's and EAGLE's
  # `resample_pos_embed`, which differs even when growing the table).
  pos_antialias: bool = False
  # "patch": one linear map of each patch (CLIP); "hmlp": the hierarchical MLP stem (module
  # docstring) for a patch side of 4·2^k: levels of 4×4, then k of 2×2 cells, a quarter of the
  # width wide until the last (the paper's), without the paper's norms (docs/results: with
  # LayerNorms there the default tower read shape count at 0.955 against 0.995–1.00).
  stem: str = "patch"
  layer_groups: tuple[int, ...] = ()  # Consecutive block groups; () = one group of all blocks.
  scan_layers: bool = False
  remat: bool = False
  attention_impl: str | None = None
  dtype: str = "float32"  # Compute dtype (float32 or bfloat16).
  param_dtype: str = "float32"  # Storage dtype of the parameters.

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"ViT width={self.width} is not divisible by num_heads={self.num_heads}.")
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"Unknown ViT position_embedding {self.position_embedding!r}; "
                       f"valid: {POSITION_EMBEDDINGS}.")
    if self.stem not in STEMS:
      raise ValueError(f"Unknown ViT stem {self.stem!r}; valid: {STEMS}.")
    if self.norm not in NORMS:
      raise ValueError(f"Unknown ViT norm {self.norm!r}; valid: {NORMS}.")
    if self.stem == "hmlp" and (self.patch_size < 4 or self.patch_size & (self.patch_size - 1)
                                or self.width % 4):
      raise ValueError(f"ViT stem='hmlp' embeds 4×4-pixel cells, then 2×2 cells of those, at a "
                       f"quarter of the width: it needs patch_size = 4·2^k (4, 8, 16, 32, …) and "
                       f"a width divisible by 4; got patch_size={self.patch_size}, "
                       f"width={self.width}.")
    if self.image_size % self.patch_size:
      raise ValueError(f"ViT image_size={self.image_size} is not a multiple of "
                       f"patch_size={self.patch_size}.")
    if sum(self.groups) != self.depth or min(self.groups) < 1:
      raise ValueError(f"ViT layer_groups={self.layer_groups} must be positive and sum to "
                       f"depth={self.depth}.")
    layers.activation(self.act)

  @property
  def groups(self) -> tuple[int, ...]:
    return self.layer_groups or (self.depth,)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def prefix_tokens(self) -> int:
    """Class tokens ahead of the patch tokens in the blocks' sequences (0 or 1)."""
    return int(self.use_cls and self.cls_in_blocks)

  @property
  def stem_cells(self) -> tuple[int, ...]:
    """The hMLP stem's cell side per level: 4, then 2 until the patch side (patch 32: 4,2,2,2)."""
    return (4,) + (2,) * ((self.patch_size // 4).bit_length() - 1)


def variant(name: str) -> dict[str, int]:
  """The fields of a named size (`VARIANTS`)."""
  if name not in VARIANTS:
    raise ValueError(f"Unknown ViT variant {name!r}; valid: {sorted(VARIANTS)}.")
  return dict(VARIANTS[name])


def from_block(block, common: dict, **overrides) -> ViTConfig:
  """The ViTConfig of a config block holding its fields (e.g. `c.model.tower.vit`), with the
  model's shared settings (`common`: dtypes, scan, remat, attention) and `overrides` on top."""
  return ViTConfig(**{**dict(block), **overrides}, **common)


def hr_clip(config: ViTConfig) -> ViTConfig:
  """The CLIP that LLaVA-HR's and EAGLE's authors run (their patched `CLIPVisionEmbeddings`):
  the class token dropped before the blocks, the position table resampled with antialiasing."""
  return dataclasses.replace(config, cls_in_blocks=False, pos_antialias=True)


def check_select_layer(config: ViTConfig, select_layer: int, name: str = "select_layer") -> None:
  """Raises unless `select_layer` indexes one of the ViT's depth + 1 hidden states."""
  if not -(config.depth + 1) <= select_layer <= config.depth:
    raise ValueError(f"{name}={select_layer} is outside the {config.depth + 1} hidden states of "
                     "the ViT.")


class ViTBlock(nn.Module):
  """Pre-norm block: x + ls1 · attn(ln1(x)); x + ls2 · mlp(ln2(x)) (the scales with
  `layer_scale` only). `mask` and `rope` (rotary angles) are for packed native-resolution
  sequences (`mmjax.models.native_vit`)."""
  config: ViTConfig

  def _norm(self, name: str):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    if cfg.norm == "rms_norm":
      return layers.RMSNorm(epsilon=cfg.norm_eps, name=name, **kw)
    return layers.layer_norm(name=name, epsilon=cfg.norm_eps, **kw)

  def _scale(self, name: str, x: Float[Array, "B N D"]) -> Float[Array, "B N D"]:
    cfg = self.config
    if not cfg.layer_scale:
      return x
    gamma = self.param(name, layers.partitioned(nn.initializers.constant(0.1), ("embed",)),
                       (cfg.width,), cfg.param_dtype)
    return x * gamma.astype(x.dtype)

  @nn.compact
  def __call__(self, x: Float[Array, "B N D"], cache: None, mask=None, rope=None):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = self._norm("ln1")(x)
    h, _ = attention.Attention(cfg.num_heads, cfg.num_heads, cfg.width // cfg.num_heads,
                               qkv_bias=cfg.qkv_bias, out_bias=True, qk_norm=cfg.qk_norm,
                               implementation=cfg.attention_impl, name="attn", **kw)(h, mask, rope)
    x = x + self._scale("ls1", h)
    h = self._norm("ln2")(x)
    x = x + self._scale("ls2", layers.Mlp(cfg.mlp_dim, cfg.act, name="mlp", **kw)(h))
    x = layers.constrain(x, ("batch", "length", "embed"))
    return x, (x, None)


class HMLPStem(nn.Module):
  """The hierarchical MLP stem: each level a linear map of non-overlapping cells (a convolution
  whose stride is its kernel), the activation between levels; no cell crosses a patch."""
  config: ViTConfig

  @nn.compact
  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B h w D"]:
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    x = images.astype(cfg.dtype)
    cells = cfg.stem_cells
    for level, side in enumerate(cells):
      last = level == len(cells) - 1
      b, h, w, c = x.shape
      x = x.reshape(b, h // side, side, w // side, side, c).transpose(0, 1, 3, 2, 4, 5)
      # The image's 3 channels are never sharded (no mesh axis divides them).
      x = layers.dense(cfg.width if last else cfg.width // 4,
                       ("conv_h", "conv_w", "conv_in" if level else None,
                        "embed" if last else "conv_out"),
                       axis=(-3, -2, -1), name=f"level{level}", **kw)(x)
      if not last:
        x = layers.activation(cfg.act)(x)
    return x


class ViT(nn.Module):
  """Returns every layer's hidden states; LLaVA takes the penultimate one."""
  config: ViTConfig

  def setup(self):
    cfg = self.config
    channels = 3
    if cfg.stem == "hmlp":
      self.stem = HMLPStem(cfg)
    else:
      self.patch_kernel = self.param(
          "patch_kernel", layers.partitioned(nn.initializers.lecun_normal(),
                                             ("conv_h", "conv_w", "conv_in", "embed")),
          (cfg.patch_size, cfg.patch_size, channels, cfg.width), cfg.param_dtype)
    if cfg.patch_bias:
      self.patch_bias = self.param("patch_bias", layers.partitioned(nn.initializers.zeros, ("embed",)),
                                   (cfg.width,), cfg.param_dtype)
    init = nn.initializers.normal(0.02)
    if cfg.use_cls:
      self.cls = self.param("cls", layers.partitioned(init, ("embed",)), (cfg.width,),
                            cfg.param_dtype)
    if cfg.position_embedding == "learned":
      num = cfg.grid * cfg.grid + int(cfg.use_cls)
      self.pos_embedding = self.param("pos_embedding", layers.partitioned(init, (None, "embed")),
                                      (num, cfg.width), cfg.param_dtype)
    kw = dict(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    if cfg.pre_norm:
      self.pre_norm = layers.layer_norm(name="pre_norm", **kw)
    self.post_norm = layers.layer_norm(name="post_norm", **kw)
    self.blocks = [stack.LayerStack(ViTBlock, cfg, n, scan=cfg.scan_layers, remat=cfg.remat)
                   for n in cfg.groups]

  def patch_grid(self, images: Float[Array, "B H W C"]) -> tuple[int, int]:
    p = self.config.patch_size
    _, h, w, _ = images.shape
    if h % p or w % p:
      raise ValueError(f"ViT input of {h}x{w} pixels is not a multiple of patch_size={p}.")
    return h // p, w // p

  def embed(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B N D"]:
    """Patch embedding, class token and positions. N = prefix_tokens + h*w tokens, row-major."""
    cfg = self.config
    b = images.shape[0]
    gh, gw = self.patch_grid(images)
    p = cfg.patch_size
    if cfg.stem == "hmlp":
      x = self.stem(images).reshape(b, gh * gw, cfg.width)
    else:
      patches = images.reshape(b, gh, p, gw, p, -1).transpose(0, 1, 3, 2, 4, 5)
      patches = patches.reshape(b, gh * gw, -1).astype(cfg.dtype)
      kernel = self.patch_kernel.reshape(-1, cfg.width).astype(cfg.dtype)
      x = jnp.einsum("bnk,kd->bnd", patches, kernel)
    if cfg.patch_bias:
      x = x + self.patch_bias.astype(cfg.dtype)
    if cfg.use_cls:
      cls = jnp.broadcast_to(self.cls.astype(cfg.dtype), (b, 1, cfg.width))
      x = jnp.concatenate([cls, x], axis=1)
    if cfg.position_embedding == "learned":
      x = x + self.positions((gh, gw)).astype(cfg.dtype)[None]
    if cfg.use_cls and not cfg.cls_in_blocks:
      x = x[:, 1:]
    if cfg.pre_norm:
      x = self.pre_norm(x)
    return layers.constrain(x, ("batch", "length", "embed"))

  def positions(self, grid: tuple[int, int]) -> Float[Array, "N D"]:
    """The learned table, its patch part resampled bicubically to `grid` (as CLIP does)."""
    cfg = self.config
    table = self.pos_embedding
    n_cls = int(cfg.use_cls)
    patch = table[n_cls:].reshape(1, cfg.grid, cfg.grid, cfg.width)
    patch = interpolate.resize(patch, grid, "bicubic", antialias=cfg.pos_antialias)
    patch = patch.reshape(-1, cfg.width)
    return jnp.concatenate([table[:n_cls], patch], axis=0)

  def run_group(self, x: Float[Array, "B N D"], group: int
                ) -> tuple[Float[Array, "B N D"], Float[Array, "n B N D"]]:
    """Runs block group `group`; returns its output and each of its blocks' outputs."""
    x, hidden, _ = self.blocks[group](x, None)
    return x, hidden

  def hidden_states(self, images: Float[Array, "B H W 3"]) -> Float[Array, "L B N D"]:
    """The embeddings, then each block's output (L = depth + 1, as HF orders them): what a
    tower reads. Unlike `__call__` it leaves out the post-norm, whose parameters a tower that
    never pools would otherwise carry unused, and which a ViT loaded from such a tower lacks."""
    x = self.embed(images)
    hidden = [x[None]]
    for g in range(len(self.blocks)):
      x, h = self.run_group(x, g)
      hidden.append(h)
    return jnp.concatenate(hidden, axis=0)

  def __call__(self, images: Float[Array, "B H W 3"]) -> dict[str, Array]:
    """Returns `hidden_states` [depth+1, B, N, D] and `pooled` (post-norm class token, or
    post-norm mean token without one): CLIPVisionModel's outputs."""
    hidden = self.hidden_states(images)
    pooled = hidden[-1, :, 0] if self.config.prefix_tokens else hidden[-1].mean(axis=1)
    return {"hidden_states": hidden, "pooled": self.post_norm(pooled)}
