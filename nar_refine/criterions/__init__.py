from . import refine_nat_loss  # noqa: F401
