"""``--dataset digits``: scikit-learn's bundled handwritten digits, split once for all runs,
the settings that go with it, and the one-line error when scikit-learn is missing (a real
interpreter in which ``import sklearn`` fails).  Training under mpiexec:
tests/workloads/test_digits_mpi.py."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcgrad.errors import ConfigError
from hpcgrad.training.config import TrainConfig
from hpcgrad.workloads import datasets, footprint

ROOT = Path(__file__).resolve().parents[2]


def config(**settings):
    return TrainConfig(dataset="digits", **settings).resolved()


def test_digits_are_the_bundled_scans_split_a_fifth_of_each_class_to_test():
    from sklearn.datasets import load_digits

    data = datasets.load(config())
    assert data.train_x.shape == (1438, 1, 8, 8) and data.test_x.shape == (359, 1, 8, 8)
    assert data.kind == "image" and data.num_classes == 10 and data.name == "digits"
    bunch = load_digits()
    counts = np.bincount(bunch.target, minlength=10)
    held_out = np.bincount(data.test_y.numpy(), minlength=10)
    np.testing.assert_array_equal(held_out, [round(0.2 * n) for n in counts])
    # normalised with the training set's mean and standard deviation of the 0..16 grey levels
    assert abs(float(data.train_x.mean())) < 1e-5
    assert float(data.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    # the images are the bundled ones: un-normalising recovers the integer grey levels
    test = datasets.digits_split(bunch.target)
    raw = bunch.images[~test].astype(np.float64)
    scale = raw.std()
    np.testing.assert_allclose(data.train_x[:, 0].double().numpy() * scale + raw.mean(), raw,
                               atol=1e-4)


def test_the_split_is_the_same_for_every_seed_and_examples_takes_the_first_n():
    a, b = datasets.load(config(seed=0)), datasets.load(config(seed=5))
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    small = datasets.load(config(examples=100))
    assert torch.equal(small.train_x, a.train_x[:100]) and torch.equal(small.test_y, a.test_y)
    with pytest.raises(ConfigError, match="examples 5000 is more than the 1438 training "
                                          "examples of digits$"):
        datasets.load(config(examples=5000))


@pytest.mark.parametrize("settings, message", [
    (dict(model="cnn"), "model cnn needs images of at least 16x16.*dataset digits has 1x8x8 "
                        "images: use --model mlp or resnet20"),
    (dict(data_path="/tmp"), "data-path: --dataset digits reads no files"),
    (dict(features=64), "dataset digits has its own"),
    (dict(model="embedding-bag"), "model embedding-bag needs token ids"),
])
def test_bad_settings_with_digits_are_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        config(**settings)


def test_the_memory_estimate_knows_digits_shape():
    assert footprint.parameters(config(hidden=32)) == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10


def test_without_scikit_learn_the_run_stops_with_one_line_naming_the_extra():
    # A real interpreter in which `import sklearn` fails (sys.modules[name] = None is how
    # Python itself marks a module as unimportable); the CLI must say what to install.
    code = ("import sys; sys.modules['sklearn'] = None; from hpcgrad.cli import main; "
            "sys.exit(main(['train', '--dataset', 'digits']))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "scikit-learn is not installed: pip install 'hpcgrad[digits]'" in lines[0]
