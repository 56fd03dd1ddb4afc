"""The `llava_hr` tower in the default setup (see configs/default.py for every field and size).

  python train.py --config configs/llava_hr.py:size=tiny,steps=20 --workdir /tmp/llava_hr
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="llava_hr")
