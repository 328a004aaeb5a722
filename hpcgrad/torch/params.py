"""A user's model as one flat float32 parameter vector and one flat float32 gradient.

The exchange works on one contiguous vector of d coordinates, in the order
``model.named_parameters()`` lists the parameters that require a gradient (the order
``hpcgrad train``'s :class:`~hpcgrad.training.flat.FlatModel` uses, so the two send the same
bytes).  Parameters that do not require a gradient are not exchanged and stay as the user
set them.

* A float32 parameter's ``.data`` becomes a view of the flat vector (no copy): an update of the
  vector is the model's update, and :meth:`FlatParameters.bind_grads` points its ``.grad`` at
  the flat gradient so that autograd accumulates straight into it.
* A float16 / bfloat16 parameter (a model converted with ``.half()``) keeps its own storage;
  the flat vector holds its fp32 master copy.  Its gradient is cast to fp32 when
  :meth:`collect_grads` copies it in, and the updated master copy is cast back by
  :meth:`push_params` (the usual mixed-precision recipe: updates accumulate in fp32).

A gradient the user's code left elsewhere (``zero_grad(set_to_none=True)`` then backward
allocates a new tensor) is copied in by :meth:`collect_grads`; one that is ``None`` counts
as zero, and is reported so that the ranks can check they agree on which are ``None``.
"""

from __future__ import annotations

import numpy as np
import torch


class FlatParameters:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameter that requires a gradient")
        odd = [n for n, p in named if not p.is_floating_point()]
        if odd:
            raise ValueError(f"parameter {odd[0]} is not a floating-point tensor")
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise ValueError(f"the model's parameters are on several devices ({devices}); "
                             "hpcgrad.torch needs one device per rank")
        self.names = [n for n, _ in named]
        self.tensors = [p for _, p in named]
        self.numels = [p.numel() for p in self.tensors]
        self.shapes = [tuple(p.shape) for p in self.tensors]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64)
        device = devices.pop()
        self.params = torch.empty(self.count, dtype=torch.float32, device=device)
        self.grads = torch.zeros(self.count, dtype=torch.float32, device=device)
        #: Indices of the parameters kept in another precision (fp32 master copies here).
        self.cast = [i for i, p in enumerate(self.tensors) if p.dtype != torch.float32]
        with torch.no_grad():
            for i, p in enumerate(self.tensors):
                view = self.param_view(i)
                view.copy_(p.data)
                if p.dtype == torch.float32:
                    p.data = view
        self.bind_grads()

    @property
    def count(self) -> int:
        return int(self.offsets[-1])

    def param_view(self, i: int) -> torch.Tensor:
        start = int(self.offsets[i])
        return self.params[start:start + self.numels[i]].view(self.shapes[i])

    def grad_view(self, i: int) -> torch.Tensor:
        start = int(self.offsets[i])
        return self.grads[start:start + self.numels[i]].view(self.shapes[i])

    def bind_grads(self) -> None:
        """Zero the flat gradient; float32 parameters' ``.grad`` become views of it (others
        ``None``), so the next backward pass accumulates into it."""
        self.grads.zero_()
        for i, p in enumerate(self.tensors):
            p.grad = self.grad_view(i) if p.dtype == torch.float32 else None

    def collect_grads(self) -> tuple:
        """Make the flat gradient hold every parameter's ``.grad`` (fp32); return the indices
        of the parameters whose ``.grad`` is ``None`` (their coordinates are 0)."""
        missing = []
        for i, p in enumerate(self.tensors):
            g, slot = p.grad, self.grad_view(i)
            if g is None:
                slot.zero_()
                missing.append(i)
            elif g.data_ptr() != slot.data_ptr() or g.dtype != torch.float32:
                slot.copy_(g.to_dense() if g.is_sparse else g)
        return tuple(missing)

    def first_nonfinite(self) -> int | None:
        """Index of the first parameter with a NaN or Inf in its gradient, or None."""
        if bool(torch.isfinite(self.grads).all()):
            return None
        return next(i for i in range(len(self.tensors))
                    if not bool(torch.isfinite(self.grad_view(i)).all()))

    def push_params(self) -> None:
        """Lower-precision parameters take their updated fp32 master copies (rounded)."""
        with torch.no_grad():
            for i in self.cast:
                self.tensors[i].data.copy_(self.param_view(i))

    def pull_params(self) -> None:
        """The master copies take the lower-precision parameters (after a torch optimizer
        updated those directly)."""
        with torch.no_grad():
            for i in self.cast:
                self.param_view(i).copy_(self.tensors[i].data)

    def hand_grads(self, mean) -> None:
        """Every parameter's ``.grad`` <- its part of ``mean`` (d float32): what the user's
        torch optimizer then steps with."""
        self.grads.copy_(torch.as_tensor(mean, device=self.grads.device))
        for i, p in enumerate(self.tensors):
            view = self.grad_view(i)
            p.grad = view if p.dtype == torch.float32 else view.to(p.dtype)

    def digests(self) -> list[str]:
        """A short SHA-256 of every parameter's bytes (the check that ranks start equal)."""
        import hashlib
        host = self.params.detach().cpu().numpy()
        return [hashlib.sha256(host[int(s):int(s) + n].tobytes()).hexdigest()[:16]
                for s, n in zip(self.offsets, self.numels)]
