"""Small synthetic corpora for tests: a manifest with random features, written into TFRecord shards."""

import json
import os

import numpy as np

from data_prep import write_shards

WORDS = ('i', 'am', 'so', 'very', 'happy', 'sad', 'angry', 'neutral', 'anger', 'today', 'feel', 'it', 'was', 'he',
         'is', 'this', 'not', 'really', 'what', 'a', 'day', 'we', 'went', 'home', 'again', '.', '?', '!',
         'un', '##believ', '##able')
SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
LABELS = ('anger', 'happy', 'neutral', 'sad')


def write_vocab(directory: str) -> str:
  path = os.path.join(directory, 'vocab.txt')
  with open(path, 'w') as f:
    f.write('\n'.join(SPECIALS + WORDS) + '\n')
  return path


def write_corpus(directory: str, num_examples: int, *, seed: int = 0, visual_dim: int = 12, acoustic_dim: int = 10,
                 labelled: bool = True, num_shards: int = 4, split_of=None, max_words: int = 12,
                 id_prefix: str = 'utt', visual: bool = True, acoustic: bool = True, text_of=None) -> str:
  """Writes a manifest + .npy features + shards; returns the dataset folder. Every 7th example has no visual;
  visual / acoustic False: no example has that modality; text_of(i): example i's transcript."""
  rng = np.random.default_rng(seed)
  raw = os.path.join(directory, 'raw')
  os.makedirs(raw, exist_ok=True)
  lines = []
  plain_words = [w for w in WORDS if not w.startswith('##') and w != 'un']
  for i in range(num_examples):
    uid = f'{id_prefix}{i:05d}'
    words = list(rng.choice(plain_words, size=rng.integers(1, max_words + 1)))
    if i % 5 == 0:
      words.append('unbelievable')
    record = {'id': uid, 'text': text_of(i) if text_of else ' '.join(words),
              'speaker': f'{1 + i % 5}{"FM"[i % 2]}', 'session': str(1 + i % 5),
              'label': LABELS[i % 4] if labelled else None, 'split': split_of(i) if split_of else 'train'}
    if i % 7 and visual:
      frames = int(rng.integers(1, 40))
      np.save(os.path.join(raw, f'{uid}_v.npy'), rng.normal(size=(frames, visual_dim)).astype(np.float32))
      soft = rng.dirichlet(np.ones(8), size=frames).astype(np.float32)
      np.save(os.path.join(raw, f'{uid}_s.npy'), soft)
      record.update(visual=f'raw/{uid}_v.npy', visual_soft_labels=f'raw/{uid}_s.npy')
    if acoustic:
      frames = int(rng.integers(1, 70))
      np.save(os.path.join(raw, f'{uid}_a.npy'), rng.normal(size=(frames, acoustic_dim)).astype(np.float32))
      record['acoustic'] = f'raw/{uid}_a.npy'
    lines.append(json.dumps(record))
  manifest = os.path.join(directory, 'manifest.jsonl')
  with open(manifest, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  output = os.path.join(directory, 'shards')
  write_shards.write_shards(manifest, output, num_shards=num_shards, workers=1, labels=LABELS if labelled else None,
                            progress=False)
  return output
