"""The finetuning modes (spec section 4): how each frames an utterance, what it trains, how it predicts.

  prompt     text + template ("... I am [MASK] ."), loss at [MASK] over the vocabulary, prediction the
             best-scoring label word there: no new parameters
  prompt_cm  prompt, each training utterance also in the 6 other cross-modal cases
  cls        [CLS] text [SEP] through a new [CLS] head (the paper's "fine-tune" baseline)
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mode:
  name: str
  task: str  # the loss (training/tasks.py) and the batch's targets (data/batch.py)
  prompted: bool  # the template and its [MASK] follow the text; the label words are scored there
  cross_modal: bool  # training also sees every utterance with modalities left out

  def head_classes(self, num_labels: int) -> int:
    """The size of the [CLS] classification head the model needs (0: none)."""
    return 0 if self.prompted else num_labels

  def scored_ids(self, label_word_ids):
    """The vocabulary ids whose [MASK] logits are the class scores, or None to score with the [CLS] head."""
    return label_word_ids if self.prompted else None


MODES = {mode.name: mode for mode in (Mode('prompt', 'prompt', prompted=True, cross_modal=False),
                                      Mode('prompt_cm', 'prompt', prompted=True, cross_modal=True),
                                      Mode('cls', 'cls', prompted=False, cross_modal=False))}


def get(name: str) -> Mode:
  if name not in MODES:
    raise ValueError(f'finetune.mode {name!r} is not one of {sorted(MODES)}')
  return MODES[name]
