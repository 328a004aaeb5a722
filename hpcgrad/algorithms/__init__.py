"""Algorithm registry: ``--algorithm NAME`` -> the class implementing it.

One module per algorithm; each documents its worker step, server step and
wire format at the top.
"""

from .allreduce import AllreduceSGD
from .base import Algorithm
from .dense_ps import FP16PS, FP32PS
from .ef_sgd import ErrorFeedbackSGD
from .qsgd import DQSGD, QSGD
from .s3gd_mv import S3GDMV
from .signum_mv import SignumMV
from .topk import TopKEF

REGISTRY = {cls.name: cls for cls in (SignumMV, S3GDMV, TopKEF, QSGD, DQSGD, ErrorFeedbackSGD,
                                      FP32PS, FP16PS, AllreduceSGD)}


def create(config, num_params: int, num_workers: int, segments=None) -> Algorithm:
    """The algorithm object of ``config``; ``segments`` are the parameter tensors' sizes."""
    return REGISTRY[config.algorithm](config, num_params, num_workers, segments)


__all__ = ["Algorithm", "REGISTRY", "create"]
