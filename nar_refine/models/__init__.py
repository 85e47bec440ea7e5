from . import refine_nat  # noqa: F401
from . import inference_network  # noqa: F401
from . import lanmt  # noqa: F401
