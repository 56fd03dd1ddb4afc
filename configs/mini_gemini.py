"""The `mini_gemini` tower in the default setup (see configs/default.py for every field and size).

  python train.py --config configs/mini_gemini.py:size=tiny,steps=20 --workdir /tmp/mini_gemini
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  a = config_args.parse(arg, size="small", steps=500, res=0, patch=0)
  return config_args.get_config(pathlib.Path(__file__).with_name("default.py"),
                                f"size={a.size},steps={a.steps},res={a.res},patch={a.patch},"
                                "tower=mini_gemini")
