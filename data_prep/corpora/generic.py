"""Any corpus listed in a CSV or JSONL file -> manifest JSONL, with columns mapped by flags.

Each input row is one utterance; `--id_key` and `--text_key` name the required columns,
the other manifest fields are optional mappings (`--label_key emotion --speaker_key spk
...`). File columns (visual, soft labels, acoustic, wav) are paths relative to the input
file's directory (or absolute); they are rewritten relative to the output manifest.
Labels can be renamed (`--label_map ang=anger,exc=happy`) and restricted
(`--keep_labels anger,happy,neutral,sad`): rows with other labels are dropped and counted;
an empty label means unlabelled. Feature directories + patterns (`--visual_dir`, ...) and
`--extract_acoustic` work as in the other adapters; patterns may use {id} and any column.

  python -m data_prep.corpora.generic --input corpus.csv --output out/manifest.jsonl \
      --id_key utt --text_key transcript --label_key emotion --speaker_key spk --wav_key audio \
      --extract_acoustic
"""

import argparse
import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_prep.corpora import common

# Manifest fields that hold file paths (relative to the input listing in the input, to the manifest in the output).
FILE_FIELDS = ('visual', 'visual_soft_labels', 'acoustic', 'wav')


def read_rows(path: str | Path) -> list[dict]:
  """Rows of a .csv (header line) or .jsonl/.json (one object per line) file."""
  path = Path(path)
  with open(path, encoding='utf-8', newline='') as f:
    if path.suffix.lower() == '.csv':
      return list(csv.DictReader(f))
    if path.suffix.lower() in ('.jsonl', '.json'):
      rows = []
      for number, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f'{path}:{number}: not a JSON object: {e}') from e
      return rows
  raise ValueError(f'{path}: unknown input format (use .csv or .jsonl)')


def _value(row: Mapping, key: str | None, path: Path, number: int) -> str | None:
  if key is None:
    return None
  if key not in row:
    raise KeyError(f'{path} row {number}: no column {key!r} (columns: {sorted(row)})')
  value = row[key]
  return None if value is None or str(value).strip() == '' else str(value).strip()


def build_manifest(input_file: str | Path, output: str | Path, keys: Mapping[str, str | None],
                   label_map: Mapping[str, str] | None = None, keep_labels: Sequence[str] | None = None,
                   features: common.FeatureOptions = common.FeatureOptions()) -> common.AdapterReport:
  """Writes a manifest from a CSV/JSONL listing.

  Args:
    input_file: the listing (.csv with a header, or .jsonl).
    output: manifest path.
    keys: manifest field -> input column, for 'id' and 'text' (required) and optionally
      'label', 'speaker', 'session', 'split', 'visual', 'visual_soft_labels', 'acoustic', 'wav'.
    label_map: raw label -> manifest label (unmapped labels pass through).
    keep_labels: labels kept (after mapping); others are dropped and counted. None keeps all.
    features: feature directories / acoustic extraction, as in the other adapters.

  Returns:
    What was kept and dropped.
  """
  input_file, output = Path(input_file), Path(output)
  for required in ('id', 'text'):
    if not keys.get(required):
      raise ValueError(f'the column of the manifest field {required!r} must be given')
  unknown = set(keys) - set(common.MANIFEST_KEYS)
  if unknown:
    raise ValueError(f'unknown manifest fields {sorted(unknown)}; fields are {common.MANIFEST_KEYS}')
  label_map = label_map or {}
  report = common.AdapterReport()
  records, fields, wavs, missing = [], [], [], []
  for number, row in enumerate(read_rows(input_file), 1):
    get = {field: _value(row, keys.get(field), input_file, number) for field in common.MANIFEST_KEYS}
    if get['id'] is None:
      raise ValueError(f'{input_file} row {number}: empty id')
    label = get['label'] if get['label'] is None else label_map.get(get['label'], get['label'])
    if label is not None and keep_labels is not None and label not in keep_labels:
      report.dropped[f'label {label}'] += 1
      continue
    rec = common.record(get['id'], get['text'] or '', label=label, speaker=get['speaker'], session=get['session'],
                        split=get['split'])
    for field in FILE_FIELDS:
      if get[field] is None:
        continue
      path = input_file.parent / get[field]
      if path.is_file():
        rec[field] = common.relative(path, output.parent)
      else:
        missing.append(f'{field} {path}')
    records.append(rec)
    fields.append({**{k: str(v) for k, v in row.items()}, 'id': get['id']})
    wavs.append(None if rec['wav'] is None else str(input_file.parent / get['wav']))
    report.labels[label or 'unlabelled'] += 1
  if missing and not features.allow_missing:
    raise FileNotFoundError(f'{len(missing)} files named in {input_file} do not exist, e.g. {missing[:3]} '
                            '(pass --allow_missing_features to write them as null)')
  for entry in missing:
    report.missing_features[entry.split(' ', 1)[0]] += 1
  common.attach_features(records, fields, wavs, features, output.parent, report)
  report.kept = common.write_manifest(records, output)
  return report


def _mapping(text: str | None) -> dict[str, str]:
  if not text:
    return {}
  pairs = [item.split('=', 1) for item in text.split(',') if item.strip()]
  if any(len(p) != 2 for p in pairs):
    raise ValueError(f'--label_map wants raw=label pairs separated by commas, got {text!r}')
  return {raw.strip(): label.strip() for raw, label in pairs}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--input', required=True, help='.csv (with header) or .jsonl listing')
  parser.add_argument('--output', required=True, help='manifest JSONL to write')
  for field in common.MANIFEST_KEYS:
    parser.add_argument(f'--{field}_key', required=field in ('id', 'text'), help=f'input column of {field!r}')
  parser.add_argument('--label_map', help='raw=label pairs, e.g. ang=anger,exc=happy')
  parser.add_argument('--keep_labels', help='comma-separated labels kept (after mapping); default all')
  common.add_feature_flags(parser)
  args = parser.parse_args(argv)
  keys = {field: getattr(args, f'{field}_key') for field in common.MANIFEST_KEYS}
  keep = [label.strip() for label in args.keep_labels.split(',')] if args.keep_labels else None
  report = build_manifest(args.input, args.output, keys, label_map=_mapping(args.label_map), keep_labels=keep,
                          features=common.feature_options_from_args(args))
  print(report.summary())


if __name__ == '__main__':
  main()
