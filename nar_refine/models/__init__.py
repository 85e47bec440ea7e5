from . import refine_nat  # noqa: F401
