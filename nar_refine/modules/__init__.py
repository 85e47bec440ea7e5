"""Building blocks shared by the nar_refine models."""

from .length_predictor import LengthPredictor, masked_mean  # noqa: F401
from .parallel_transformer import ParallelTransformerStack, uniform_copy  # noqa: F401
