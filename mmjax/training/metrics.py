"""Training metrics: `DIR/metrics.jsonl` (one JSON object per logged step), TensorBoard event
files, and a progress bar with an ETA. Only process 0 writes."""
import json
import pathlib
from typing import Any

import jax
import tqdm
from tensorboardX import SummaryWriter


class MetricsWriter:

  def __init__(self, workdir: str | pathlib.Path, total_steps: int, initial_step: int = 0):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))
    self.bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                         dynamic_ncols=True)

  def advance(self, steps: int = 1) -> None:
    if self.enabled:
      self.bar.update(steps)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": step, **{k: (v if isinstance(v, str) else float(v))
                            for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(row) + "\n")
    self.jsonl.flush()
    for key, value in row.items():
      if key != "step" and not isinstance(value, str):
        self.tensorboard.add_scalar(key, value, step)
    self.tensorboard.flush()
    self.bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}", refresh=False)

  def close(self) -> None:
    if self.enabled:
      self.bar.close()
      self.jsonl.close()
      self.tensorboard.close()
