"""S3GD-MV: sparse signSGD with majority vote (Park & Lee, ISIT 2023).

Worker, per parameter tensor l (a segment of the flat vector):
    a <- rho*a + g            residual (rho = 1 by default; rho = 0: a = g, no memory)
    pick the K_l = ceil(sparsity * numel_l) entries of largest |a|
    send their positions and signs; a[picked] <- 0
Server:
    v = sum over workers of the ternary messages (+1 / -1 at picked positions)
    direction sign(v), sign(0) = 0: unvoted and tied coordinates do not move
Every rank:
    x <- x - lr*(direction + wd*x)    (momentum > 0: PyTorch SGD on the direction)

Wire (``docs/wire-format.md``): uplink ``sparse-sign`` (positions coded raw,
as a bitmap or as Golomb-Rice gaps, whichever is shortest for the message,
then one sign bit per entry); downlink ternary over the union of the workers'
supports, ``sparse-sign`` or ``base3``, whichever is shorter.

K (:mod:`hpcgrad.compression.selection`'s K rules): ``--sparsity s`` gives
K_l = ceil(s * numel_l) (``k_by_fraction``).  ``--k-per-worker auto`` gives
K_l = ceil(c * numel_l / M) with c = ``--votes-per-coordinate`` (``k_by_votes``): each
coordinate gets about c votes per step.  The paper sets K from M and d; its
formula was not readable, so this rule is **our reading**.

An entry of ``a`` that is exactly 0 is never sent (sign(0) = 0), so with
sparsity 1 and rho = 0 this is signSGD-MV with tie rule ``zero``, bit for bit.

The residual a is a :class:`hpcgrad.compression.feedback.Residual` (the memory ef-sgd
uses).  Bodies are the compressors' (:mod:`hpcgrad.compression.compressors`): the uplink is
a :class:`~hpcgrad.compression.compressors.TopKSigns` (the shared ``TopKSelector``, then
``sparse-sign``), which the server also reads into its merge rows; the downlink, the vote
the server merged, a :class:`~hpcgrad.compression.compressors.SparseSigns` allowed
``base3``.
"""

from __future__ import annotations

import numpy as np

from ..wire.codecs import BASE3, SPARSE_SIGN
from ..options import Option
from ..kernels import cpu, sparse
from ..kernels.generic import packed_length
from ..compression.compressors import SPARSITY, SparseSigns, TopKSigns
from ..compression.feedback import Residual, residual_of
from ..compression.on_device import SignTopKStep, on_device
from ..compression.fused_selection import CompensatedTopK, NoUpdate, ResidualUpdate
from ..compression.selection import SELECTIONS, k_by_fraction, k_by_votes
from ..wire import round_up
from .base import Algorithm, MomentumSGD, f32
from .step import decode_into_rows

#: ``coding_up`` / ``coding_down`` values in the log.
CODING_BASE3 = 3

K_PER_WORKER = Option(
    "k_per_worker", str, None, choices=("auto",),
    unknown="k-per-worker: only 'auto' is understood (K = c*d/M), got {value!r}; use "
            "--sparsity for a ratio",
    help="auto: K_l = ceil(C*numel_l/M) for M workers, C = --votes-per-coordinate (our "
         "reading of the paper's rule); overrides --sparsity")
VOTES_PER_COORDINATE = Option("votes_per_coordinate", float, 1.0, bounds="> 0", metavar="C",
                              help="C of --k-per-worker auto")
RESIDUAL = Option("residual", float, None, bounds="[0, 1]", label="residual (rho)",
                  metavar="RHO",
                  help="residual decay rho of a <- rho*a + g, in [0, 1]; 0 = no residual")
SELECTION = Option("selection", str, "exact", choices=SELECTIONS,
                   help="top-K rule: exact (partition, the reference) or threshold (sampled "
                        "threshold refined to within 10% of K; faster, K varies; ours)")


def k_per_tensor(config, numels, workers) -> list[int]:
    """K_l for each tensor, by the K rule the settings choose (see the module docstring)."""
    if config.k_per_worker == "auto":
        return k_by_votes(numels, config.votes_per_coordinate, workers, "s3gd-mv")
    return k_by_fraction(numels, config.sparsity)


class S3GDMV(Algorithm):
    name = "s3gd-mv"
    summary = "signs of each worker's top-K entries, majority vote, coded positions"
    order = 20
    docs = "docs/algorithms/s3gd-mv.md"
    options = (SPARSITY, K_PER_WORKER, VOTES_PER_COORDINATE, RESIDUAL, SELECTION)
    hints = {"ef-sgd": "s3gd-mv keeps its own gradient residual, --residual"}
    # A sign step: small lr (authors: 1e-3, no momentum).
    defaults = {"lr": 0.001, "momentum": 0.0, "sparsity": 0.01, "residual": 1.0}
    uplink = downlink = SPARSE_SIGN
    variable_length = True
    step_fields = {"nnz_up": (True, np.int64), "nnz_down": (False, np.int64),
                   "union_size": (False, np.int64), "coding_up": (True, np.uint8),
                   "coding_down": (False, np.uint8)}
    state_names = ("residual", "sgd.buffer")
    residual = residual_of("memory")

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        d = num_params
        self.ks = k_per_tensor(config, self.segments, num_workers)
        self.rho = f32(config.residual)
        self.lr, self.wd = f32(config.lr), f32(config.weight_decay)
        self.up = TopKSigns(config, self.segments, self.offsets, self.ks, config.selection,
                            band=0.1)
        # The most entries one uplink may carry: K, or K(1 + band) for threshold selection.
        self.capacity = self.up.capacity
        self.device_step = SignTopKStep(self.up, config.selection)  # CuPy gradients
        # Worker state (rho = 0: none, a = g), allocated on first use.
        self.memory = Residual(config.residual) if self.rho else None
        # Server: every worker's decoded entries, and the vote result.
        self._rows_pos = self._rows_neg = None
        self._counts = np.zeros(num_workers, dtype=np.int64)
        self._heads = np.zeros(num_workers, dtype=np.int64)
        self._coding_up = np.zeros(num_workers, dtype=np.uint8)
        self._union = np.zeros(1, dtype=np.int64)
        # Every rank: the decoded downlink, and what the update needs.
        down_capacity = min(d, num_workers * self.capacity)
        self.down = SparseSigns(config, self.segments, self.offsets, down_capacity, base3=True)
        self.direction_pos = np.zeros(down_capacity, dtype=np.int64)
        self.direction_neg = np.zeros(down_capacity, dtype=np.uint8)
        self.sgd = (MomentumSGD(d, config.lr, config.momentum, config.weight_decay)
                    if config.momentum else None)
        self._planes = self._direction = None
        sparse.warm_up()
        cpu.warm_up()

    def downlink_codecs(self):
        return self.down.codecs()

    def metadata(self) -> dict:
        return {"segments": self.segments, "k_per_segment": self.ks,
                "selection": self.config.selection, "uplink_capacity_entries": self.capacity}

    # ---------------------------------------------------------------- worker
    #: Worker steps through the fused kernels (issue 19); False: the reference path, the
    #: same bytes (bench micro times both).
    fused = True
    #: Residual + exact selection + forgetting in one pass (made on the first worker step).
    _fused = None

    def worker_step(self, ctx, grad, uplink):
        if on_device(grad):
            return self.device_step(self.memory, grad, uplink)
        up = self.up
        if self.fused and self.config.selection == "exact" and isinstance(grad, np.ndarray):
            if self._fused is None:
                self._fused = CompensatedTopK(up.selector)
            update = NoUpdate(grad) if self.memory is None else ResidualUpdate(self.memory, grad)
            up.nnz = self._fused.select(update, up.positions, up.negative,
                                        forget=self.memory is not None)
            up.write_entries(up.positions, up.negative, up.nnz, uplink)
            return
        a = grad if self.memory is None else self.memory.compensate(grad)
        up.compress(ctx, a, uplink)
        if self.memory is not None:
            self.memory.forget(up.positions, up.nnz)

    # ---------------------------------------------------------------- server
    def server_step(self, ctx, uplinks, downlink):
        m = self.num_workers
        if self._rows_pos is None:
            self._rows_pos = np.zeros((m, self.capacity), dtype=np.int64)
            self._rows_neg = np.zeros((m, self.capacity), dtype=np.uint8)
        decode_into_rows(uplinks, self.up.decode_entries, (self._rows_pos, self._rows_neg),
                         self._counts)
        coding_up = self._coding_up
        for w in range(m):
            coding_up[w] = uplinks.header(w).flags & 0xFF
        nnz = sparse.merge_vote(self._rows_pos, self._rows_neg, self._counts, self._heads,
                                self._union, self.direction_pos, self.direction_neg)
        sent = self.down.write_entries(self.direction_pos, self.direction_neg, nnz, downlink)
        self.step_stats = {
            "nnz_up": self._counts, "nnz_down": nnz, "union_size": int(self._union[0]),
            "coding_up": coding_up,
            "coding_down": CODING_BASE3 if sent.codec == BASE3.id else sent.flags & 0xFF}

    # ---------------------------------------------------------- every rank
    def decode(self, ctx, downlink):
        """The direction's non-zero entries: ``nnz`` of ``direction_pos``/``direction_neg``."""
        header = downlink.header
        return self.down.decode_entries(downlink.padded_body[: header.body_length], header,
                                        self.direction_pos, self.direction_neg,
                                        what=f"downlink message at step {ctx.step}")

    def apply(self, ctx, nnz):
        d, params = self.num_params, ctx.params
        pos, neg = self.direction_pos, self.direction_neg
        if on_device(params):
            return self.device_step.apply(self, params, nnz)
        if self.sgd is not None:
            if self._direction is None:
                self._direction = np.zeros(d, dtype=np.float32)
            self._direction[:] = 0
            sparse.scatter_direction(pos, neg, nnz, self._direction)
            self.sgd.step(params, self._direction)
        elif self.wd == 0:
            sparse.sparse_sign_update(params, pos, neg, nnz, self.lr)
        else:  # the dense fused kernel signum-mv uses: the same float32 arithmetic
            if self._planes is None:
                stride = round_up(packed_length(d))
                self._planes = np.zeros(2 * stride + 8, dtype=np.uint8)
                self._stride = stride
            self._planes[:] = 0
            nonzero, negative = self._planes[: self._stride], self._planes[self._stride:]
            sparse.ternary_planes(pos, neg, nnz, nonzero, negative)
            cpu.apply_ternary_update(params, nonzero, negative, self.lr, self.wd)
