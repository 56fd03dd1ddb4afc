"""The `mini_gemini` tower in the default setup (see configs/default.py for every field and size).

  python train.py --config configs/mini_gemini.py:size=tiny,steps=20 --workdir /tmp/mini_gemini
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="mini_gemini")
