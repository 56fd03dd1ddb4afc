"""mmjax.plan: ahead-of-time cost of a train step without allocating the model."""
import pathlib

from mmjax import config_args
from mmjax import plan
from mmjax import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_plan_reports_flops_and_memory_of_a_sharded_step():
  c = config_args.get_config(ROOT / "configs" / "llava15.py", "size=tiny")
  mesh = sharding.make_mesh((1, 8, 1))
  result = plan.plan(c, mesh, rows=8, text_len=48)
  assert result["visual_tokens"] == (64 // 16) ** 2 and result["sequence"] == 16 + 48
  llm = result["parameters_by_module"]["llm"]
  assert sum(result["parameters_by_module"].values()) == result["parameters"]
  # A training step costs at least 6 FLOPs per LLM parameter and token (forward + backward),
  # spread over the 8 devices; XLA's count adds attention, the tower and the optimizer.
  assert result["flops_per_device"] * 8 >= 6 * llm * 8 * result["sequence"]
  memory = result["memory_per_device"]
  # FSDP: each device holds about an eighth of the parameters and Adam's two moments.
  assert memory["argument_bytes"] < 3 * 4 * result["parameters"] / 8 + 8 * 64 * 64 * 3 * 4
  assert memory["peak_bytes"] >= memory["argument_bytes"] - memory["alias_bytes"]

