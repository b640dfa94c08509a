"""Classification metrics (spec section 5), aggregated tables and the confusion-matrix plot.

WA (weighted accuracy) is plain accuracy; UA (unweighted accuracy) is the recall
averaged over classes, so every emotion counts equally however rare it is.
"""

import csv
import io
from collections.abc import Mapping, Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
  """[true class, predicted class] counts."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
  return matrix


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict:
  """WA, UA and macro-F1 (classes absent from both labels and predictions are left out of the means)."""
  matrix = confusion_matrix(labels, predictions, num_classes)
  true_counts, predicted_counts, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
  present = true_counts > 0
  recall = np.divide(hits, true_counts, out=np.zeros(num_classes), where=present)
  precision = np.divide(hits, predicted_counts, out=np.zeros(num_classes), where=predicted_counts > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                 where=(precision + recall) > 0)
  scored = present | (predicted_counts > 0)
  return {
      'wa': float(hits.sum() / max(matrix.sum(), 1)),
      'ua': float(recall[present].mean()) if present.any() else 0.0,
      'macro_f1': float(f1[scored].mean()) if scored.any() else 0.0,
      'confusion': matrix.tolist(),
  }


def aggregate(rows: Sequence[Mapping], group_by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
  """Mean and standard deviation of `metrics` over the rows that share the `group_by` values.

  The groups keep the order in which they first appear; `runs` counts the rows in each. A field a row does
  not have (a prompt-only setting on a [CLS] run) groups as ''.
  """
  groups: dict[tuple, list[Mapping]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(k, '') for k in group_by), []).append(row)
  table = []
  for key, members in groups.items():
    entry = dict(zip(group_by, key), runs=len(members))
    for metric in metrics:
      values = np.array([m[metric] for m in members], np.float64)
      entry[f'{metric}_mean'] = float(values.mean())
      entry[f'{metric}_std'] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    table.append(entry)
  return table


def compare(mean_a: float, std_a: float, mean_b: float, std_b: float, *, at_least: bool = False) -> str:
  """Whether a beats b beyond the spread: only when the intervals mean ± std do not overlap. With
  `at_least`, the claim is a >= b, which holds unless b is ahead beyond the spread."""
  if mean_a - std_a > mean_b + std_b:
    return 'reproduced'
  if mean_b - std_b > mean_a + std_a:
    return 'not reproduced (reversed beyond the spread)'
  return 'reproduced (within the spread)' if at_least else 'not reproduced (within the spread)'


MIN_RUNS_FOR_A_VERDICT = 3


def claims_table(claims: Sequence[tuple[str, Mapping | None, Mapping | None, bool]], metric: str = 'ua') -> str:
  """Markdown rows 'claim | a vs b | verdict' from `aggregate` rows: each claim says row a beats row b in
  `metric` (or, with its flag set, is at least as good). No verdict from fewer than 3 runs a side, and none
  where a row is missing."""
  lines = [f'| claim | test {metric.upper()} (%), a vs b | verdict |', '|---|---|---|']
  for statement, a, b, at_least in claims:
    if a is None or b is None:
      lines.append(f'| {statement} | - | no verdict: a row was not run |')
      continue
    values = (f'{100 * a[f"{metric}_mean"]:.1f} ± {100 * a[f"{metric}_std"]:.1f} vs '
              f'{100 * b[f"{metric}_mean"]:.1f} ± {100 * b[f"{metric}_std"]:.1f}')
    if min(a['runs'], b['runs']) < MIN_RUNS_FOR_A_VERDICT:
      verdict = f'no verdict: {min(a["runs"], b["runs"])} run(s), at least {MIN_RUNS_FOR_A_VERDICT} needed'
    else:
      verdict = compare(a[f'{metric}_mean'], a[f'{metric}_std'], b[f'{metric}_mean'], b[f'{metric}_std'],
                        at_least=at_least)
    lines.append(f'| {statement} | {values} | {verdict} |')
  return '\n'.join(lines) + '\n'


def markdown_table(table: Sequence[Mapping], group_by: Sequence[str], metrics: Sequence[str],
                   scale: float = 100.0) -> str:
  """Rows of `aggregate` as markdown: 'mean ± std' per metric (x100, as the papers report percentages)."""
  header = [*group_by, 'runs', *metrics]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in table:
    cells = [str(row[k]) for k in group_by] + [str(row['runs'])]
    cells += [f'{scale * row[f"{m}_mean"]:.2f} ± {scale * row[f"{m}_std"]:.2f}' for m in metrics]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def csv_table(table: Sequence[Mapping]) -> str:
  """CSV with the union of the rows' keys as columns (a key a row lacks is an empty cell)."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for row in table for k in row)))
  writer.writeheader()
  writer.writerows(table)
  return out.getvalue()


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str, title: str) -> None:
  """Row-normalised confusion matrix (recall per true class) with counts, as a PNG."""
  import matplotlib  # Deferred: only the runs that draw pay for it.
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  matrix = np.asarray(matrix, np.float64)
  rates = np.divide(matrix, matrix.sum(1, keepdims=True), out=np.zeros_like(matrix),
                    where=matrix.sum(1, keepdims=True) > 0)
  figure, axes = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
  image = axes.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha='right')
  axes.set_yticks(range(len(class_names)), class_names)
  axes.set_xlabel('predicted')
  axes.set_ylabel('true')
  axes.set_title(title)
  for i in range(len(class_names)):
    for j in range(len(class_names)):
      axes.text(j, i, f'{rates[i, j]:.2f}\n({int(matrix[i, j])})', ha='center', va='center',
                color='white' if rates[i, j] > 0.5 else 'black', fontsize=8)
  figure.colorbar(image, ax=axes, fraction=0.046)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
