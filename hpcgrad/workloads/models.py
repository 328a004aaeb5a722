"""Models for ``--model``: built from the settings and the dataset's input shape.

* ``mlp`` (the default): two hidden layers of ``--hidden`` units with ReLU; images are
  flattened first.
* ``cnn``: the small CNN of the S3GD-MV authors' MNIST experiments: conv 5x5 (32) - ReLU -
  max-pool 2, conv 5x5 (64) - ReLU - max-pool 2, fc 512 - ReLU, fc classes. 582,026
  parameters on 1 x 28 x 28 inputs with 10 classes.
* ``resnet20``, ``resnet56``: the CIFAR ResNets of He et al. (2016), 3 stages of 16/32/64
  channels with (depth - 2) / 6 basic blocks each, global average pooling and a linear
  layer; option-A shortcuts (stride-2 subsampling and zero-padded channels: no parameters),
  as in the paper's CIFAR experiments; 0.27 M and 0.85 M parameters. ``--batch-norm``:
  ``batch-stats`` (default) normalises with each batch's statistics only
  (``track_running_stats=False``): the model has no buffers, so replicas stay bit-identical
  (hpcgrad synchronises parameters, not buffers); ``running`` is PyTorch's usual batch norm
  with running statistics, kept per replica and never synchronised (they diverge; used only
  in ``eval()`` mode, which the runtime does not switch to); ``none`` drops the normalisation
  (convolutions get biases, and the last convolution of every block starts at zero so that
  the deep net starts as its shortcut path).
* ``embedding-bag``: a text classifier, ``nn.EmbeddingBag`` (mean of the token embeddings of
  ``--hidden`` dimensions, padding id 0 excluded) then a linear layer.

Any ``torch.nn.Module`` taking a batch of ``train_x`` rows and returning logits can be trained
instead through :func:`hpcgrad.training.runtime.train` (``model=...``).

Large evaluation batches (the runtime evaluates the whole test set in one call) run through
the convolutional models in chunks of :data:`EVAL_CHUNK` examples to bound memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .catalog import BATCH_NORMS, MODEL_INPUTS, MODEL_NEEDS, MODELS
from ..errors import ConfigError

#: Examples per forward pass when a convolutional model runs without autograd.
EVAL_CHUNK = 1024


def mlp(num_features: int, hidden: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class _ChunkedEval(nn.Module):
    """``forward`` without autograd on more than EVAL_CHUNK examples runs in chunks."""

    def forward(self, x):
        if torch.is_grad_enabled() or len(x) <= EVAL_CHUNK:
            return self.logits(x)
        return torch.cat([self.logits(part) for part in x.split(EVAL_CHUNK)])

    def logits(self, x):  # pragma: no cover - abstract
        raise NotImplementedError


class SmallCNN(_ChunkedEval):
    """conv(32, 5) relu pool2, conv(64, 5) relu pool2, fc 512 relu, fc classes."""

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise ConfigError(f"model cnn needs images of at least 16x16 (two 5x5 "
                              f"convolutions and two 2x2 poolings), got {height}x{width}")
        self.conv1 = nn.Conv2d(channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * h * w, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def logits(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def _norm(channels: int, batch_norm: str) -> nn.Module:
    if batch_norm == "none":
        return nn.Identity()
    return nn.BatchNorm2d(channels, track_running_stats=batch_norm == "running")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; option-A shortcut (subsample, zero-pad channels)."""

    def __init__(self, cin: int, cout: int, stride: int, batch_norm: str):
        super().__init__()
        bias = batch_norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = _norm(cout, batch_norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = _norm(cout, batch_norm)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(_ChunkedEval):
    """ResNet-(6n+2) for CIFAR (He et al. 2016, section 4.2), option-A shortcuts."""

    def __init__(self, depth: int, input_shape=(3, 32, 32), num_classes: int = 10,
                 batch_norm: str = "batch-stats"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2, got {depth}")
        if batch_norm not in BATCH_NORMS:
            raise ConfigError(f"unknown batch-norm {batch_norm!r}; choose one of: "
                              f"{', '.join(BATCH_NORMS)}")
        n = (depth - 2) // 6
        bias = batch_norm == "none"
        self.conv = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=bias)
        self.bn = _norm(16, batch_norm)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1, batch_norm))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if batch_norm == "none":
            for block in blocks:
                nn.init.zeros_(block.conv2.weight)

    def logits(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class EmbeddingBagClassifier(nn.Module):
    """Mean of the token embeddings (padding id 0 left out), then a linear layer."""

    def __init__(self, vocab_size: int, dim: int, num_classes: int):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.fc = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.embedding.weight.uniform_(-0.5, 0.5)
            self.embedding.weight[0].zero_()
            self.fc.weight.uniform_(-0.5, 0.5)
            self.fc.bias.zero_()

    def forward(self, tokens):
        return self.fc(self.embedding(tokens))


def check_inputs(model: str, data) -> None:
    """ConfigError unless ``model`` takes ``data``'s inputs (naming both)."""
    if model not in MODEL_INPUTS:
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    if data.kind not in MODEL_INPUTS[model]:
        raise ConfigError(f"model {model} needs {MODEL_NEEDS[MODEL_INPUTS[model]]}, but dataset "
                          f"{data.name} has {data.describe()}")


def build(config, data) -> nn.Module:
    """The model ``config.model`` for ``data`` (initialised from torch's global RNG)."""
    name = config.model
    check_inputs(name, data)
    if name == "mlp":
        net = mlp(data.num_features, config.hidden, data.num_classes)
        return net if data.kind == "vector" else nn.Sequential(nn.Flatten(), *net)
    if name == "cnn":
        return SmallCNN(data.input_shape, data.num_classes)
    if name in ("resnet20", "resnet56"):
        return CifarResNet(int(name[6:]), data.input_shape, data.num_classes,
                           config.batch_norm or "batch-stats")
    if name == "embedding-bag":
        if data.vocab_size < 1:
            raise ConfigError(f"model embedding-bag needs the dataset's vocabulary size; "
                              f"dataset {data.name} has vocab_size {data.vocab_size}")
        return EmbeddingBagClassifier(data.vocab_size, config.hidden, data.num_classes)
    raise AssertionError(name)  # pragma: no cover - check_inputs knows every model
