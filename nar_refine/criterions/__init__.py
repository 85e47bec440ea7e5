from . import refine_nat_loss  # noqa: F401
from . import score_matching  # noqa: F401
from . import lanmt_elbo  # noqa: F401
