"""Learning curves on the embedded fine-detail dataset: is each question kind learnable from
scratch on a CPU, and only at high resolution?

A small CNN probe (plain ReLU convolutions by default, or a ConvNeXt) sees the image (letterboxed
to `res`×`res`) and the question reduced to the words that pick its target (kind, colour, shape,
region); attention (queried by the question), mean and max pooling over its last map feed an
answer classifier. It is trained on all question kinds at once (every question of each image in
the batch, as a multi-turn conversation would) or on the `--kinds` chosen, at high and at low
resolution, and validation accuracy per kind is recorded along the way. Prints a table, writes
JSON and a PNG of the curves.

  python benchmarks/dataset_learnability.py --steps 600 --out benchmarks/results
"""
import argparse
import json
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from mmjax.data.datasets import finedetail
from mmjax.data.datasets import questions
from mmjax.models import convnext
from mmjax.models import vit

KINDS = list(questions.ALL_KINDS)
condition = questions.condition


def letterbox(image: np.ndarray, res: int) -> np.ndarray:
  """The image with its long side resized to `res`, centred on a res×res mean-grey canvas (as
  LLaVA-1.5 pads), so shapes keep their aspect and orientation stays visible."""
  h, w = image.shape[:2]
  scale = res / max(h, w)
  size = (max(round(w * scale), 1), max(round(h * scale), 1))
  canvas = np.full((res, res, 3), (124, 116, 104), np.uint8)
  x0, y0 = (res - size[0]) // 2, (res - size[1]) // 2
  canvas[y0:y0 + size[1], x0:x0 + size[0]] = np.asarray(
      Image.fromarray(image).resize(size, Image.BICUBIC))
  return canvas


def load_split(source, name: str, res: int, cache: pathlib.Path):
  """Letterboxed res×res images (uint8) and the (image, condition, answer, kind) items."""
  path = cache / f"{name}_{len(source)}_{res}.npz"
  items = []
  images = np.zeros((len(source), res, res, 3), np.uint8)
  for i in range(len(source)):
    record = source[i]
    if not path.exists():
      images[i] = letterbox(record["image"], res)
    qa = record["qa"]
    for kind, q, a in zip(qa["kind"], qa["question"], qa["answer"]):
      items.append((i, kind.decode(), q.decode(), a.decode()))
  if path.exists():
    images = np.load(path)["images"]
  else:
    np.savez(path, images=images)
  return images, items


class PlainCNN(nn.Module):
  """A plain ReLU network of the same stage layout (stride 4 stem, stride 32 in four stages):
  without LayerNorm or depthwise convolutions it learns far faster from scratch."""
  config: convnext.ConvNeXtConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    for _ in range(2):  # A stride-4 stem of 3×3 convolutions (a patchify stem learns slower).
      x = nn.relu(nn.Conv(cfg.widths[0], (3, 3), strides=2)(x))
    maps = []
    for s, (width, depth) in enumerate(zip(cfg.widths, cfg.depths)):
      if s:
        x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
      for _ in range(depth):
        x = nn.relu(nn.Conv(width, (3, 3))(x))
      maps.append(x)
    return maps


class Probe(nn.Module):
  """A small CNN; attention, mean and max pooling over its last map, the attention queried by the
  question condition."""
  config: convnext.ConvNeXtConfig
  num_answers: int
  grid: int  # Side of the last feature map: res / 32 / pool.
  backbone_kind: str = "convnext"
  pool: int = 1  # CNN map average-pooled pool×pool, as LLaVA-HR aligns it to the ViT's grid.

  def setup(self):
    if self.backbone_kind == "vit":  # The default config's small ViT, patch 32, no class token.
      width = self.config.widths[-1]
      self.backbone = vit.ViT(vit.ViTConfig(image_size=self.grid * 32, patch_size=32, width=width,
                                            depth=4, num_heads=4, mlp_dim=4 * width, act="gelu",
                                            use_cls=False))
    else:
      self.backbone = (convnext.ConvNeXt(self.config) if self.backbone_kind == "convnext"
                       else PlainCNN(self.config))
    self.pos = self.param("pos", nn.initializers.normal(0.02),
                          (self.grid, self.grid, self.config.widths[-1]))
    self.query = nn.Dense(self.config.widths[-1])
    self.hidden, self.out = nn.Dense(256), nn.Dense(self.num_answers)

  def features(self, images):
    """[B, res, res, 3] → [B, N, C] tokens."""
    if self.backbone_kind == "vit":
      return self.backbone(images)["hidden_states"][-1]
    f = self.backbone(images)[-1]
    if self.pool > 1:
      f = nn.avg_pool(f, (self.pool, self.pool), strides=(self.pool, self.pool))
    b, h, w, c = f.shape
    return f.reshape(b, h * w, c)

  def head(self, f, cond):
    """Tokens [Q, N, C] of each question's image and conditions [Q, K] → logits [Q, A].

    No normalisation of the pooled features: with LayerNorms over them the checkerboard colours
    stayed at chance for 150 steps (0.37, 448 px); without, the same backbone learns them in 50."""
    q = self.query(cond)
    keys = f + self.pos.reshape(1, -1, f.shape[-1])  # Positions steer the attention only.
    attn = jax.nn.softmax(jnp.einsum("qnc,qc->qn", keys, q) / np.sqrt(f.shape[-1]), axis=-1)
    pooled = jnp.einsum("qn,qnc->qc", attn, f)
    x = jnp.concatenate([pooled, f.mean(1), f.max(1), cond], axis=-1)
    return self.out(nn.relu(self.hidden(x)))

  def __call__(self, images, image_index, cond):
    """Every question (its image's position in `images`, its condition) → logits."""
    return self.head(self.features(images)[image_index], cond)


def run(res, train, val, answers, args):
  (train_images, train_items), (val_images, val_items) = train, val
  cfg = convnext.ConvNeXtConfig(widths=tuple(map(int, args.widths.split(","))),
                                depths=tuple(map(int, args.depths.split(","))),
                                layer_scale_init=1.0)
  if args.pool > 1 and args.backbone == "vit":
    raise ValueError("--pool applies to the CNN backbones' last map, not to --backbone vit.")
  model = Probe(cfg, len(answers), res // 32 // args.pool, args.backbone, args.pool)

  def arrays(items):
    cond = np.stack([condition(k, q) for _, k, q, _ in items])
    label = np.array([answers.index(a) for *_, a in items])
    image = np.array([i for i, *_ in items])
    kind = np.array([k for _, k, _, _ in items])
    return image, cond, label, kind

  tr_img, tr_cond, tr_lab, _ = arrays(train_items)
  va_img, va_cond, va_lab, va_kind = arrays(val_items)
  by_image = [np.flatnonzero(tr_img == i) for i in range(len(train_images))]
  questions_per_batch = args.batch * max(len(q) for q in by_image)
  mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
  norm = lambda x: ((x.astype(np.float32) - mean) / std).astype(np.float32)

  params = jax.jit(model.init)(jax.random.key(args.seed), jnp.zeros((1, res, res, 3)),
                               jnp.zeros((1,), jnp.int32), jnp.zeros((1, tr_cond.shape[1])))
  warmup = min(50, args.steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(0, args.lr, warmup, args.steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.05))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, idx, c, y, mask):
    def loss_fn(p):
      logits = model.apply(p, x, idx, c)
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return jnp.sum(nll * mask) / jnp.sum(mask)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  features = jax.jit(lambda p, x: model.apply(p, x, method=Probe.features))
  head = jax.jit(lambda p, f, c: jnp.argmax(model.apply(p, f, c, method=Probe.head), -1))

  def evaluate(params):
    feats = np.concatenate([features(params, norm(val_images[s:s + 32]))
                            for s in range(0, len(val_images), 32)])
    pred = np.concatenate([head(params, feats[va_img[s:s + 512]], va_cond[s:s + 512])
                           for s in range(0, len(va_img), 512)])
    correct = pred == va_lab
    return {k: float(correct[va_kind == k].mean()) for k in KINDS if (va_kind == k).any()}

  rng = np.random.default_rng(args.seed)
  curve, start = [], time.time()
  for i in range(1, args.steps + 1):
    images = rng.choice(len(train_images), args.batch, replace=False)
    rows = np.concatenate([by_image[j] for j in images])
    local = np.concatenate([np.full(len(by_image[j]), n) for n, j in enumerate(images)])
    pad = questions_per_batch - len(rows)  # Static shapes: pad the questions, mask them out.
    mask = np.concatenate([np.ones(len(rows)), np.zeros(pad)]).astype(np.float32)
    rows, local = np.concatenate([rows, np.zeros(pad, int)]), np.concatenate(
        [local, np.zeros(pad, int)])
    params, opt, loss = step(params, opt, norm(train_images[images]), local, tr_cond[rows],
                             tr_lab[rows], mask)
    if i % args.eval_every == 0 or i == args.steps:
      acc = evaluate(params)
      curve.append({"step": i, "loss": float(loss), "seconds": time.time() - start, **acc})
      print(f"res {res} step {i} loss {float(loss):.3f} {time.time() - start:.0f}s " +
            " ".join(f"{k}={v:.2f}" for k, v in acc.items()), flush=True)
  return curve


def chance(items, answers) -> dict[str, float]:
  """Accuracy of always answering a kind's most frequent answer."""
  out = {}
  for kind in KINDS:
    ans = [a for _, k, _, a in items if k == kind]
    if ans:
      out[kind] = max(ans.count(a) for a in set(ans)) / len(ans)
  return out


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  kinds = [k for k in KINDS if k in results["chance"]]
  fig, axes = plt.subplots(2, (len(kinds) + 1) // 2, figsize=(3.2 * ((len(kinds) + 1) // 2), 6))
  for ax, kind in zip(axes.flat, kinds):
    for res, curve in results["curves"].items():
      ax.plot([p["step"] for p in curve], [p[kind] for p in curve], label=f"{res} px")
    ax.axhline(results["chance"][kind], color="grey", linestyle=":", label="majority")
    ax.set_title(kind, fontsize=9)
    ax.set_ylim(0, 1.02)
  axes.flat[0].legend(fontsize=7)
  fig.supxlabel("training step")
  fig.supylabel("validation accuracy")
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="small")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--res", default="384,224", help="Resolutions to train at.")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch", type=int, default=16, help="Images per step (all their "
                      "questions are trained on).")
  parser.add_argument("--backbone", default="cnn", choices=("cnn", "convnext", "vit"))
  parser.add_argument("--widths", default="16,32,64,128", help="Stage widths.")
  parser.add_argument("--depths", default="1,1,2,1", help="Stage depths.")
  parser.add_argument("--pool", type=int, default=1, help="Average-pool the CNN's last map "
                      "pool×pool (2: a 448 px ConvNeXt on a 224 px ViT's grid, as LLaVA-HR).")
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--eval_every", type=int, default=100)
  parser.add_argument("--kinds", default="", help="Comma-separated question kinds to train and "
                      "evaluate on (default: all).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  cache = out / "cache"
  cache.mkdir(parents=True, exist_ok=True)
  builder = finedetail.prepare(args.config, args.data_dir)
  sources = builder.as_data_source()
  name = f"{args.config}_{builder.version}"
  results = {"config": args.config, "args": vars(args), "curves": {}}
  for res in map(int, args.res.split(",")):
    train = load_split(sources["train"], f"{name}_train", res, cache)
    val = load_split(sources["validation"], f"{name}_validation", res, cache)
    if args.kinds:
      wanted = args.kinds.split(",")
      unknown = set(wanted) - set(KINDS)
      if unknown:
        raise ValueError(f"Unknown kinds {sorted(unknown)}; valid: {KINDS}.")
      train = train[0], [item for item in train[1] if item[1] in wanted]
      val = val[0], [item for item in val[1] if item[1] in wanted]
    answers = sorted({a for *_, a in train[1] + val[1]})
    results["chance"] = chance(val[1], answers)
    results["curves"][res] = run(res, train, val, answers, args)
  final = {res: curve[-1] for res, curve in results["curves"].items()}
  print(f"\n{'kind':<18}{'majority':>9}" + "".join(f"{str(r) + ' px':>9}" for r in final))
  for kind in KINDS:
    if kind in results["chance"]:
      print(f"{kind:<18}{results['chance'][kind]:>9.2f}" +
            "".join(f"{p[kind]:>9.2f}" for p in final.values()))
  (out / "learnability.json").write_text(json.dumps(results, indent=1))
  plot(results, out / "learnability.png")
  print(f"wrote {out / 'learnability.json'} and {out / 'learnability.png'}")


if __name__ == "__main__":
  main()
