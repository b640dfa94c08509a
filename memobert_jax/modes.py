"""The finetuning modes (spec section 4): how each frames an utterance, what it trains, how it predicts.

  prompt     text + template ("... I am [MASK] ."), loss at [MASK] over the vocabulary (the paper's) or over
             the label words only (finetune.prompt_loss), prediction the best-scoring label word there:
             no new parameters
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

  def training_task(self, prompt_loss: str) -> str:
    """The task a training step runs: a prompted mode's loss is over the vocabulary or the label words."""
    if prompt_loss not in PROMPT_LOSS_TASKS:
      raise ValueError(f'finetune.prompt_loss {prompt_loss!r} is not one of {sorted(PROMPT_LOSS_TASKS)}')
    return PROMPT_LOSS_TASKS[prompt_loss] if self.prompted else self.task

  def head_classes(self, num_labels: int) -> int:
    """The size of the [CLS] classification head the model needs (0: none)."""
    return 0 if self.prompted else num_labels

  def scored_ids(self, label_word_ids):
    """The vocabulary ids whose [MASK] logits are the class scores, or None to score with the [CLS] head."""
    return label_word_ids if self.prompted else None


# finetune.prompt_loss -> the task (training/tasks.py). 'label_words' is LM-BFF's and PET's softmax over the
# label words alone: it separates the classes from the first step, where the vocabulary-wide loss first
# pushes every label word up against the other 30k words.
PROMPT_LOSS_TASKS = {'vocabulary': 'prompt', 'label_words': 'prompt_label_words'}

MODES = {mode.name: mode for mode in (Mode('prompt', 'prompt', prompted=True, cross_modal=False),
                                      Mode('prompt_cm', 'prompt', prompted=True, cross_modal=True),
                                      Mode('cls', 'cls', prompted=False, cross_modal=False))}


def get(name: str) -> Mode:
  if name not in MODES:
    raise ValueError(f'finetune.mode {name!r} is not one of {sorted(MODES)}')
  return MODES[name]
