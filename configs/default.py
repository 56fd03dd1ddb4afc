"""The default config: LLaVA-1.5 (configs/llava15.py) on the embedded fine-detail dataset, sized
for a 2-core CPU. Each method has its own file in configs/ (configs/common.py: the arguments and
the shared fields).

  python train.py --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run
  python eval.py  --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.get_config(pathlib.Path(__file__).with_name("llava15.py"), arg)
