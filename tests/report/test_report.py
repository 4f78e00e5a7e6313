"""Tests of meta_dataset_ext.report: CI math, result files, tables, plots."""

import csv
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC


def _write_scalars(logdir, series):
  """Write {tag: [(step, value)]} with tf.summary.scalar into logdir."""
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for tag, points in series.items():
      for step, value in points:
        tf.summary.scalar(tag, value, step=step)
  writer.close()


@pytest.fixture(name="summary_dir")
def fixture_summary_dir(tmp_path):
  root = str(tmp_path / "summaries")
  _write_scalars(os.path.join(root, "train"),
                 {"loss": [(0, 2.0), (10, 1.5), (20, 1.0)],
                  "accuracy": [(0, 0.2), (10, 0.4), (20, 0.6)],
                  "alpha/conv1/step_0": [(10, 0.01)]})
  _write_scalars(os.path.join(root, "valid"),
                 {"loss": [(10, 1.7), (20, 1.2)],
                  "accuracy": [(10, 0.35), (20, 0.5)]})
  with tf.summary.create_file_writer(os.path.join(root, "train")).as_default():
    tf.summary.write("weights", tf.ones([4, 3]), step=0)  # Not a scalar.
  return root


def test_confidence_interval_known_values():
  mean, ci = report.confidence_interval([0.0, 1.0, 0.0, 1.0])
  assert mean == pytest.approx(0.5)
  assert ci == pytest.approx(1.96 * 0.5 / 2.0)  # std (ddof=0) 0.5, sqrt(4).
  mean, ci = report.confidence_interval([0.7] * 10)
  assert (mean, ci) == (pytest.approx(0.7), 0.0)


def test_confidence_interval_rejects_empty():
  with pytest.raises(ValueError):
    report.confidence_interval([])


def test_summarize():
  summaries = report.summarize({"omniglot": [0.5, 1.0], "cu_birds": [0.25]})
  assert [s["source"] for s in summaries] == ["omniglot", "cu_birds"]
  assert summaries[0] == {"source": "omniglot", "mean": 0.75,
                          "ci95": pytest.approx(1.96 * 0.25 / math.sqrt(2)),
                          "num_episodes": 2}
  assert summaries[1]["ci95"] == 0.0


def test_write_results(tmp_path):
  summaries = report.summarize({"omniglot": [0.5, 1.0], "cu_birds": [0.25]})
  out_dir = str(tmp_path / "eval")
  paths = report.write_results(out_dir, summaries, "ALFA+fo-Proto-MAML", 300,
                               extra={"ensemble_steps": [100, 200]})
  assert sorted(paths) == ["csv", "json", "markdown"]
  assert sorted(os.listdir(out_dir)) == ["results.csv", "results.json",
                                         "results.md"]
  with open(paths["json"]) as f:
    record = json.load(f)
  assert record["learner"] == "ALFA+fo-Proto-MAML"
  assert record["checkpoint_step"] == 300
  assert record["ensemble_steps"] == [100, 200]
  assert record["sources"]["omniglot"]["mean"] == 0.75
  assert record["sources"]["cu_birds"]["num_episodes"] == 1
  with open(paths["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [r["source"] for r in rows] == ["omniglot", "cu_birds"]
  assert float(rows[0]["mean"]) == 0.75 and rows[0]["num_episodes"] == "2"
  with open(paths["markdown"]) as f:
    markdown = f.read()
  ci = 100 * 1.96 * 0.25 / math.sqrt(2)
  assert f"| omniglot | 75.00 ± {ci:.2f} | 2 |" in markdown
  assert "| cu_birds | 25.00 ± 0.00 | 1 |" in markdown


def test_write_results_rejects_clashing_extra(tmp_path):
  with pytest.raises(ValueError, match="sources"):
    report.write_results(str(tmp_path), [], "x", 0, extra={"sources": {}})


def _comparison_results():
  base = report.summarize({"omniglot": [0.6, 0.7], "glyphs": [0.8]})
  alfa = report.summarize({"omniglot": [0.8, 0.9], "glyphs": [0.7],
                           "quickdraw": [0.5]})
  return {"fo-Proto-MAML": base, "ALFA+fo-Proto-MAML": alfa}


def test_comparison_table_markdown_marks_best():
  table = report.comparison_table(_comparison_results()).splitlines()
  assert table[0] == "| source | fo-Proto-MAML | ALFA+fo-Proto-MAML |"
  omniglot = next(line for line in table if line.startswith("| omniglot"))
  assert "| 65.00 ± " in omniglot and "| **85.00 ± " in omniglot
  glyphs = next(line for line in table if line.startswith("| glyphs"))
  assert "| **80.00 ± 0.00** | 70.00 ± 0.00 |" in glyphs
  assert "| quickdraw | - | 50.00 ± 0.00 |" in table  # Nothing to compare.
  # Average over the two shared sources: (65 + 80) / 2 and (85 + 70) / 2.
  assert table[-1] == "| average (2 sources) | 72.50 | **77.50** |"


def test_comparison_table_text():
  table = report.comparison_table(_comparison_results(), fmt="text")
  lines = table.splitlines()
  assert lines[0].split() == ["source", "fo-Proto-MAML", "ALFA+fo-Proto-MAML"]
  assert set(lines[1]) <= {"-", " "}
  assert lines[-1].split() == ["average", "(2", "sources)", "72.50", "77.50",
                               "*"]
  assert "**" not in table
  with pytest.raises(ValueError):
    report.comparison_table(_comparison_results(), fmt="html")


def test_plot_hyperparameters(tmp_path):
  steps, layers = 5, ["conv1", "conv2", "linear"]
  rng = np.random.default_rng(0)
  alpha = rng.uniform(0, 0.02, (steps, len(layers)))
  beta = rng.uniform(0, 1e-3, (steps, len(layers)))
  path = str(tmp_path / "plots" / "alpha_beta.png")
  assert report.plot_hyperparameters(alpha, beta, layers, path,
                                     title="ALFA", alpha_std=alpha / 10,
                                     beta_std=beta / 10) == path
  _assert_png(path)
  with pytest.raises(ValueError, match="alpha"):
    report.plot_hyperparameters(alpha[:, :2], beta, layers, path)


def test_read_scalars_round_trip(summary_dir):
  scalars = report.read_scalars(summary_dir)
  assert sorted(scalars) == ["train/accuracy", "train/alpha/conv1/step_0",
                             "train/loss", "valid/accuracy", "valid/loss"]
  assert scalars["train/loss"] == [(0, 2.0), (10, 1.5), (20, 1.0)]
  steps, values = zip(*scalars["valid/accuracy"])
  assert steps == (10, 20)
  np.testing.assert_allclose(values, [0.35, 0.5], rtol=1e-6)


def test_read_scalars_simple_value_at_root(tmp_path):
  event = tf.compat.v1.Event(step=3)
  event.summary.value.add(tag="loss", simple_value=0.25)
  with tf.io.TFRecordWriter(str(tmp_path / "events.out.tfevents.1")) as w:
    w.write(event.SerializeToString())
  assert report.read_scalars(str(tmp_path)) == {"loss": [(3, 0.25)]}


def test_read_scalars_truncated_file(tmp_path):
  _write_scalars(str(tmp_path), {"loss": [(0, 1.0), (1, 0.5)]})
  (path,) = [str(p) for p in tmp_path.iterdir()]
  with open(path, "rb+") as f:
    f.truncate(os.path.getsize(path) - 5)  # Killed while writing step 1.
  assert report.read_scalars(str(tmp_path)) == {"loss": [(0, 1.0)]}


def test_read_scalars_errors(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    report.read_scalars(missing)
  with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
    report.read_scalars(str(tmp_path))


def test_plot_training_curves(summary_dir, tmp_path):
  path = str(tmp_path / "curves.png")
  assert report.plot_training_curves(summary_dir, path) == path
  _assert_png(path)
  with pytest.raises(KeyError, match="accuracy"):
    report.plot_training_curves(summary_dir, path, tags=["nope"])
