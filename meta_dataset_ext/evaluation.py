"""Evaluation of a run: one checkpoint, and the logit ensemble of the best ones.

The ALFA paper (after MAML++) reports the logits averaged over the top-5 checkpoints by
validation accuracy; Meta-Dataset reports the latest checkpoint. ``Evaluator.evaluate``
gives both when asked: each checkpoint is restored once and runs the same seeded episodes of
every source; the single checkpoint's per-episode metric comes from its own logits, the
ensemble's from the mean of its members' logits. Each result is written on its own:

  <results_dir>/results.{md,csv,json}          the single checkpoint (its step)
  <results_dir>/ensemble_top<k>.{md,csv,json}  the ensemble (its members' steps)
  <summary_dir>/eval_<split>/<source>, eval_<split>_ensemble_top<k>/<source>
                                               TensorBoard: the metric and its 95% CI

Every episode's outputs must be finite (else NonFiniteError names the checkpoint, source,
split and episode).
"""
import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tqdm

from meta_dataset_ext import report
from meta_dataset_ext.errors import NonFiniteError


@dataclasses.dataclass
class Result:
  """One evaluated model: a checkpoint, or the ensemble of several."""
  name: str  # For tables: 'ALFA+fo-Proto-MAML' or 'ALFA+fo-Proto-MAML top-5 ensemble'.
  learner: str
  steps: List[int]  # The checkpoint's update, or the members' (best first).
  summaries: List[dict]  # report.summarize() of the per-episode metric, per source.
  ensemble: bool = False
  files: Dict[str, str] = dataclasses.field(default_factory=dict)

  def by_source(self) -> Dict[str, dict]:
    return {s['source']: s for s in self.summaries}


def ensemble_name(learner: str, top_k: int) -> str:
  return f'{learner} top-{top_k} ensemble'


def check_finite(values: np.ndarray, where: str) -> None:
  if not np.all(np.isfinite(values)):
    raise NonFiniteError(f'{where}: the learner\'s outputs are not finite (NaN or infinite '
                         'logits); the checkpoint holds a diverged state.')


class Evaluator:
  """Runs checkpoints over seeded episodes and writes what they score.

  Args:
    evaluate_batch: [episode] -> (list of query logits, metrics dict with optional
      'alpha'/'beta' diagnostics); a compiled step.
    restore: checkpoint path -> its update step (restores it into the learner).
    episodes: source -> tf.data.Dataset of the split's seeded episodes.
    metric: (logits, labels) -> the per-episode metric, on numpy arrays.
    metric_name: 'accuracy' or 'mse'.
  """

  def __init__(self, evaluate_batch: Callable, restore: Callable[[str], int],
               episodes: Callable[[str], tf.data.Dataset], metric: Callable,
               metric_name: str, show_progress: bool = True):
    self.evaluate_batch, self.restore, self.episodes = evaluate_batch, restore, episodes
    self.metric, self.metric_name, self.show_progress = metric, metric_name, show_progress
    self.diagnostics: Dict[Tuple[str, str], List[np.ndarray]] = {}

  def _run(self, path: str, sources: Sequence[str], split: str, num_episodes: int,
           on_episode: Callable[[Tuple[str, int], np.ndarray, np.ndarray], None],
           record_diagnostics: bool) -> int:
    """Restores ``path`` and calls ``on_episode((source, i), logits, labels)`` for every
    episode; returns the checkpoint's step."""
    step = self.restore(path)
    for source in sources:
      count = 0
      stream = self.episodes(source).take(num_episodes)
      for i, episode in enumerate(tqdm.tqdm(
          stream, total=num_episodes, desc=f'evaluating {source} (update {step})',
          unit='episode', disable=not self.show_progress, leave=False)):
        episode_logits, metrics = self.evaluate_batch([episode])
        logits = episode_logits[0].numpy()
        check_finite(logits, f'Checkpoint {path!r} on {source} {split} episode {i}')
        on_episode((source, i), logits, episode['query_labels'].numpy())
        count += 1
        if record_diagnostics:
          for symbol in ('alpha', 'beta'):
            if symbol in metrics:
              self.diagnostics.setdefault((source, symbol), []).append(
                  metrics[symbol].numpy())
      if count < num_episodes:
        raise RuntimeError(f'The {split} episode stream of {source!r} ended after {count} '
                           f'of {num_episodes} episodes.')
    return step

  def evaluate(self, learner: str, sources: Sequence[str], split: str, num_episodes: int,
               single: Optional[str], members: Sequence[str],
               same_as_single: Sequence[str] = ()) -> List[Result]:
    """The single checkpoint ``single`` (if any) and the ensemble of ``members`` (if more
    than one), in that order. Each checkpoint runs the episodes once: the single one's metric
    is taken per episode, the members' logits are summed per episode. Members listed in
    ``same_as_single`` hold the same state as ``single`` (e.g. the best checkpoint written at
    the latest update) and are not run again."""
    self.diagnostics = {}
    members = list(members) if len(members) > 1 else []
    values = {s: [None] * num_episodes for s in sources}
    sums, labels, steps = {}, {}, {}

    def on_episode(path):
      shares = [m for m in members if m == path or (path == single and m in same_as_single)]

      def record(key, logits, episode_labels):
        if path == single:
          values[key[0]][key[1]] = float(self.metric(logits, episode_labels))
        if shares:
          sums[key] = sums.get(key, 0.0) + len(shares) * logits
          labels[key] = episode_labels
      return record

    runs = ([single] if single else []) + [
        m for m in members if m != single and not (single and m in same_as_single)]
    for path in runs:
      steps[path] = self._run(path, sources, split, num_episodes, on_episode(path),
                              record_diagnostics=path == runs[0])
    for member in members:
      steps.setdefault(member, steps.get(single))
    results = []
    if single:
      results.append(Result(learner, learner, [steps[single]], report.summarize(values)))
    if members:
      ensemble_values = {s: [float(self.metric(sums[(s, i)] / len(members), labels[(s, i)]))
                             for i in range(num_episodes)] for s in sources}
      results.append(Result(ensemble_name(learner, len(members)), learner,
                            [steps[m] for m in members], report.summarize(ensemble_values),
                            ensemble=True))
    return results

  def write(self, result: Result, results_dir: str, summary_dir: Optional[str], split: str,
            extra: Dict[str, object]) -> Dict[str, str]:
    """Writes ``result``'s tables (and TensorBoard summaries); returns the table files."""
    if result.ensemble:
      k = len(result.steps)
      name = f'ensemble_top{k}'
      title = (f'{result.learner}: logit ensemble of the {k} best checkpoints by validation '
               f'{self.metric_name} (updates {", ".join(map(str, result.steps))})')
      step = None
      extra = dict(extra, ensemble_steps=result.steps)
    else:
      name, title, step = 'results', None, result.steps[0]
    result.files = report.write_results(results_dir, result.summaries, result.learner, step,
                                        dict(extra, split=split), metric=self.metric_name,
                                        name=name, title=title)
    if summary_dir:
      run = f'eval_{split.lower()}' + (f'_{name}' if result.ensemble else '')
      for summary in result.summaries:
        writer = tf.summary.create_file_writer(
            os.path.join(summary_dir, run, summary['source']))
        with writer.as_default(step=max(result.steps)):
          tf.summary.scalar(self.metric_name, summary['mean'])
          tf.summary.scalar(f'{self.metric_name}_ci95', summary['ci95'])
        writer.close()
    return result.files
