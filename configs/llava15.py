"""LLaVA-1.5: one ViT (CLIP ViT-L/14-336 at the papers' size) → MLP projector → the LLM.

The default run pre-trains its ViT with a classifier head on the dataset's questions (stage 0,
the stand-in for CLIP), freezes it and trains projector and LLM on the questions (LLaVA's stage
2; its projector-only caption stage needs a pre-trained LLM and is left out). Without stage 0
both stages train every parameter; starting from converted checkpoints (`train.init_params`),
set the stages' `trainable` patterns to LLaVA's (`^projector/`, then `^(projector|llm)/`).
configs/common.py documents the arguments and the shared fields.

  python train.py --config configs/llava15.py:size=tiny,steps=50 --workdir /tmp/run
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  side = a.res or (336 if a.big else a.s.image)
  tower = common.block(
      name="vit",
      vit=common.vit_block(a, side),  # mmjax.models.vit.ViTConfig's fields.
      select_layer=-2)  # Hidden state fed on: LLaVA's penultimate.
  # Stage 0 at size=small: with 1,000 steps on the coarse kinds the tower reads them as well as
  # with 1,500 on every kind (docs/results), and the MLLM gets the minutes. LLaVA starts from a
  # pre-trained CLIP; a tower trained from scratch through the language loss learns only colour
  # here (docs/results).
  return common.config(a, tower, common.mlp("mlp2x_gelu"),
                       pretrain_steps=1000 if a.size == "small" else 0)
