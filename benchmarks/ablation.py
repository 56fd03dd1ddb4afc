"""The tower ablation: each mixed-resolution tower against the LLaVA-1.5 low-resolution baseline on
the embedded dataset, at the same number of visual tokens into the LLM (LEO: twice, by design),
over several seeds — the small-scale counterpart of LLaVA-HR's Table 1 and EAGLE's fusion study.

Every (tower, seed) run is `train.py` then `eval.py` in a subprocess, in its own workdir, so an
interrupted ablation resumes where it stopped (training resumes from its checkpoint; finished
evaluations are kept). Writes a table (accuracy per question family, mean ± std over seeds; step
time; visual tokens; peak memory), JSON and a PNG of the loss curves and accuracies.

  python benchmarks/ablation.py --steps 500 --seeds 0,1 --out benchmarks/results/ablation

A tower entry is a config name, optionally with its argument and field overrides:
`llava15:res=448,patch=32` is LLaVA-1.5's ViT at 448 px with 32-px patches (196 tokens),
`internvl15:res=448@model.tower.max_num=1@data.max_len=467` InternVL's tiling with a single 448-px tile
(a fixed resolution, pixel-unshuffled to 196 tokens). Entries are separated by ';' (or by ',' when
none has an argument); `--config_arg patch=16` goes to every config.

`--pretrain_steps N` first pre-trains each run's tower with a classifier head (stage 0 alone:
train.py with train.steps=0 and these `pretrain.*` fields, same seed and config overrides) and
starts the MLLM from it — the stand-in for LLaVA's pre-trained CLIP encoders; freeze it with `--set
train.trainable=^(projector|llm)/`. With `--shared_encoders llava_hr` that tower is pre-trained
first (once per seed, or once for all with `--shared_encoders_seed S`), and every other run's
ViT and ConvNeXt start from its encoders (`pretrain.encoders_from`): the papers' footing
(one CLIP, one ConvNeXt, the fusions compared on top), and a fusion no longer has to find the
fine detail from scratch. The encoders stay frozen while a run's fusion pre-trains, or train with
it under `--train_shared_encoders`. Measured (docs/results): on frozen shared encoders Mini-Gemini's
mining read the checkerboard for the classifier head but not for the MLLM (chance), while
started from them and trained with them it did on three seeds. `--set pretrain.kinds=K` keeps
the towers' pre-training on the kinds K (one fine rung) while `data.kinds` has the MLLM learn,
and eval.py ask, more (the coarse family beside it; docs/results: both families in one command,
where `data.tokenizer=bpe:1024` keeps a six-question row at 301 tokens). On an accelerator, `--jobs N`
runs N (tower, seed) pairs at once and `--set` overrides config fields of every run (e.g. `--set
train.batch_size=32`).
"""
import argparse
import concurrent.futures
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np

from mmjax.training import pretrain_tower as pretrain_tower_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOWERS = ("llava15", "llava_hr", "mini_gemini", "eagle", "leo", "qwen2vl", "internvl15",
          "llava_onevision", "xcomposer2_4khd", "oryx")
FAMILIES = ("fine", "coarse", "position")


def _run(command: list[str], log: pathlib.Path) -> dict:
  """Runs a command to completion; returns its peak resident memory and wall time."""
  start = time.time()
  with log.open("a") as f:
    process = subprocess.Popen(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"{' '.join(command)} failed (exit {os.waitstatus_to_exitcode(status)}); "
                       f"see {log}.")
  return {"peak_rss_bytes": usage.ru_maxrss * 1024, "seconds": time.time() - start}


def pretrain_tower(workdir: pathlib.Path, flags: list[str], args,
                   encoders_from: pathlib.Path | None = None) -> dict:
  """Stage 0 of the run in `workdir` alone (train.py with train.steps=0: the tower into
  WORKDIR/tower; kept if already done), its encoders started from `encoders_from`'s if given
  (frozen unless `--train_shared_encoders`); returns its last validation accuracies and wall
  time."""
  settings = {"steps": args.pretrain_steps, "batch": args.pretrain_batch, "lr": args.pretrain_lr,
              "until": args.pretrain_until, "schedule": args.pretrain_schedule,
              "encoders_from": str(encoders_from or ""),
              "train_encoders": bool(encoders_from) and args.train_shared_encoders}
  fields = {**settings, "eval_every": args.pretrain_eval_every or args.pretrain_steps,
            "workers": args.pretrain_workers, "cache_views": args.pretrain_cache_views}
  tower, timing = workdir / "tower", workdir / "tower_time.json"
  if not pretrain_tower_lib.finished(tower, settings):
    run = _run([sys.executable, "train.py", *flags, "--config.train.steps=0",
                *(f"--config.pretrain.{k}={v}" for k, v in fields.items() if v is not None)],
               workdir / "tower.log")
    timing.write_text(json.dumps(run))
  done = json.loads((tower / "pretrain.json").read_text())
  last = done["curve"][-1] if done["curve"] else {"step": 0, "loss": None}
  return {"steps": last["step"], "stopped": done["stopped"],
          "seconds": json.loads(timing.read_text())["seconds"] if timing.exists() else None,
          "loss": last["loss"], "accuracy_by_kind": {k: v for k, v in last.items()
                                                     if k not in ("step", "seconds", "loss")}}


def parse_tower(entry: str) -> tuple[str, str, list[str]]:
  """"NAME[:ARG][@FIELD=VALUE]…" as (config name, its argument, field overrides)."""
  head, *fields = entry.split("@")
  name, _, arg = head.partition(":")
  if name not in TOWERS:
    raise SystemExit(f"Unknown tower config {name!r} in {entry!r}; valid: {TOWERS}.")
  bad = [f for f in fields if "=" not in f]
  if bad:
    raise SystemExit(f"Overrides in {entry!r} take FIELD=VALUE, got {bad}.")
  return name, arg, fields


def run_flags(tower: str, seed: int, workdir: pathlib.Path, args) -> list[str]:
  """The config flags of `tower`'s run with `seed` in `workdir` (train.py, eval.py and the
  tower's pre-training share them)."""
  name, arg, fields = parse_tower(tower)
  # The harness pre-trains the tower itself (or not at all): no stage 0 inside train.py.
  config_arg = ",".join(filter(None, (f"size={args.size},steps={args.steps},pretrain=0",
                                      args.config_arg, arg)))
  flags = [f"--config={ROOT}/configs/{name}.py:{config_arg}", f"--workdir={workdir}",
           f"--config.seed={seed}"]
  if args.data_dir:
    flags.append(f"--config.data.data_dir={args.data_dir}")
  return flags + [f"--config.{item}" for item in args.set + fields]


def run_dir(tower: str, seed: int, args, prefix: str = "") -> pathlib.Path:
  workdir = pathlib.Path(args.out) / "runs" / (prefix + re.sub(r"[^\w.-]+", "_", tower) +
                                               f"_seed{seed}")
  workdir.mkdir(parents=True, exist_ok=True)
  return workdir


def pretrain_shared_encoders(seed: int, args) -> dict:
  """Pre-trains `--shared_encoders`' tower for `seed`; returns its record and where its
  parameters are, the encoders every run of the seed starts from."""
  workdir = run_dir(args.shared_encoders, seed, args, prefix="encoders_")
  record = pretrain_tower(workdir, run_flags(args.shared_encoders, seed, workdir, args), args)
  return {**record, "tower": args.shared_encoders, "seed": seed,
          "file": str(workdir / "tower" / "params.safetensors")}


def run_one(tower: str, seed: int, args, shared: concurrent.futures.Future | None) -> dict:
  workdir = run_dir(tower, seed, args)
  done = workdir / "ablation_row.json"
  if done.exists():
    return json.loads(done.read_text())
  flags = run_flags(tower, seed, workdir, args)
  encoders = shared.result() if shared else None
  pretraining = None
  if encoders and tower == args.shared_encoders and encoders["seed"] == seed:
    # The tower that pre-trained the encoders is kept whole (its fusion trained with them).
    pretraining = encoders
    flags.append(f"--config.train.init_params=tower={pathlib.Path(encoders['file']).parent}")
  elif args.pretrain_steps:
    pretraining = pretrain_tower(workdir, flags, args, encoders and pathlib.Path(encoders["file"]))
    flags.append(f"--config.train.init_params=tower={workdir / 'tower'}")
  train = _run([sys.executable, "train.py", *flags], workdir / "train.log")
  evaluate = _run([sys.executable, "eval.py", *flags], workdir / "eval.log")
  result = json.loads((workdir / "eval" / f"{args.steps}.json").read_text())
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  row = {
      "tower": tower, "seed": seed, "steps": args.steps,
      "accuracy": result["accuracy"], "accuracy_by_kind": result["accuracy_by_kind"],
      "visual_tokens": result["visual_tokens_per_image"],  # Mean over the evaluated images.
      "visual_token_budget": result["visual_token_budget"],
      "tower_pretraining": pretraining, "shared_encoders": encoders,
      "step_seconds": float(np.median([m["step_time"] for m in metrics])),
      "train_peak_rss_bytes": train["peak_rss_bytes"], "train_seconds": train["seconds"],
      "eval_seconds": evaluate["seconds"],
      "loss_curve": [(m["step"], m["loss"]) for m in metrics],
  }
  done.write_text(json.dumps(row))
  return row


def families(rows: list[dict]) -> list[str]:
  """The question families every run was evaluated on (fewer under `--set data.kinds=…`)."""
  return [f for f in FAMILIES if all(f in r["accuracy"] for r in rows)]


def summarize(rows: list[dict]) -> list[dict]:
  out = []
  for tower in dict.fromkeys(r["tower"] for r in rows):
    runs = [r for r in rows if r["tower"] == tower]
    acc = {f: [r["accuracy"][f] for r in runs] for f in families(rows)}
    out.append({
        "tower": tower, "seeds": len(runs), "visual_tokens": runs[0]["visual_tokens"],
        "visual_token_budget": runs[0]["visual_token_budget"],
        **{f"{f}_mean": float(np.mean(v)) for f, v in acc.items()},
        **{f"{f}_std": float(np.std(v)) for f, v in acc.items()},
        "step_seconds": float(np.mean([r["step_seconds"] for r in runs])),
        "peak_rss_gb": float(np.max([r["train_peak_rss_bytes"] for r in runs])) / 1e9,
    })
  return out


def plot(rows: list[dict], summary: list[dict], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (curves, bars, cost) = plt.subplots(1, 3, figsize=(16, 4))
  names = families(rows)
  colours = dict(zip(dict.fromkeys(r["tower"] for r in rows),
                     plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for r in rows:
    steps, losses = zip(*r["loss_curve"])
    curves.plot(steps, losses, color=colours.get(r["tower"]), alpha=0.7,
                label=r["tower"] if r["seed"] == rows[0]["seed"] else None)
  curves.set(xlabel="step", ylabel="training loss (answer tokens)", yscale="log")
  curves.legend(fontsize=8)
  width = 0.8 / len(summary)
  markers = dict(zip(FAMILIES, "o^s"))
  for i, s in enumerate(summary):
    x = np.arange(len(names)) + i * width
    bars.bar(x, [s[f"{f}_mean"] for f in names], width, yerr=[s[f"{f}_std"] for f in names],
             color=colours.get(s["tower"]), label=s["tower"])
    for f in names:  # What each policy's accuracy costs in visual tokens (mean per image).
      cost.errorbar(s["visual_tokens"], s[f"{f}_mean"], yerr=s[f"{f}_std"], fmt=markers[f],
                    color=colours.get(s["tower"]), label=f if i == 0 else None)
      cost.annotate(s["tower"], (s["visual_tokens"], s[f"{f}_mean"]), fontsize=7,
                    xytext=(4, 6 - 14 * (i % 3)), textcoords="offset points")
  bars.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
  bars.set(ylabel="validation accuracy", ylim=(0, 1))
  cost.set(xlabel="visual tokens per image (mean)", ylabel="validation accuracy", ylim=(0, 1),
           xscale="log")
  cost.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--towers", default=",".join(TOWERS),
                      help="Entries NAME[:ARG][@FIELD=VALUE]…, separated by ';' (see above).")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--size", default="small")
  parser.add_argument("--config_arg", default="",
                      help="More config arguments for every tower, e.g. patch=16.")
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--out", default="benchmarks/results/ablation")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="Config override for every run, e.g. train.batch_size=32 (repeatable).")
  parser.add_argument("--jobs", type=int, default=1, help="(tower, seed) runs at once.")
  parser.add_argument("--pretrain_steps", type=int, default=0,
                      help="Tower pre-training steps before train.py (0: none).")
  parser.add_argument("--pretrain_batch", type=int, default=32, help="Its images per step.")
  parser.add_argument("--pretrain_lr", type=float, default=2e-3, help="Its peak learning rate.")
  parser.add_argument("--pretrain_schedule", default="cosine", choices=("cosine", "constant"),
                      help="Its learning rate after the warm-up (constant: --pretrain_steps is "
                      "only a cap for --pretrain_until).")
  parser.add_argument("--shared_encoders", default="",
                      help="A tower entry whose tower is pre-trained first (per seed, or see "
                      "--shared_encoders_seed); every run then starts its ViT and ConvNeXt from "
                      "that tower's, frozen unless --train_shared_encoders, and pre-trains its "
                      "fusion on them (as the papers all start from the same CLIP and ConvNeXt).")
  parser.add_argument("--train_shared_encoders", action="store_true",
                      help="The runs' encoders start from the shared ones and train with the "
                      "fusion in its pre-training (measured: on frozen ones Mini-Gemini's MLLM "
                      "stays at chance).")
  parser.add_argument("--shared_encoders_seed", type=int, default=None,
                      help="Pre-train the shared encoders once, with this seed, for every seed "
                      "(the seeds then vary the fusions and the MLLMs); unset: once per seed.")
  parser.add_argument("--pretrain_workers", type=int, default=0,
                      help="Its batch-preparing threads.")
  parser.add_argument("--pretrain_cache_views", action="store_true",
                      help="Keeps its decoded views in memory (the 448-px views of 4,000 images: "
                      "up to 12 GB).")
  parser.add_argument("--pretrain_until", type=float, default=None,
                      help="Stop a tower's pre-training once every question kind reaches this "
                           "validation accuracy (checked every --pretrain_eval_every steps).")
  parser.add_argument("--pretrain_eval_every", type=int, default=0,
                      help="Steps between its validation passes (0: only at the end).")
  args = parser.parse_args()
  # ',' separates entries only where no entry has an argument (whose own commas it would split).
  sep = ";" if ";" in args.towers or ":" in args.towers else ","
  towers = [t for t in args.towers.split(sep) if t]
  for tower in towers:
    parse_tower(tower)
  bad = [item for item in args.set if "=" not in item]
  if bad:
    raise SystemExit(f"--set takes FIELD=VALUE, got {bad}.")
  if args.shared_encoders:
    parse_tower(args.shared_encoders)
    if not args.pretrain_steps:
      raise SystemExit("--shared_encoders pre-trains them: set --pretrain_steps too.")
  elif args.train_shared_encoders or args.shared_encoders_seed is not None:
    raise SystemExit("--train_shared_encoders and --shared_encoders_seed need --shared_encoders.")
  if args.pretrain_until is not None and not args.pretrain_eval_every:
    raise SystemExit("--pretrain_until is checked at validation passes: set "
                     "--pretrain_eval_every too.")
  seeds = [int(s) for s in args.seeds.split(",")]
  pairs = [(tower, seed) for seed in seeds for tower in towers]
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    # A seed's shared encoders are submitted before its runs, which wait for them: the pool
    # starts jobs in order, so a waiting run never holds up the job it waits for.
    futures, shared = [], {}
    for seed in seeds:
      source = seed if args.shared_encoders_seed is None else args.shared_encoders_seed
      if args.shared_encoders and source not in shared:
        shared[source] = pool.submit(pretrain_shared_encoders, source, args)
      futures += [pool.submit(run_one, tower, seed, args, shared.get(source)) for tower in towers]
    rows = []
    for (tower, seed), future in zip(pairs, futures):
      rows.append(future.result())
      print(f"{tower} seed {seed}: {rows[-1]['accuracy']}", flush=True)
  summary = summarize(rows)
  names = families(rows)
  print(f"\n| tower | visual tokens (mean / budget) | {' | '.join(names)} | step s | "
        f"peak RSS GB |")
  print("|---|---|" + "---|" * len(names) + "---|---|")
  for s in summary:
    cells = " | ".join(f"{s[f + '_mean']:.3f} ± {s[f + '_std']:.3f}" for f in names)
    print(f"| {s['tower']} | {s['visual_tokens']:.0f} / {s['visual_token_budget']} | {cells} | "
          f"{s['step_seconds']:.2f} | "
          f"{s['peak_rss_gb']:.1f} |")
  out = pathlib.Path(args.out)
  (out / "ablation.json").write_text(json.dumps({"args": vars(args), "summary": summary,
                                                  "runs": rows}, indent=1))
  plot(rows, summary, out / "ablation.png")
  print(f"wrote {out / 'ablation.json'} and {out / 'ablation.png'}")


if __name__ == "__main__":
  main()
