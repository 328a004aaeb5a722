"""A model's parameters and gradients as views into two flat float32 buffers.

Codecs work on one contiguous vector of d coordinates.  Rather than copying
gradients out of the model and updates back in every step, every parameter's
``.data`` and ``.grad`` are rebound to slices of two flat tensors, so
autograd accumulates straight into the flat gradient and an update of the
flat parameter vector *is* the model update.  Coordinates are ordered as
``model.named_parameters()`` lists them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import NonFiniteError


class FlatModel:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters")
        dtypes = {p.dtype for _, p in named}
        if dtypes != {torch.float32}:
            raise ValueError(f"hpcgrad trains float32 parameters; the model has {dtypes}")
        self.names = [n for n, _ in named]
        self.numels = [p.numel() for _, p in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64)
        count = int(self.offsets[-1])
        device = named[0][1].device
        self.params = torch.empty(count, dtype=torch.float32, device=device)
        self.grads = torch.zeros(count, dtype=torch.float32, device=device)
        with torch.no_grad():
            for (_, p), start, n in zip(named, self.offsets, self.numels):
                view = self.params[start:start + n].view_as(p)
                view.copy_(p.data)
                p.data = view
                p.grad = self.grads[start:start + n].view_as(p)

    @property
    def count(self) -> int:
        return int(self.offsets[-1])

    def zero_grad(self) -> None:
        self.grads.zero_()

    def check_grads_finite(self) -> None:
        """Raise :class:`NonFiniteError` naming the tensors with NaN/Inf gradients."""
        # One reduction without a d-sized temporary (``isfinite(grads).all()`` allocates a
        # bool per coordinate: 387 ms against 20 ms at d = 12.6M on one loaded core).  NaN
        # and Inf propagate through a sum, so a finite sum means finite terms; a sum that
        # overflowed from finite terms falls through to the exact check below.
        if bool(torch.isfinite(self.grads.sum())):
            return
        bad = [name for name, start, n in zip(self.names, self.offsets, self.numels)
               if not bool(torch.isfinite(self.grads[start:start + n]).all())]
        if not bad:
            return
        raise NonFiniteError("non-finite gradient (NaN or Inf) in tensor(s): " + ", ".join(bad))
