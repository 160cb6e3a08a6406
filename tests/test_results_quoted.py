"""The README quotes the committed training runs as they are on disk.

Every row of README.md's tables that points at a committed run folder
(``experiments/results/<run>/`` holding ``metrics.json`` and ``config.json``) must
quote that run's validation accuracy, its number of epochs and its minutes of
training as ``metrics.json`` records them, and its command must ask for the model,
width, BatchNorm, epochs, seed and label smoothing that ``config.json`` says the run
used. A run re-made without updating the README (or the other way round) fails here.
"""

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def quoted_runs():
    """``[(row, folder)]``: README table rows naming a run folder with its metrics."""
    rows = []
    for line in README.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for rel in re.findall(r"`(experiments/results/[\w.-]+)/?`", line):
            folder = ROOT / rel
            if (folder / "metrics.json").is_file() and (folder / "config.json").is_file():
                rows.append((line, folder))
    return rows


def test_the_readme_quotes_committed_runs():
    # the rows below exist; an empty list would make the other test check nothing
    names = {folder.name for _, folder in quoted_runs()}
    assert {"cifar10_default_15ep", "cifar10_60min"} <= names


@pytest.mark.parametrize("row,folder", quoted_runs(), ids=[folder.name for _, folder in quoted_runs()])
def test_a_quoted_run_matches_its_metrics_and_config(row, folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    cells = [c.strip() for c in row.strip("|").split("|")]
    command, quoted = cells[0], cells[1]

    accuracy = re.match(r"(0\.\d{4})", quoted)
    assert accuracy, f"{folder.name}: no accuracy at the start of {quoted!r}"
    assert float(accuracy.group(1)) == round(metrics["test_accuracy"], 4)

    epochs = re.search(r"(\d+) epochs", quoted)
    assert epochs and int(epochs.group(1)) == metrics["epochs"] == config["epochs"]

    minutes = re.search(r"(\d+) min of training", quoted)
    assert minutes and int(minutes.group(1)) == round(metrics["train_time_s"] / 60)

    args = shlex.split(command.strip("`").split("`")[0])
    assert args[0] == "train", f"{folder.name}: the row's command is not a train command: {command!r}"

    def value(flag):
        return args[args.index(flag) + 1] if flag in args else None
    assert value("--model") == config["model"]
    assert float(value("--width")) == config["width"]
    assert int(value("--epochs")) == config["epochs"]
    assert ("--batch-norm" in args) == bool(config["batch_norm"])
    assert int(value("--seed")) == config["seed"]
    assert float(value("--label-smoothing") or 0.0) == config["label_smoothing"]
