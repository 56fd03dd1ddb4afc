"""ConvNeXt, numerically the Hugging Face `ConvNextModel` (the vision tower of CLIP-ConvNeXt).

A 4×4 stride-4 stem convolution + LayerNorm, then stages of residual blocks (depthwise 7×7
conv → LayerNorm → Linear 4× → act → Linear → layer scale γ, + residual); every stage after the
first opens with LayerNorm + a 2×2 stride-2 convolution. Everything is channels-last. The stage
maps are returned separately because multi-resolution towers (LLaVA-HR) consume several of them.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models import stack
from mmjax.shapes import Array, Float

DTYPES = ("float32", "bfloat16")
STEM_PATCH = 4  # Stem kernel and stride (HF `patch_size`; ConvNeXt always uses 4).
MLP_RATIO = 4  # Hidden width of the block MLP relative to the stage width.
_DW_KERNEL = 7  # Depthwise kernel size; HF pads by 3 on every side, keeping the map size.


# Named sizes: the CPU sizes trained from scratch here and CLIP-ConvNeXt-L. Configs expand one
# into their `convnext` block (configs/common.py).
VARIANTS = {
    "tiny": dict(widths=(8, 16, 16, 32), depths=(1, 1, 1, 1)),
    "small": dict(widths=(24, 48, 96, 128), depths=(1, 1, 1, 1)),
    "base": dict(widths=(48, 96, 192, 256), depths=(1, 1, 3, 1)),
    "L": dict(widths=(192, 384, 768, 1536), depths=(3, 3, 27, 3)),
}


def variant(name: str) -> dict[str, tuple[int, ...]]:
  """The fields of a named size (`VARIANTS`)."""
  if name not in VARIANTS:
    raise ValueError(f"Unknown ConvNeXt variant {name!r}; valid: {sorted(VARIANTS)}.")
  return dict(VARIANTS[name])


@dataclasses.dataclass(frozen=True)
class ConvNeXtConfig:
  widths: tuple[int, ...] = (192, 384, 768, 1536)  # Channels of each stage (CLIP-ConvNeXt-L).
  depths: tuple[int, ...] = (3, 3, 27, 3)  # Blocks in each stage.
  act: str = "gelu"  # Activation of the block MLP (a `layers.ACTIVATIONS` name).
  norm_eps: float = 1e-6  # Stem, downsampling and block LayerNorms (HF hard-codes 1e-6).
  final_norm_eps: float = 1e-6  # The pooling LayerNorm (HF `layer_norm_eps`, default 1e-12).
  layer_scale_init: float = 1e-6  # Initial γ of every block; 0 means no layer scale at all.
  scan_layers: bool = False  # Run each stage's blocks with nn.scan (stacked parameters).
  remat: bool = False  # Rematerialise each block in the backward pass.
  dtype: str = "float32"  # Compute dtype (float32 or bfloat16).
  param_dtype: str = "float32"  # Storage dtype of the parameters.

  def __post_init__(self):
    if not self.widths or len(self.widths) != len(self.depths):
      raise ValueError(f"ConvNeXt widths={self.widths} and depths={self.depths} must be "
                       "non-empty and of equal length (one entry per stage).")
    if min(self.widths) < 1 or min(self.depths) < 1:
      raise ValueError(f"ConvNeXt widths={self.widths} and depths={self.depths} must be "
                       "positive.")
    if self.norm_eps <= 0 or self.final_norm_eps <= 0:
      raise ValueError(f"ConvNeXt norm_eps={self.norm_eps} and "
                       f"final_norm_eps={self.final_norm_eps} must be positive.")
    if self.layer_scale_init < 0:
      raise ValueError(f"ConvNeXt layer_scale_init={self.layer_scale_init} must be >= 0 "
                       "(0 disables layer scale).")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"Unknown ConvNeXt {name} {getattr(self, name)!r}; valid: {DTYPES}.")
    if self.act not in layers.ACTIVATIONS:
      raise ValueError(f"Unknown ConvNeXt act {self.act!r}; valid: {sorted(layers.ACTIVATIONS)}.")

  @property
  def num_stages(self) -> int:
    return len(self.widths)


@dataclasses.dataclass(frozen=True)
class ConvNeXtBlockConfig:
  """What a block needs: the model config plus the width of the stage it sits in."""
  model: ConvNeXtConfig  # The whole model's config.
  width: int  # Channels of this block's stage.


def _shifted_sum(x: Float[Array, "B H W C"], kernel: Float[Array, "k k 1 C"]
                 ) -> Float[Array, "B H W C"]:
  k = kernel.shape[0]
  h, w = x.shape[1:3]
  pad = k // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(jnp.float32)
  kernel = kernel.astype(jnp.float32)
  out = jnp.zeros(x.shape, jnp.float32)
  for i in range(k):
    for j in range(k):
      out = out + xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
  return out.astype(x.dtype)


@jax.custom_vjp
def _shifted_conv(x: Float[Array, "B H W C"], kernel: Float[Array, "k k 1 C"]
                  ) -> Float[Array, "B H W C"]:
  """The CPU path: k² shifted multiply-adds fused into one elementwise kernel that accumulates in
  float32. XLA's CPU grouped convolution (`feature_group_count=C`) is ~5–15× slower. Reverse-mode
  differentiation only."""
  return _shifted_sum(x, kernel)


def _depthwise_fwd(x, kernel):
  return _shifted_sum(x, kernel), (x, kernel)


def _kernel_grad(x: Float[Array, "B H W C"], g: Float[Array, "B H W C"], k: int
                 ) -> Float[Array, "k k 1 C"]:
  """Σ_{b,h,w} x_pad[b, h+i, w+j, c] · g[b, h, w, c] for every tap (i, j).

  One sample at a time (a scan) keeps each sample's map in cache across the k² reductions; over
  the whole batch they are memory-bound and ~4× slower on CPU (as is XLA's grouped-convolution
  kernel gradient).
  """
  h, w = x.shape[1:3]
  pad = k // 2

  def one(total, sample):
    xi, gi = sample
    xp = jnp.pad(xi, ((pad, pad), (pad, pad), (0, 0)))
    taps = [[jnp.einsum("hwc,hwc->c", xp[i:i + h, j:j + w], gi) for j in range(k)]
            for i in range(k)]
    return total + jnp.array(taps), None

  total, _ = jax.lax.scan(one, jnp.zeros((k, k, x.shape[-1]), jnp.float32),
                          (x.astype(jnp.float32), g.astype(jnp.float32)))
  return total[:, :, None, :]


def _depthwise_bwd(residuals, g):
  x, kernel = residuals
  # The input gradient is the same convolution with the kernel flipped (the padding is symmetric).
  dx = _shifted_sum(g, kernel[::-1, ::-1])
  return dx, _kernel_grad(x, g, kernel.shape[0]).astype(kernel.dtype)


_shifted_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def _grouped_conv(x: Float[Array, "B H W C"], kernel: Float[Array, "k k 1 C"]
                  ) -> Float[Array, "B H W C"]:
  """The accelerator path: XLA's grouped convolution (cuDNN / TPU kernels), at full float32
  precision (not TF32) and accumulating in float32. The shifted sum's k² slices and its
  per-sample kernel-gradient scan make a ~25× larger program (a 7×7 layer's gradient: 2,600 HLO
  lines against 109, 10× the CPU compile time); the llava_hr tower's step built on it did not
  finish compiling for an H100 in minutes."""
  pad = kernel.shape[0] // 2
  out = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1], precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32)
  return out.astype(x.dtype)


def depthwise_conv(x: Float[Array, "B H W C"], kernel: Float[Array, "k k 1 C"]
                   ) -> Float[Array, "B H W C"]:
  """Depthwise 'same' convolution (torch's zero padding k//2, k odd), in the implementation that
  suits the platform the program is lowered for (chosen at lowering, so ahead-of-time plans for
  another platform get that platform's program)."""
  return jax.lax.platform_dependent(x, kernel, cpu=_shifted_conv, default=_grouped_conv)


class ConvNeXtBlock(nn.Module):
  """x + γ · fc2(act(fc1(norm(dwconv(x)))))."""
  config: ConvNeXtBlockConfig

  @nn.compact
  def __call__(self, x: Float[Array, "B H W C"], cache: None):
    cfg, width = self.config.model, self.config.width
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    kernel = self.param(
        "dw_kernel",
        layers.partitioned(nn.initializers.lecun_normal(), ("conv_h", "conv_w", None, "embed")),
        (_DW_KERNEL, _DW_KERNEL, 1, width), cfg.param_dtype)
    bias = self.param("dw_bias", layers.partitioned(nn.initializers.zeros, ("embed",)),
                      (width,), cfg.param_dtype)
    h = depthwise_conv(x, kernel.astype(cfg.dtype)) + bias.astype(cfg.dtype)
    h = layers.layer_norm(name="norm", epsilon=cfg.norm_eps, **kw)(h)
    h = layers.dense(MLP_RATIO * width, ("embed", "mlp"), name="fc1", **kw)(h)
    h = layers.constrain(layers.activation(cfg.act)(h), ("batch", "height", "width", "mlp"))
    h = layers.dense(width, ("mlp", "embed"), name="fc2", **kw)(h)
    if cfg.layer_scale_init > 0:
      gamma = self.param("layer_scale",
                         layers.partitioned(nn.initializers.constant(cfg.layer_scale_init),
                                            ("embed",)),
                         (width,), cfg.param_dtype)
      h = h * gamma.astype(cfg.dtype)
    x = layers.constrain(x + h, ("batch", "height", "width", "embed"))
    return x, (x, None)


class PatchConv(nn.Module):
  """A size×size stride-size convolution ('VALID': a ragged border is dropped, as torch does),
  computed as one matmul over the non-overlapping patches: XLA's CPU convolution is 1.2–3.8×
  slower for the stem and the downsampling layers, its gradient 1.7–3.4×
  (`benchmarks/results/patch_conv.json`; the LLaVA-HR tower's gradient step ~10 % faster).
  Parameters as `nn.Conv`'s (kernel [size, size, C_in, C_out], same initialiser, hence the same
  initial values) and bias."""
  features: int
  size: int
  in_axis: str | None = "conv_in"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B _h _w C2"]:
    b, h, w, c = x.shape
    s = self.size
    kernel = self.param(
        "kernel", layers.partitioned(nn.initializers.lecun_normal(),
                                     ("conv_h", "conv_w", self.in_axis, "conv_out")),
        (s, s, c, self.features), self.param_dtype)
    bias = self.param("bias", layers.partitioned(nn.initializers.zeros, ("conv_out",)),
                      (self.features,), self.param_dtype)
    gh, gw = h // s, w // s
    patches = x[:, :gh * s, :gw * s].reshape(b, gh, s, gw, s, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, gh, gw, s * s * c).astype(self.dtype)
    kernel = kernel.reshape(-1, self.features).astype(self.dtype)
    return jnp.einsum("bhwk,kf->bhwf", patches, kernel) + bias.astype(self.dtype)


class ConvNeXt(nn.Module):
  """Images [B, H, W, 3] → one channels-last feature map per stage.

  Parameters: `stem` (conv), `stem_norm`, `down_{s}` / `down_norm_{s}` for stages s ≥ 1,
  `stage_{s}` (a `stack.LayerStack` of blocks) and `final_norm` (the pooling LayerNorm).
  """
  config: ConvNeXtConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    # The stem's 3 input channels are never sharded (no mesh axis divides them).
    self.stem = PatchConv(cfg.widths[0], STEM_PATCH, in_axis=None, name="stem", **kw)
    self.stem_norm = layers.layer_norm(name="stem_norm", epsilon=cfg.norm_eps, **kw)
    # HF gives stage 0 no downsampling (same width, stride 1); every later stage opens with one.
    self.down_norms = {s: layers.layer_norm(name=f"down_norm_{s}", epsilon=cfg.norm_eps, **kw)
                       for s in range(1, cfg.num_stages)}
    self.downs = {s: PatchConv(cfg.widths[s], 2, name=f"down_{s}", **kw)
                  for s in range(1, cfg.num_stages)}
    self.stages = [
        stack.LayerStack(ConvNeXtBlock, ConvNeXtBlockConfig(cfg, width), depth,
                         scan=cfg.scan_layers, remat=cfg.remat, name=f"stage_{s}")
        for s, (width, depth) in enumerate(zip(cfg.widths, cfg.depths))]
    self.final_norm = layers.layer_norm(name="final_norm", epsilon=cfg.final_norm_eps, **kw)

  def embed(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B h w C"]:
    """The stem (HF `hidden_states[0]`): h, w = floor(H / 4), floor(W / 4)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"ConvNeXt expects channels-last RGB images [B, H, W, 3], got shape "
                       f"{images.shape}.")
    x = self.stem_norm(self.stem(images.astype(self.config.dtype)))
    return layers.constrain(x, ("batch", "height", "width", "embed"))

  def run_stage(self, x: Float[Array, "B h w C"], stage: int) -> Float[Array, "B _h _w C2"]:
    """Stage `stage` (its downsampling included) on the previous stage's map or the stem."""
    if stage > 0:
      x = self.downs[stage](self.down_norms[stage](x))
      x = layers.constrain(x, ("batch", "height", "width", "embed"))
    x, _, _ = self.stages[stage](x, None)
    return x

  def pool(self, x: Float[Array, "B h w C"]) -> Float[Array, "B C"]:
    """HF `pooler_output`: the final LayerNorm of the last stage's spatial mean."""
    return self.final_norm(x.mean(axis=(1, 2)))

  def __call__(self, images: Float[Array, "B H W 3"]) -> list[Float[Array, "B _h _w _C"]]:
    """Returns each stage's output (HF `hidden_states[1:]`); stage s has stride 4 · 2^s."""
    x = self.embed(images)
    maps = []
    for s in range(self.config.num_stages):
      x = self.run_stage(x, s)
      maps.append(x)
    if self.is_initializing():
      self.pool(x)  # Creates `final_norm`'s parameters; callers apply `pool` when they need it.
    return maps


def from_block(block, common: dict) -> "ConvNeXtConfig":
  """The ConvNeXtConfig of a config block holding its fields (e.g. `c.model.tower.convnext`),
  with the model's shared dtypes, scan and remat settings."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(block).items()}
  return ConvNeXtConfig(**fields, **{k: common[k] for k in ("dtype", "param_dtype", "scan_layers",
                                                           "remat")})
