"""The method config (configs/<file>.py) of each registered tower, for tests that go over towers."""
import pathlib

from mmjax import config_args

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = {"vit": "llava15", "llava_hr": "llava_hr", "mini_gemini": "mini_gemini", "eagle": "eagle",
         "leo": "leo", "qwen2vl": "qwen2vl", "internvl": "internvl15",
         "onevision": "llava_onevision", "xcomposer": "xcomposer2_4khd", "oryx": "oryx"}


def get(tower: str, arg: str = ""):
  """The config of the method file whose tower is `tower`, with argument string `arg`."""
  return config_args.get_config(ROOT / "configs" / f"{FILES[tower]}.py", arg)
