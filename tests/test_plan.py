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



def test_a_scanned_model_counts_every_layer(tmp_path):
  """XLA's cost analysis counts a loop's body once: a config that scans its layers plans the
  FLOPs of its unrolled program, the same as the config without scan."""
  c = config_args.get_config(ROOT / "configs" / "llava15.py", "size=tiny")
  mesh = sharding.make_mesh((1, 8, 1))
  flat = plan.plan(c, mesh, rows=8, text_len=16)
  c.model.scan_layers = True
  scanned = plan.plan(c, mesh, rows=8, text_len=16)
  assert scanned["parameters"] == flat["parameters"]
  assert abs(scanned["flops_per_device"] / flat["flops_per_device"] - 1) < 0.02
  config = plan.build.model_config(c, plan.build.tokenizer(c).vocab_size)
  assert config.llm.scan_layers and not plan.unrolled(config).llm.scan_layers
  assert not plan.unrolled(config).tower.vit.scan_layers


def test_a_public_models_config_plans_with_the_configs_compute_settings(tmp_path, capsys):
  """--hf_config: the model of a Hugging Face config.json (no weights), in --config's dtype."""
  import json
  import transformers
  hf = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  image_size=56, patch_size=14),
      text_config=transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                           num_hidden_layers=2, num_attention_heads=4),
      image_token_index=127)
  hf.architectures = ["LlavaForConditionalGeneration"]
  (tmp_path / "config.json").write_text(json.dumps(hf.to_dict()))
  code = plan.main(["--config", str(ROOT / "configs" / "llava15.py") + ":size=tiny",
                    "--hf_config", str(tmp_path / "config.json"), "--mesh", "1,8,1",
                    "--text_len", "16"])
  out = capsys.readouterr()
  assert code == 0, out.err
  result = json.loads(out.out)
  assert result["tower"] == "vit" and result["visual_tokens"] == 16
  assert result["parameters_by_module"]["llm"] == 128 * 64 * 2 + 2 * (
      4 * 64 * 64 + 3 * 64 * 96 + 2 * 64) + 64
