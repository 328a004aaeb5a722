"""Models (hpcgrad/workloads/models.py): sizes, inputs, batch norm without buffers, and every model and
dataset pair training under ``mpiexec -n 5`` on small files in the real formats."""

import re

import pytest
import torch

from hpcgrad.workloads import datasets, models
from hpcgrad import workloads
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError
from hpcgrad.training.flat import FlatModel

from mpirun import run_mpi, train_several
from workload_files import write_ag_news, write_cifar10, write_cifar100, write_mnist


def count(model):
    return sum(p.numel() for p in model.parameters())


def image_data(shape=(1, 28, 28), classes=10, n=8):
    return datasets.Dataset(torch.randn(n, *shape), torch.arange(n) % classes,
                            torch.randn(4, *shape), torch.arange(4) % classes, classes,
                            name="test-images")


def build(data, **settings):
    return models.build(TrainConfig(**settings), data)


def test_cnn_has_the_papers_582026_parameters():
    # conv 1->32 5x5, conv 32->64 5x5, fc 1024->512, fc 512->10
    assert count(models.SmallCNN((1, 28, 28), 10)) == 32 * 25 + 32 + 64 * 32 * 25 + 64 \
        + 1024 * 512 + 512 + 512 * 10 + 10 == 582_026
    model = build(image_data(), model="cnn")
    assert count(model) == 582_026 and model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    cifar = build(image_data((3, 32, 32)), model="cnn")
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="at least 16x16"):
        build(image_data((1, 12, 12)), model="cnn")


@pytest.mark.parametrize("depth, params", [(20, 269_722), (56, 853_018)])
def test_cifar_resnets_have_their_sizes_and_no_buffers(depth, params):
    model = models.CifarResNet(depth)
    assert count(model) == params  # 0.27M and 0.85M (He et al. 2016, table 6)
    assert list(model.buffers()) == []  # batch statistics only: nothing to diverge
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    running = models.CifarResNet(depth, batch_norm="running")
    assert count(running) == params and len(list(running.buffers())) > 0
    bare = models.CifarResNet(depth, batch_norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bare.modules())
    assert torch.isfinite(bare(torch.randn(2, 3, 32, 32))).all()


def test_resnet_blocks_use_parameter_free_option_a_shortcuts():
    model = models.CifarResNet(20)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 and all(m.kernel_size == (3, 3) for m in convs)  # no 1x1 conv
    block = model.blocks[3]  # first block of stage 2: 16 -> 32 channels, stride 2
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.bn2.bias.zero_()
        out = block(x)
    # out = relu(0 + shortcut): the subsampled input, zero-padded by 8 channels each side
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], torch.relu(x[:, :, ::2, ::2]))
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_resnet_batch_norm_option_reaches_the_model():
    data = image_data((3, 32, 32))
    model = build(data, model="resnet20", batch_norm="none")
    assert count(model) == 269_034 and not list(model.buffers())
    assert count(build(data, model="resnet56")) == 853_018


def test_large_evaluation_batches_run_in_chunks_with_the_same_result():
    model = models.SmallCNN()
    x = torch.randn(models.EVAL_CHUNK + 37, 1, 28, 28)
    with torch.no_grad():
        whole = torch.cat([model.logits(x[:600]), model.logits(x[600:])])
        chunked = model(x)
    assert chunked.shape == (len(x), 10) and torch.allclose(whole, chunked, atol=1e-5)


def test_embedding_bag_averages_the_tokens_without_padding():
    model = models.EmbeddingBagClassifier(10, 4, 3)
    assert count(model) == 10 * 4 + 4 * 3 + 3
    tokens = torch.tensor([[2, 3, 0, 0], [5, 0, 0, 0]])
    emb = model.embedding.weight
    expect = torch.stack([(emb[2] + emb[3]) / 2, emb[5]]) @ model.fc.weight.T + model.fc.bias
    assert torch.allclose(model(tokens), expect, atol=1e-6)
    flat = FlatModel(model)  # gradients land in the flat buffer, the padding row gets none
    model(tokens).sum().backward()
    grad = flat.grads[:40].view(10, 4)
    assert grad[2].abs().sum() > 0 and not grad[0].any() and not grad[7].any()


def test_default_model_is_the_old_mlp_bit_for_bit():
    data = workloads.synthetic(0, train=64, test=8)
    torch.manual_seed(0)
    built = build(data)
    torch.manual_seed(0)
    old = workloads.mlp(32, 128, 10)
    assert [n for n, _ in built.named_parameters()] == [n for n, _ in old.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(built.parameters(), old.parameters()))


def test_mlp_flattens_images():
    model = build(image_data((3, 8, 8)), hidden=16)
    assert model(torch.randn(5, 3, 8, 8)).shape == (5, 10)
    assert count(model) == 192 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10


@pytest.mark.parametrize("model, data, message", [
    ("cnn", workloads.synthetic(0, train=8, test=2), "model cnn needs images .*but dataset "
                                                     "synthetic has 32-feature vectors"),
    ("embedding-bag", image_data(), "model embedding-bag needs token ids .*test-images has "
                                    "1x28x28 images"),
    ("mlp", datasets.Dataset(torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4).long(),
                             torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1).long(), 2,
                             vocab_size=5),
     "model mlp needs feature vectors or images, but dataset custom has token-id sequences"),
    ("transformer", image_data(), "unknown model 'transformer'"),
])
def test_a_model_that_does_not_fit_the_data_names_both(model, data, message):
    with pytest.raises(ConfigError, match=message):
        models.build(TrainConfig(model=model), data)


def test_every_built_model_flattens_into_float32_parameters():
    text = datasets.Dataset(torch.randint(0, 50, (8, 6)), torch.arange(8) % 4,
                            torch.randint(0, 50, (2, 6)), torch.arange(2), 4, vocab_size=50)
    for name, data in (("mlp", image_data()), ("cnn", image_data()),
                       ("resnet20", image_data((3, 32, 32))), ("embedding-bag", text)):
        model = build(data, model=name, hidden=8)
        flat = FlatModel(model)
        flat.zero_grad()
        torch.nn.functional.cross_entropy(model(data.train_x), data.train_y).backward()
        assert flat.count == count(model) and bool(flat.grads.abs().sum() > 0), name


# --------------------------------------------------------------------------- under mpiexec

QUICK = ["--iterations", "3", "--eval-every", "0", "--flush-every", "3", "--batch-size", "4"]


#: The one 5-rank job of the runs below; pytest-timeout counts it against the first test.
SETUP_TIMEOUT = 400


def _cnn_mnist(tmp_path):
    write_mnist(tmp_path / "mnist", train=96, test=16, gz=True)
    return ["--model", "cnn", "--dataset", "mnist", "--data-path", str(tmp_path / "mnist"),
            "--partition", "dirichlet:5"]


def _resnet20_cifar10(tmp_path):
    write_cifar10(tmp_path / "c10", per_batch=8, test=8)
    return ["--model", "resnet20", "--dataset", "cifar10", "--data-path",
            str(tmp_path / "c10"), "--algorithm", "fp32-ps"]


def _resnet56_cifar100(tmp_path):
    write_cifar100(tmp_path / "c100", train=40, test=4)
    return ["--iterations", "2", "--eval-every", "0", "--batch-size", "2", "--model",
            "resnet56", "--dataset", "cifar100", "--data-path", str(tmp_path / "c100"),
            "--batch-norm", "none", "--partition", "classes:30"]


def _embedding_bag_ag_news(tmp_path):
    write_ag_news(tmp_path / "ag", train=64, test=16)
    return ["--model", "embedding-bag", "--dataset", "ag-news", "--data-path",
            str(tmp_path / "ag"), "--hidden", "16", "--vocab-size", "40"]


def _mlp_synthetic(tmp_path):
    return ["--model", "mlp", "--features", "1x28x28", "--examples", "64", "--hidden", "8",
            "--classes", "4"]


#: name -> (function writing the run's data files, returning its options; QUICK first?)
RUNS5 = {"cnn": (_cnn_mnist, True), "resnet20": (_resnet20_cifar10, True),
         "resnet56": (_resnet56_cifar100, False), "embedding-bag": (_embedding_bag_ag_news, True),
         "mlp": (_mlp_synthetic, True)}


@pytest.fixture(scope="module")
def trained5(tmp_path_factory):
    """name -> finished ``hpcgrad train`` on 5 ranks of every run of RUNS5, all one after
    another in one job (tests/mpirun.py's ``train_several``: the ranks start once)."""
    runs = {}
    for name, (prepare, quick) in RUNS5.items():
        work = tmp_path_factory.mktemp(name)
        runs[name] = (work, ["--log", str(work / "run.h5"), *(QUICK if quick else ()),
                             *prepare(work)])
    return train_several(5, runs, timeout=SETUP_TIMEOUT - 60)


def _summary(result):
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"4 workers, ([\d,]+) parameters, 3 iterations", result.stdout)
    assert match, result.stdout
    assert re.search(r"final eval: loss \d", result.stdout), result.stdout
    return int(match.group(1).replace(",", ""))


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_cnn_trains_on_mnist_files_with_a_dirichlet_partition(trained5):
    assert _summary(trained5["cnn"]) == 582_026


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_resnet20_trains_on_cifar10_batches(trained5):
    assert _summary(trained5["resnet20"]) == 269_722


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_resnet56_trains_two_steps_on_cifar100_without_batch_norm(trained5):
    result = trained5["resnet56"]
    assert result.returncode == 0, result.stderr[-3000:]
    # no batch-norm parameters, conv biases instead, and an fc with 100 outputs
    assert f"{850_986 - 650 + 6500:,} parameters" in result.stdout


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_embedding_bag_trains_on_ag_news_csv(trained5):
    assert _summary(trained5["embedding-bag"]) == 40 * 16 + 16 * 4 + 4


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_mlp_trains_on_image_shaped_synthetic_data(trained5):
    assert _summary(trained5["mlp"]) == 784 * 8 + 8 + 8 * 8 + 8 + 8 * 4 + 4


def test_missing_dataset_files_stop_every_rank_naming_the_file(tmp_path):
    write_mnist(tmp_path / "mnist", train=32, test=8)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").unlink()
    result = run_mpi(3, ["train", "--log", str(tmp_path / "run.h5"), *QUICK, "--model", "cnn",
                         "--dataset", "mnist", "--data-path", str(tmp_path / "mnist")],
                     timeout=90)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("loading the dataset failed on rank 0: dataset mnist: expected "
                               "the file train-labels-idx1-ubyte") == 1, result.stderr
