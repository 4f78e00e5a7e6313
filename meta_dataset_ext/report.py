"""Results and plots of a run: accuracy tables with 95% CIs, alpha/beta, curves.

Accuracies follow upstream Meta-Dataset's convention: the mean over episodes
and a 95% confidence interval of 1.96 * std / sqrt(n) (numpy std, ddof=0).
Functions take and return fractions in [0, 1]; tables show percent.

    summaries = report.summarize({"omniglot": accs_a, "quickdraw": accs_b})
    report.write_results(out_dir, summaries, "ALFA+fo-Proto-MAML", 30000)
    print(report.comparison_table({"fo-Proto-MAML": base,
                                   "ALFA+fo-Proto-MAML": summaries}))
    report.plot_hyperparameters(alpha, beta, layer_names, "alpha_beta.png")
    report.plot_training_curves(summary_dir, "curves.png")

Plots use matplotlib's object-oriented `Figure` (Agg canvas, no pyplot), so
they change no global backend state and work without a display.
"""

import csv
import io
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from matplotlib.figure import Figure
import numpy as np
import tensorflow as tf

from meta_dataset_ext import run_dir

Summary = Dict[str, object]
Series = List[Tuple[int, float]]

_Z95 = 1.96
_CSV_FIELDS = ("source", "mean", "ci95", "num_episodes")
_MISSING = "-"


def confidence_interval(values: Sequence[float]) -> Tuple[float, float]:
  """Mean and 95% CI half-width (1.96 * std / sqrt(n), ddof=0) of `values`.

  Args:
    values: per-episode accuracies in [0, 1].

  Returns:
    (mean, ci95) as floats, in the units of `values`.

  Raises:
    ValueError: if `values` is empty or not one-dimensional.
  """
  array = np.asarray(values, dtype=np.float64)
  if array.ndim != 1 or array.size == 0:
    raise ValueError("confidence_interval needs a non-empty 1-D sequence, got "
                     f"shape {array.shape}")
  ci95 = _Z95 * array.std() / math.sqrt(array.size)
  return float(array.mean()), float(ci95)


def summarize(per_source: Mapping[str, Sequence[float]]) -> List[Summary]:
  """One summary per source, in the mapping's order.

  Args:
    per_source: source name -> per-episode accuracies in [0, 1].

  Returns:
    A list of {"source": str, "mean": float, "ci95": float,
    "num_episodes": int}; mean and ci95 are fractions, not percent.
  """
  summaries = []
  for source, values in per_source.items():
    mean, ci95 = confidence_interval(values)
    summaries.append({"source": source, "mean": mean, "ci95": ci95,
                      "num_episodes": len(values)})
  return summaries


def format_accuracy(mean: float, ci95: float) -> str:
  """'mean ± ci' in percent with two decimals, e.g. '61.20 ± 0.85'."""
  return f"{100 * mean:.2f} ± {100 * ci95:.2f}"


# metric -> (column title, format of 'mean ± ci95', whether higher is better).
_METRICS = {
    "accuracy": ("accuracy (%)", format_accuracy, True),
    "mse": ("MSE", lambda mean, ci95: f"{mean:.3f} ± {ci95:.3f}", False),
}


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]
                    ) -> str:
  """A GitHub markdown table, first column left-aligned, others right."""
  align = [":---"] + ["---:"] * (len(header) - 1)
  lines = [header, align] + list(rows)
  return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A fixed-width table for terminals, columns separated by two spaces."""
  lines = [header] + list(rows)
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  rule = ["-" * w for w in widths]
  out = []
  for line in [lines[0], rule] + lines[1:]:
    cells = [line[0].ljust(widths[0])]
    cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
    out.append("  ".join(cells).rstrip())
  return "\n".join(out) + "\n"


def results_markdown(summaries: Sequence[Summary], title: str,
                     metric: str = "accuracy") -> str:
  """The markdown of `results.md`: a title and source | metric | episodes."""
  column, fmt, _ = _METRICS[metric]
  rows = [[s["source"], fmt(s["mean"], s["ci95"]),
           str(s["num_episodes"])] for s in summaries]
  table = _markdown_table(["source", column, "episodes"], rows)
  return (f"# {title}\n\n"
          f"Mean {metric} over test episodes ± 95% confidence interval.\n\n"
          + table)


def _results_csv(summaries: Sequence[Summary]) -> str:
  """CSV with header source,mean,ci95,num_episodes (fractions)."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for summary in summaries:
    writer.writerow({k: summary[k] for k in _CSV_FIELDS})
  return buffer.getvalue()


def write_results(out_dir: str, summaries: Sequence[Summary], learner: str,
                  checkpoint_step: Optional[int],
                  extra: Optional[Mapping[str, object]] = None,
                  metric: str = "accuracy", name: str = "results",
                  title: Optional[str] = None) -> Dict[str, str]:
  """Write <name>.md, <name>.csv and <name>.json into `out_dir`.

  Each file is written atomically (temporary file + os.replace), so a reader
  never sees a half-written table.

  Args:
    out_dir: directory, created if missing.
    summaries: output of `summarize`.
    learner: learner name, e.g. 'ALFA+fo-Proto-MAML'.
    checkpoint_step: the global step of the evaluated checkpoint (None for
      an ensemble of checkpoints: name its steps in `extra` and `title`).
    extra: more top-level JSON entries (e.g. gin files, ensemble steps); they
      must not be named 'learner', 'checkpoint_step', 'sources' or 'metric'.
    metric: 'accuracy' (fractions, shown in percent) or 'mse' (regression).
    name: the files' stem ('results'; e.g. 'ensemble_top5' beside them).
    title: the markdown title (default '<learner> at step <checkpoint_step>').

  Returns:
    {"markdown": path, "csv": path, "json": path}.

  File formats:
    results.md: a title line and a table source | accuracy (%) | episodes,
      accuracy as 'mean ± ci95' in percent.
    results.csv: columns source,mean,ci95,num_episodes (fractions).
    results.json: {"learner": str, "checkpoint_step": int,
      "sources": {source: {"mean", "ci95", "num_episodes"}}, **extra}.
  """
  record = {"learner": learner,
            "checkpoint_step": (None if checkpoint_step is None
                                else int(checkpoint_step)),
            "metric": metric,
            "sources": {s["source"]: {k: s[k] for k in _CSV_FIELDS[1:]}
                        for s in summaries}}
  clash = set(record) & set(extra or {})
  if clash:
    raise ValueError(f"extra must not override {sorted(clash)}")
  record.update(extra or {})
  os.makedirs(out_dir, exist_ok=True)
  paths = {kind: os.path.join(out_dir, f"{name}.{suffix}")
           for kind, suffix in (("markdown", "md"), ("csv", "csv"),
                                ("json", "json"))}
  run_dir.atomic_write(paths["markdown"], results_markdown(
      summaries, title or f"{learner} at step {checkpoint_step}", metric))
  run_dir.atomic_write(paths["csv"], _results_csv(summaries))
  run_dir.atomic_write(paths["json"], json.dumps(record, indent=2) + "\n")
  return paths


def _all_sources(results: Mapping[str, Sequence[Summary]]) -> List[str]:
  """Sources of any learner, in order of first appearance."""
  order = {}
  for summaries in results.values():
    for summary in summaries:
      order.setdefault(summary["source"], None)
  return list(order)


def _common_sources(results: Mapping[str, Sequence[Summary]]) -> List[str]:
  """Sources every learner has, in order of first appearance."""
  sets = [{s["source"] for s in summaries} for summaries in results.values()]
  return [src for src in _all_sources(results) if all(src in s for s in sets)]


def _marked_row(label: str, cells: Sequence[Optional[Tuple[float, str]]],
                mark, plain, best_of=max) -> List[str]:
  """A table row: `label`, then each (mean, text), `mark` on the best mean
  (`best_of` the means: max, or min for errors).

  Cells that are not the best (and missing ones) go through `plain`; a row
  with fewer than two values marks none.
  """
  means = [c[0] for c in cells if c is not None]
  best = best_of(means) if len(means) > 1 else None
  row = [label]
  for cell in cells:
    if cell is None:
      row.append(plain(_MISSING))
    else:
      row.append(mark(cell[1]) if cell[0] == best else plain(cell[1]))
  return row


# fmt -> (mark the best cell, pad the others to align, render the table).
_TABLE_STYLES = {
    "markdown": (lambda s: f"**{s}**", str, _markdown_table),
    "text": (lambda s: f"{s} *", lambda s: f"{s}  ", _text_table),
}


def comparison_table(results: Mapping[str, Sequence[Summary]],
                     fmt: str = "markdown", metric: str = "accuracy") -> str:
  """Learners side by side: one row per source, one column per learner.

  Cells are 'mean ± ci95' in percent; the best mean of each row is marked
  (bold in markdown, a trailing '*' in text; ties are all marked; a row with
  a single value is not marked). A source a learner lacks shows '-'. The last row is each learner's average accuracy
  over the sources all learners have, labelled 'average (N sources)'; it is
  left out when they share none.

  Args:
    results: learner name -> output of `summarize`, in column order.
    fmt: 'markdown' or 'text'.
    metric: 'accuracy' (percent, higher is better) or 'mse' (lower is better).

  Returns:
    The table as a string ending in a newline.
  """
  if fmt not in _TABLE_STYLES:
    raise ValueError(f"fmt must be 'markdown' or 'text', got {fmt!r}")
  mark, plain, render = _TABLE_STYLES[fmt]
  _, format_value, higher_is_better = _METRICS[metric]
  best_of = max if higher_is_better else min
  by_learner = {learner: {s["source"]: s for s in summaries}
                for learner, summaries in results.items()}
  rows = []
  for source in _all_sources(results):
    cells = []
    for table in by_learner.values():
      s = table.get(source)
      cells.append(None if s is None else
                   (s["mean"], format_value(s["mean"], s["ci95"])))
    rows.append(_marked_row(source, cells, mark, plain, best_of))
  common = _common_sources(results)
  if common:
    averages = [float(np.mean([table[src]["mean"] for src in common]))
                for table in by_learner.values()]
    scale = 100 if metric == "accuracy" else 1
    rows.append(_marked_row(f"average ({len(common)} sources)",
                            [(a, f"{scale * a:.2f}") for a in averages], mark,
                            plain, best_of))
  return render(["source"] + list(results), rows)


def _check_steps_by_layers(name: str, array, num_layers: int) -> np.ndarray:
  """`array` as float [num_steps, num_layers], or a ValueError naming it."""
  array = np.asarray(array, dtype=np.float64)
  if array.ndim != 2 or array.shape[1] != num_layers:
    raise ValueError(f"{name} must have shape [num_steps, {num_layers}] "
                     f"(one column per layer name), got {array.shape}")
  return array


def _save(fig: Figure, path: str) -> str:
  """Save `fig` as PNG at `path` (parent directories created)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
  return path


def plot_hyperparameters(alpha, beta, layer_names: Sequence[str], path: str,
                         title: Optional[str] = None, alpha_std=None,
                         beta_std=None) -> str:
  """The ALFA paper's Figure 3: generated alpha and beta per inner step.

  Two panels (alpha left, beta right); x is the inner step 1..S, one line per
  layer. With `alpha_std` / `beta_std`, a band of +- one std around each line.

  Args:
    alpha: [num_steps, num_layers] effective learning rates, averaged over
      episodes.
    beta: [num_steps, num_layers] effective weight decays, same shape.
    layer_names: num_layers names, the legend.
    path: PNG file to write.
    title: figure title.
    alpha_std: optional [num_steps, num_layers] std over episodes.
    beta_std: optional, likewise for beta.

  Returns:
    `path`.
  """
  num_layers = len(layer_names)
  alpha = _check_steps_by_layers("alpha", alpha, num_layers)
  beta = _check_steps_by_layers("beta", beta, num_layers)
  if alpha.shape != beta.shape:
    raise ValueError(f"alpha {alpha.shape} and beta {beta.shape} differ")
  fig = Figure(figsize=(11, 4.2), layout="constrained")
  axes = fig.subplots(1, 2)
  steps = np.arange(1, alpha.shape[0] + 1)
  panels = (("alpha (learning rate)", alpha, alpha_std),
            ("beta (weight decay)", beta, beta_std))
  for ax, (label, values, std) in zip(axes, panels):
    if std is not None:
      std = _check_steps_by_layers(f"{label.split()[0]}_std", std, num_layers)
    for i, name in enumerate(layer_names):
      (line,) = ax.plot(steps, values[:, i], marker="o", label=name)
      if std is not None:
        ax.fill_between(steps, values[:, i] - std[:, i],
                        values[:, i] + std[:, i], color=line.get_color(),
                        alpha=0.2)
    ax.set_xlabel("inner step")
    ax.set_ylabel(label)
    ax.set_xticks(steps)
    ax.grid(alpha=0.3)
  axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def _event_files(summary_dir: str) -> List[str]:
  """TensorBoard event files under `summary_dir`, sorted."""
  if not os.path.isdir(summary_dir):
    raise FileNotFoundError(f"summary directory {summary_dir!r} does not exist")
  files = [os.path.join(root, name)
           for root, _, names in os.walk(summary_dir)
           for name in names if "tfevents" in name]
  if not files:
    raise FileNotFoundError(
        f"no TensorBoard event files (*tfevents*) under {summary_dir!r}")
  return sorted(files)


def _scalar_value(value) -> Optional[float]:
  """The float of a scalar summary value, None for images, histograms, text."""
  if value.HasField("simple_value"):
    return float(value.simple_value)
  if value.HasField("tensor"):
    array = tf.make_ndarray(value.tensor)
    if array.size == 1 and np.issubdtype(array.dtype, np.number):
      return float(array.reshape(()))
  return None


def _events(path: str):
  """Yield the tf.compat.v1.Event records of one event file.

  A truncated last record (a run killed while writing) ends the file quietly:
  the events before it are still yielded.
  """
  records = iter(tf.data.TFRecordDataset(path))
  while True:
    try:
      record = next(records)
    except (StopIteration, tf.errors.DataLossError):
      return
    yield tf.compat.v1.Event.FromString(record.numpy())


def _read_runs(summary_dir: str) -> Dict[str, Dict[str, Series]]:
  """{run: {tag: [(step, value)]}}; run is the event file's folder.

  The run of files directly in `summary_dir` is ''; others are the relative
  folder in '/' form (e.g. 'train', 'valid', 'eval/omniglot'). Series are
  sorted by step (stable, so a resumed run's repeated steps keep file order).
  """
  runs = {}
  for path in _event_files(summary_dir):
    run = os.path.relpath(os.path.dirname(path), summary_dir)
    run = "" if run == "." else run.replace(os.sep, "/")
    tags = runs.setdefault(run, {})
    for event in _events(path):
      for value in event.summary.value:
        scalar = _scalar_value(value)
        if scalar is not None:
          tags.setdefault(value.tag, []).append((int(event.step), scalar))
  runs = {run: {tag: sorted(series, key=lambda p: p[0])
                for tag, series in tags.items()}
          for run, tags in runs.items() if tags}
  if not runs:
    raise ValueError(f"no scalar summaries in the event files under "
                     f"{summary_dir!r}")
  return runs


def read_scalars(summary_dir: str) -> Dict[str, Series]:
  """Scalar summaries of every event file under `summary_dir`.

  Reads values written by TF2's `tf.summary.scalar` (tensor values) and TF1
  (simple_value). Event files in subfolders get the folder as tag prefix:
  'loss' written to `summary_dir/train` is 'train/loss'; files directly in
  `summary_dir` keep their tags. Non-scalar summaries are skipped.

  Returns:
    {tag: [(step, value), ...]} sorted by step.

  Raises:
    FileNotFoundError: `summary_dir` is missing or has no event files.
    ValueError: the event files hold no scalar summaries.
  """
  return {(f"{run}/{tag}" if run else tag): series
          for run, tags in _read_runs(summary_dir).items()
          for tag, series in tags.items()}


def plot_training_curves(summary_dir: str, path: str,
                         tags: Optional[Sequence[str]] = None) -> str:
  """PNG of training curves: one panel per tag, one line per run folder.

  Runs are the subfolders of `summary_dir` (e.g. train/ and valid/), so the
  panel 'loss' shows train/loss and valid/loss together where both exist.

  Args:
    summary_dir: the run's TensorBoard directory.
    path: PNG file to write.
    tags: tags to plot (without run prefix), e.g. ['loss', 'accuracy'].
      Default: every tag without '/' in its name, or every tag if none is
      (grouped tags such as per-layer 'alpha/conv1/step_0' are left out, and
      so are confidence intervals, '*_ci95').

  Returns:
    `path`.

  Raises:
    KeyError: a requested tag is in no run (the message lists those there).
  """
  runs = _read_runs(summary_dir)
  available = sorted({tag for series in runs.values() for tag in series})
  if tags is None:
    tags = [t for t in available
            if "/" not in t and not t.endswith("_ci95")] or available
  missing = [t for t in tags if t not in available]
  if missing:
    raise KeyError(f"tags {missing} not in {summary_dir!r}; available: "
                   f"{available}")
  ncols = min(3, len(tags))
  nrows = math.ceil(len(tags) / ncols)
  fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows), layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax, tag in zip(axes, tags):
    for run, run_tags in sorted(runs.items()):
      if tag in run_tags:
        steps, values = zip(*run_tags[tag])
        ax.plot(steps, values, label=run or os.path.basename(
            os.path.normpath(summary_dir)))
    ax.set_title(tag)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  for ax in axes[len(tags):]:
    ax.set_visible(False)
  return _save(fig, path)
