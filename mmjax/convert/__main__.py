"""Converts checkpoints between Hugging Face and mmjax.

  python -m mmjax.convert --hf HF_DIR --out MMJAX_DIR [--scan_layers] [--param_dtype bfloat16]
  python -m mmjax.convert --to_hf --mmjax MMJAX_DIR --out HF_DIR
"""
import argparse
import sys

from mmjax.convert import files
from mmjax.convert import hf


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmjax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--hf", help="Hugging Face checkpoint directory to import.")
  parser.add_argument("--mmjax", help="mmjax checkpoint directory to export (with --to_hf).")
  parser.add_argument("--out", required=True, help="Output directory.")
  parser.add_argument("--to_hf", action="store_true", help="Export mmjax → Hugging Face.")
  parser.add_argument("--scan_layers", action="store_true",
                      help="Store the layers stacked for nn.scan.")
  parser.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args(argv)
  if args.to_hf:
    if not args.mmjax:
      parser.error("--to_hf needs --mmjax DIR.")
    config, params, arch = hf.load(args.mmjax)
    hf.save_hf(args.out, config, params, arch)
  else:
    if not args.hf:
      parser.error("give --hf DIR (import) or --to_hf --mmjax DIR (export).")
    hf_config, tensors = files.read_hf(args.hf)
    arch = hf.held_architecture(hf.architecture_of(hf_config))
    config, params = hf.from_hf_tensors(hf_config, tensors, scan_layers=args.scan_layers,
                                        param_dtype=args.param_dtype)
    hf.save(args.out, config, params, arch)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
