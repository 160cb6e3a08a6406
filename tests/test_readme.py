"""The README's commands run as written.

Every command in README.md's code blocks is either run here (as written, or with
its placeholder paths and its long settings replaced by small ones: each
substitution is listed next to the command) or excluded with the reason. A new
README command that is neither makes ``test_every_readme_command_is_run_or_excluded``
fail. ``python -m tinyvgg ...`` commands run in this process through
``tinyvgg.cli.main`` (the same code as the entry point, without a new interpreter
per command). The whole file takes about half a minute on 2 cores.
"""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyvgg import checkpoint
from tinyvgg.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def readme_blocks():
    """``[(language, text)]`` of README.md's fenced code blocks."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def readme_commands():
    """The shell commands of the ``sh`` blocks: continuation lines joined, comments
    dropped, whitespace collapsed (the form used as keys below)."""
    out = []
    for lang, text in readme_blocks():
        if lang != "sh":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(" ".join(words))
    return out


def tinyvgg_argv(command):
    """``[...]`` after ``python -m tinyvgg`` in ``command``."""
    words = command.split()
    k = words.index("tinyvgg")
    assert words[k - 1] == "-m", command
    return words[k + 1:]


def replace_options(argv, **values):
    """``argv`` with ``--opt value`` pairs replaced (or appended); ``...`` dropped.
    Keys use underscores for dashes; a value None removes the option and its value."""
    argv = [a for a in argv if a != "..."]
    for key, value in values.items():
        opt = "--" + key.replace("_", "-")
        if opt in argv:
            k = argv.index(opt)
            del argv[k:k + 2]
        if value is not None:
            argv += [opt, str(value)]
    return argv


# The README's commands that are not run here, and why.
EXCLUDED = {
    "make demo": "trains VGG-11 for 8 epochs on Fashion-MNIST (under 10 minutes); its command runs "
                 "on 600 images by tests/test_recipe.py::test_demo_command_runs_its_settings_on_a_few_images",
    "make test": "the whole test suite, this file included",
    ".venv/bin/python -m pytest tests/test_layers.py tests/test_ops.py -q":
        "part of this very suite: pytest runs those files itself",
    ".venv/bin/mpirun -n 4 .venv/bin/python -m tinyvgg train --model vgg16 --batch-size 256 ... "
    "--data-parallel": "needs 4 MPI processes and a full VGG-16; data-parallel training is "
                       "tested by tests/test_distributed.py",
    "python -c import torch, torchvision; torch.save(torchvision.models.vgg16(weights='DEFAULT')"
    ".state_dict(), 'vgg16.pth')": "needs PyTorch and downloads 528 MB of weights",
    ".venv/bin/python -m tinyvgg convert vgg16.pth vgg16.npz":
        "needs vgg16.pth from the PyTorch command above; the converter is tested by "
        "tests/test_checkpoint.py (with PyTorch installed)",
    ".venv/bin/python -m tinyvgg predict vgg16.npz photo.jpg":
        "needs the converted 528 MB vgg16.npz; predict itself runs below on a trained checkpoint",
    ".venv/bin/python -m tinyvgg train --init-from vgg16.npz --dataset folder --data-dir path/to/train "
    "--lr 0.001 --epochs 5 --out runs/finetune":
        "needs the converted 528 MB vgg16.npz; --init-from is run end to end on small converted "
        "weights by tests/test_foreign_weights.py::test_init_from_fine_tunes_converted_weights_end_to_end",
    ".venv/bin/python benchmarks/bench_layers.py": "a benchmark: minutes of timing",
    ".venv/bin/python benchmarks/bench_train.py": "a benchmark: minutes of timing",
    ".venv/bin/python benchmarks/bench_train_loop.py": "a benchmark: trains on CIFAR-10 for minutes, needs PyTorch",
    ".venv/bin/python experiments/paper_tables.py": "trains a study of 12 networks on CIFAR-10 (146 minutes)",
    ".venv/bin/python benchmarks/bench_distributed.py": "a benchmark: several MPI runs",
    "bash benchmarks/gpu_check.sh": "needs an NVIDIA GPU and CuPy",
    ".venv/bin/mpirun -n 2 .venv/bin/python -m tinyvgg train --model vgg11 --batch-norm --width 0.5 "
    "--epochs 40 --label-smoothing 0.1 --dataset folder --data-dir CIFAR10/train --seed 1 --data-parallel":
        "the one-hour CIFAR-10 recipe (50 minutes of two MPI ranks); its result is committed and quoted "
        "(tests/test_results_quoted.py), and --data-parallel training is tested by tests/test_distributed.py",
}

# The commands run below (test function in the comment), with what is substituted.
CIFAR = (".venv/bin/python -m tinyvgg train --model vgg11 --dataset cifar10 --epochs 30 --batch-size 128 "
         "--lr 0.05 --width 0.5 --batch-norm --out runs/cifar-a")
RUN = {
    # test_gradcheck_commands: as written, and with the --batch-norm its comment adds
    ".venv/bin/python -m tinyvgg gradcheck vgg11 --width 0.0625": "as written",
    # test_training_commands: a small folder for CIFAR-10, 1 epoch, width 1/16, tmp run folder
    CIFAR: "--dataset folder --data-dir TMP --epochs 1 --width 0.0625 --batch-size 16, out in tmp",
    ".venv/bin/python -m tinyvgg train --dataset folder --data-dir path/to/imagenette/train "
    "--input-size 224 ...": "--data-dir TMP; '...' = --epochs 1 --width 0.0625 --limit 8",
    ".venv/bin/python -m tinyvgg train --resume runs/cifar-a --epochs 40": "--epochs 2 (one more), tmp run",
    ".venv/bin/python -m tinyvgg evaluate runs/cifar-a/checkpoint.npz --protocol dense --json":
        "the tmp run's checkpoint",
    ".venv/bin/python -m tinyvgg predict runs/cifar-a/checkpoint.npz photo.jpg":
        "the tmp run's checkpoint and a photo written by the test",
    # test_summary_command
    ".venv/bin/python -m tinyvgg summary vgg16": "as written",
    # test_doctor_command
    ".venv/bin/python -m tinyvgg doctor --model vgg11 --width 0.25 --no-batch-norm --init he "
    "--dataset fashion-mnist --limit 4000": "--steps 6 (it trains about a minute), tmp out",
}


def test_every_readme_command_is_run_or_excluded():
    commands = readme_commands()
    assert commands, "no commands found in README.md"
    unknown = [c for c in commands if c not in RUN and c not in EXCLUDED]
    assert not unknown, ("README commands neither run by tests/test_readme.py nor excluded "
                         f"with a reason: {unknown}")
    stale = [c for c in list(RUN) + list(EXCLUDED) if c not in commands]
    assert not stale, f"tests/test_readme.py lists commands the README no longer has: {stale}"
    assert not set(RUN) & set(EXCLUDED)


def test_readme_python_snippet_runs():
    # The "Layers, by hand" snippet (the backend one needs a GPU and a host_array).
    snippets = [text for lang, text in readme_blocks() if lang == "python" and "Conv2d" in text]
    assert len(snippets) == 1
    exec(compile(snippets[0], "README.md", "exec"), {})


@pytest.mark.parametrize("extra", [[], ["--batch-norm"]], ids=["plain", "batch-norm"])
def test_gradcheck_commands(extra, capsys):
    argv = tinyvgg_argv(".venv/bin/python -m tinyvgg gradcheck vgg11 --width 0.0625") + extra
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASSED" in out


def test_summary_command(capsys):
    assert main(tinyvgg_argv(".venv/bin/python -m tinyvgg summary vgg16")) == 0
    assert "138,357,544" in capsys.readouterr().out  # Table 2's count for D


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """3 classes x 8 RGB 32x32 PNGs whose colour says the class, and a photo.jpg."""
    root = tmp_path_factory.mktemp("readme")
    r = np.random.default_rng(0)
    for k, colour in enumerate([(220, 40, 40), (40, 220, 40), (40, 40, 220)]):
        d = root / "train" / f"class{k}"
        d.mkdir(parents=True)
        for i in range(8):
            img = np.clip(np.array(colour) + r.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    photo = np.clip(np.array((220, 40, 40)) + r.normal(0, 30, (48, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(root / "photo.jpg")
    return root


def test_training_commands(small_folder, tmp_path, capsys):
    run = tmp_path / "runs" / "cifar-a"
    argv = replace_options(tinyvgg_argv(CIFAR), dataset="folder", data_dir=small_folder / "train",
                           epochs=1, width=0.0625, batch_size=16, out=run)
    assert main(argv + ["--no-progress"]) == 0
    assert "test accuracy:" in capsys.readouterr().out

    argv = replace_options(tinyvgg_argv(
        ".venv/bin/python -m tinyvgg train --resume runs/cifar-a --epochs 40"), resume=run, epochs=2)
    assert main(argv + ["--no-progress"]) == 0
    capsys.readouterr()
    assert checkpoint.load(run / "checkpoint.npz").meta["epoch"] == 2

    ck = str(run / "checkpoint.npz")
    argv = tinyvgg_argv(".venv/bin/python -m tinyvgg evaluate runs/cifar-a/checkpoint.npz --protocol dense --json")
    assert main([ck if a == "runs/cifar-a/checkpoint.npz" else a for a in argv]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["top1"] <= 1.0

    argv = tinyvgg_argv(".venv/bin/python -m tinyvgg predict runs/cifar-a/checkpoint.npz photo.jpg")
    argv = [{"runs/cifar-a/checkpoint.npz": ck, "photo.jpg": str(small_folder / "photo.jpg")}.get(a, a)
            for a in argv]
    assert main(argv) == 0
    assert "1. class" in capsys.readouterr().out

    argv = tinyvgg_argv(".venv/bin/python -m tinyvgg train --dataset folder --data-dir "
                        "path/to/imagenette/train --input-size 224 ...")
    argv = replace_options(argv, data_dir=small_folder / "train", epochs=1, width=0.0625, limit=8,
                           out=tmp_path / "runs" / "folder224")
    assert main(argv + ["--no-progress"]) == 0
    assert "test accuracy:" in capsys.readouterr().out


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST is not installed at {FASHION} "
                    "(Debian package dataset-fashion-mnist)")
def test_doctor_command(tmp_path, capsys):
    argv = tinyvgg_argv(".venv/bin/python -m tinyvgg doctor --model vgg11 --width 0.25 --no-batch-norm "
                        "--init he --dataset fashion-mnist --limit 4000")
    assert main(argv + ["--steps", "6", "--out", str(tmp_path / "doctor")]) == 0
    assert "Diagnoses" in capsys.readouterr().out


def test_the_layout_table_lists_every_module_and_the_idea_map_names_real_code():
    """README's Layout section names every module of the package (a module added without
    a row fails here), and every `file`: `name` of the paper-idea table exists there."""
    REPO = README.parent
    readme = README.read_text()
    layout = readme.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in layout.splitlines() if line.startswith("| `tinyvgg/")]
    listed = set()
    for row in rows:
        cell = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", cell)
        base = names[0].rsplit("/", 1)[0]
        listed |= {n if "/" in n else f"{base}/{n}" for n in names}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "tinyvgg").rglob("*.py")}
    assert modules <= listed, f"modules missing from README's Layout table: {sorted(modules - listed)}"
    assert listed <= modules, f"README's Layout table names missing files: {sorted(listed - modules)}"
    idea_rows = layout.split("Each idea of the paper", 1)[1]
    pairs = re.findall(r"`(tinyvgg/[\w/]+\.py)`: ((?:`[\w.\[\]\"-]+`(?:, )?)+)", idea_rows)
    assert len(pairs) >= 11
    for path, names in pairs:
        text = (REPO / path).read_text()
        for name in re.findall(r"`([\w.]+)", names):
            assert re.search(rf"\b(def|class) {name.split('.')[-1]}\b|^{name}\b", text, re.M), \
                f"{path} has no {name}"
