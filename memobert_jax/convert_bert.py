"""Converts a Hugging Face BERT folder into an init checkpoint for MEmoBERT's text part.

  python -m memobert_jax.convert_bert --hf_dir path/to/bert-base-uncased --output runs/init/bert-base-uncased

The output directory (params/, memobert_init.json, vocab.txt) is what a config names as its
initialisation; see memobert_jax/hf_import.py.
"""

import argparse
from collections.abc import Sequence

from memobert_jax import hf_import, init_checkpoint


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--hf_dir', required=True, help='Hugging Face BERT folder: config.json, vocab.txt, weights')
  parser.add_argument('--output', required=True, help='init checkpoint directory to write')
  parser.add_argument('--weights', default=None,
                      help=f'weights file inside --hf_dir (default: the first of {", ".join(hf_import.WEIGHT_FILES)})')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing checkpoint in --output')
  args = parser.parse_args(argv)
  metadata = hf_import.convert(args.hf_dir, args.output, weights_file=args.weights, overwrite=args.overwrite)
  parts = [name for name in ('pooler', 'mlm_head') if any(p.startswith(f'{name}/') for p in metadata['params'])]
  print(f"converted {metadata['source']}/{metadata['weights_file']} -> {args.output}: "
        f"{len(metadata['params'])} parameters (embeddings, {metadata['config']['num_layers']} layers"
        f"{''.join(', ' + p for p in parts)}); config {metadata['config']}")
  if not init_checkpoint.has_mlm_head(metadata):
    print(f'warning: {args.hf_dir} has no MLM head (cls.predictions.*): it starts at random, and prompting reads the '
          f'label words through it. Train it by the text stage first:\n  '
          f'{init_checkpoint.TEXT_STAGE.replace("INIT", args.output)}')


if __name__ == '__main__':
  main()
