"""A window shuffle whose checkpoint survives any number of restores.

grain 0.2.18's WindowShuffleIterDataset keeps a reference to the parent state it was restored
from; the parent then advances that very object, so the next checkpoint records where the parent
is now instead of where the window began, and a second resume replays other examples (seen with
a window of 10000, hidden by small windows that refill before the next save). This one copies the
parent's state whenever it takes or hands one over.
"""

import copy

import grain
import numpy as np


class WindowShuffleIterDataset(grain.IterDataset):
  """Reads `window_size` elements, yields them in a random order drawn from (seed, window index), repeats."""

  def __init__(self, parent: grain.IterDataset, *, window_size: int, seed: int):
    super().__init__(parent)
    if window_size < 1:
      raise ValueError(f'the shuffle window must hold at least one element, got {window_size}')
    self.window_size = window_size
    self.seed = seed

  def __iter__(self) -> '_WindowShuffleIterator':
    return _WindowShuffleIterator(self._parent.__iter__(), self)


class _WindowShuffleIterator(grain.DatasetIterator):
  """State: the parent's state where the current window began, the window's index and how many of it were
  yielded; restoring re-reads the window from there and skips what was yielded."""

  def __init__(self, parent: grain.DatasetIterator, dataset: WindowShuffleIterDataset):
    super().__init__(parent)
    self._dataset = dataset
    self._window_index = 0
    self._window: list = []
    self._yielded = 0
    self._window_start = copy.deepcopy(parent.get_state())

  def _fill(self) -> None:
    self._window_start = copy.deepcopy(self._parent.get_state())
    window = []
    for element in self._parent:
      window.append(element)
      if len(window) == self._dataset.window_size:
        break
    order = np.random.default_rng([self._dataset.seed, self._window_index]).permutation(len(window))
    self._window = [window[i] for i in order]
    self._yielded = 0

  def __next__(self):
    if self._yielded == len(self._window):
      if self._window:
        self._window_index += 1
      self._fill()
      if not self._window:
        raise StopIteration
    element = self._window[self._yielded]
    self._window[self._yielded] = None  # yielded elements are not held on to
    self._yielded += 1
    return element

  def get_state(self) -> dict:
    return {'window_start': copy.deepcopy(self._window_start), 'window_index': self._window_index,
            'yielded': self._yielded}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(copy.deepcopy(state['window_start']))
    self._window_index = state['window_index']
    self._fill()
    if state['yielded'] > len(self._window):
      raise ValueError(f'the saved shuffle state has yielded {state["yielded"]} elements of a window that holds '
                       f'{len(self._window)}: it was saved over other data')
    self._yielded = state['yielded']
