"""Cross-validation folds of the evaluation protocols (spec section 5).

Protocols:
- 'iemocap': 5 sessions of 2 speakers -> 10 folds. Fold 2k-1 holds session k out with its
  female speaker as validation and its male speaker as test; fold 2k swaps the two.
- 'msp_improv': 6 sessions of 2 speakers -> 12 folds, the other way round: odd folds
  validate on the male speaker and test on the female one, even folds swap.
- 'sessions': leave-one-session-out for any number of 2-speaker sessions (female
  speaker validation in odd folds), for other corpora recorded like IEMOCAP.
- 'given': one fold from each example's own `split` field ('train', 'valid', 'test';
  missing = 'train').

Every other session is training data. Speakers are told apart by their gender, the last
letter of the speaker id ('1F', '1M': what the corpus adapters write). Folds are numbered
from 1, as in the papers. `split_ids` can also subsample the training part (the
low-resource experiments: 10 / 20 / 40 / 60 % of the training data).
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

PROTOCOLS = ('iemocap', 'msp_improv', 'sessions', 'given')
SPLITS = ('train', 'valid', 'test')
# protocol -> (required number of sessions or None, gender of the validation speaker in odd folds)
_SESSION_PROTOCOLS = {'iemocap': (5, 'F'), 'msp_improv': (6, 'M'), 'sessions': (None, 'F')}


@dataclasses.dataclass(frozen=True)
class Fold:
  """One train / valid / test partition.

  Attributes:
    index: 1-based fold number.
    train_sessions: sessions used for training (empty for 'given').
    held_out_session: the session split between validation and test (None for 'given').
    valid_speaker: the held-out session's validation speaker (None for 'given').
    test_speaker: its test speaker (None for 'given').
  """
  index: int
  train_sessions: tuple[str, ...] = ()
  held_out_session: str | None = None
  valid_speaker: str | None = None
  test_speaker: str | None = None

  @property
  def uses_given_split(self) -> bool:
    return self.held_out_session is None


def _natural_key(text: str) -> tuple:
  # Session '10' sorts after '9'.
  return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text))


def _gender(speaker: str) -> str | None:
  last = speaker[-1:].upper()
  return last if last in ('F', 'M') else None


def make_folds(protocol: str, examples: Sequence[Mapping]) -> list[Fold]:
  """The folds of `protocol` over `examples` (manifest-like records with 'session' and 'speaker').

  Raises:
    ValueError: unknown protocol; an example without session/speaker; a session without
      exactly one female and one male speaker; the wrong number of sessions for the protocol.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown fold protocol {protocol!r}; choose from {PROTOCOLS}')
  if protocol == 'given':
    return [Fold(index=1)]
  num_sessions, first_valid_gender = _SESSION_PROTOCOLS[protocol]
  speakers: dict[str, set[str]] = {}
  for ex in examples:
    if not ex.get('session') or not ex.get('speaker'):
      raise ValueError(f'protocol {protocol!r} needs a session and a speaker for every example; '
                       f'{ex.get("id", ex)!r} has session={ex.get("session")!r}, speaker={ex.get("speaker")!r}')
    speakers.setdefault(str(ex['session']), set()).add(str(ex['speaker']))
  sessions = sorted(speakers, key=_natural_key)
  if num_sessions is not None and len(sessions) != num_sessions:
    raise ValueError(f'protocol {protocol!r} needs {num_sessions} sessions, the data has {len(sessions)}: {sessions}')
  folds = []
  for session in sessions:
    by_gender = {_gender(s): s for s in speakers[session]}
    if len(speakers[session]) != 2 or set(by_gender) != {'F', 'M'}:
      raise ValueError(f'session {session!r} must have exactly 2 speakers, one ending in F and one in M; '
                       f'it has {sorted(speakers[session])}')
    other = 'M' if first_valid_gender == 'F' else 'F'
    train = tuple(s for s in sessions if s != session)
    for valid_gender, test_gender in ((first_valid_gender, other), (other, first_valid_gender)):
      folds.append(Fold(index=len(folds) + 1, train_sessions=train, held_out_session=session,
                        valid_speaker=by_gender[valid_gender], test_speaker=by_gender[test_gender]))
  return folds


def split_ids(fold: Fold, examples: Sequence[Mapping], train_fraction: float = 1.0,
              seed: int = 0) -> dict[str, list[str]]:
  """Example ids of each split ('train', 'valid', 'test') of `fold`, in input order.

  Args:
    fold: from `make_folds`.
    examples: records with 'id' and 'session'/'speaker' (or 'split' for a given-split fold).
    train_fraction: keep this random fraction of the training ids (low-resource runs).
    seed: of that subsample.

  Raises:
    ValueError: an example's given split is not one of SPLITS; an example's session or speaker
      is not in the fold; train_fraction not in (0, 1].
  """
  if not 0 < train_fraction <= 1:
    raise ValueError(f'train_fraction must be in (0, 1], got {train_fraction}')
  out = {split: [] for split in SPLITS}
  train_sessions = set(fold.train_sessions)
  for ex in examples:
    if fold.uses_given_split:
      split = ex.get('split') or 'train'
      if split not in SPLITS:
        raise ValueError(f'example {ex["id"]!r} has split {split!r}; splits are {SPLITS}')
      out[split].append(ex['id'])
    elif str(ex['session']) in train_sessions:
      out['train'].append(ex['id'])
    elif str(ex['speaker']) == fold.valid_speaker:
      out['valid'].append(ex['id'])
    elif str(ex['speaker']) == fold.test_speaker:
      out['test'].append(ex['id'])
    else:
      raise ValueError(f'example {ex["id"]!r} (session {ex["session"]!r}, speaker {ex["speaker"]!r}) '
                       f'is not part of fold {fold.index}')
  if train_fraction < 1:
    rng = np.random.default_rng(seed)
    keep = max(1, round(train_fraction * len(out['train'])))
    chosen = np.sort(rng.permutation(len(out['train']))[:keep])
    out['train'] = [out['train'][i] for i in chosen]
  return out
