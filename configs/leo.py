"""The `leo` tower in the default setup (see configs/default.py for every field and size).

  python train.py --config configs/leo.py:size=tiny,steps=20 --workdir /tmp/leo
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="leo")
