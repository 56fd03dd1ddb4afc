"""Converts checkpoints between Hugging Face and mmjax (with the processor files: tokenizer,
chat template, image processor, generation config, copied as they are).

  python -m mmjax.convert --hf HF_DIR --out MMJAX_DIR [--scan_layers] [--param_dtype bfloat16]
  python -m mmjax.convert --to_hf --mmjax MMJAX_DIR --out HF_DIR

--out must not be the source or inside it, and must be empty (or absent) unless --overwrite;
the source is read and converted whole before anything is written.
"""
import argparse
import pathlib
import shutil
import sys

from mmjax import cli
from mmjax import errors
from mmjax import files as mmjax_files
from mmjax.convert import files
from mmjax.convert import hf
from mmjax.data import hf_processor


def _check_out(out: pathlib.Path, source: pathlib.Path, source_flag: str,
               overwrite: bool) -> None:
  """--out is neither the source nor inside it, and holds nothing unless `overwrite`."""
  if mmjax_files.inside(out, source):
    raise errors.OutputError(errors.message(
        f"--out {out}", f"is {source_flag} {source} or inside it: the source would be "
        "overwritten", "write to another folder"))
  mmjax_files.output_folder(out, "--out")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise errors.OutputError(errors.message(
        f"--out {out}", "is not empty", "choose an empty folder, or pass --overwrite to "
        "replace its config.json and weights"))


def _copy_processor_files(source: pathlib.Path, out: pathlib.Path) -> None:
  """The processor files `source` holds (`hf_processor.FILES`), copied into `out`."""
  for name in hf_processor.FILES:
    if (source / name).exists():
      shutil.copyfile(mmjax_files.regular_file(source / name, "processor file"), out / name)


def _main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmjax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--hf", help="Hugging Face checkpoint directory to import.")
  parser.add_argument("--mmjax", help="mmjax checkpoint directory to export (with --to_hf).")
  parser.add_argument("--out", required=True, help="Output directory.")
  parser.add_argument("--to_hf", action="store_true", help="Export mmjax → Hugging Face.")
  parser.add_argument("--scan_layers", action="store_true",
                      help="Store the layers stacked for nn.scan.")
  parser.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--overwrite", action="store_true",
                      help="Write into a non-empty --out (its config.json and weights).")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  if args.to_hf:
    if not args.mmjax or args.hf:
      parser.error("--to_hf takes --mmjax DIR (and no --hf).")
    _check_out(out, pathlib.Path(args.mmjax), "--mmjax", args.overwrite)
    with errors.expected(f"--mmjax {args.mmjax}"):
      config, params, arch = hf.load(args.mmjax)
      tensors = hf.to_hf_tensors(config, params, arch, hf.load_kept(args.mmjax))
    files.write_hf(out, *tensors)
    _copy_processor_files(pathlib.Path(args.mmjax), out)
  else:
    if not args.hf or args.mmjax:
      parser.error("give --hf DIR (import) or --to_hf --mmjax DIR (export).")
    _check_out(out, pathlib.Path(args.hf), "--hf", args.overwrite)
    hf_config, tensors = files.read_hf(args.hf)
    with errors.expected(f"--hf {args.hf}"):
      arch = hf.held_architecture(hf.architecture_of(hf_config))
      config, params, kept = hf.import_hf(hf_config, tensors, scan_layers=args.scan_layers,
                                          param_dtype=args.param_dtype)
    hf.save(out, config, params, arch, kept)
    _copy_processor_files(pathlib.Path(args.hf), out)
  print(f"wrote {out}")
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
