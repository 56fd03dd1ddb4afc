"""A prepared TFDS dataset's record files, checked against what its metadata promises.

TFDS reports a split's size from its metadata alone, so a dataset whose array_record files were
truncated or lost (a partial copy, a full disk while generating) would report "train 48" and
fail only when a batch reaches the damaged file, deep in a reader. `verify` opens every shard
(its footer, not its records) and compares the record count with the metadata's.
"""
from array_record.python import array_record_module

from mmjax import errors
from mmjax import files


def verify(builder) -> None:
  """Every shard file of every split of a prepared TFDS `builder` exists as a regular file and
  holds the number of records its metadata states; an `InputError` naming the file if not."""
  for name, split in builder.info.splits.items():
    for path, expected in zip(split.filepaths, split.shard_lengths):
      path = files.regular_file(path, f"dataset file of split {name!r}")
      try:
        reader = array_record_module.ArrayRecordReader(str(path))
        try:
          found = reader.num_records()
        finally:
          reader.close()
      except Exception as e:  # The reader raises bare RuntimeErrors/Exceptions for bad files.
        text = errors.first_line(e)
        found, why = None, text[:200] + ("…" if len(text) > 200 else "")
      else:
        why = f"holds {found} records, the metadata says {expected}"
      if found != expected:
        raise errors.InputError(errors.message(
            f"dataset file {path}", f"damaged: {why}",
            f"delete {builder.data_dir} to generate (or ingest) it again"))
