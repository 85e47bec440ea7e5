"""nar_refine: non-autoregressive NMT with latent variables and iterative refinement, as a
fairseq plugin (``--user-dir path/to/nar_refine``)."""

from nar_refine import compat  # noqa: F401  (must run before fairseq loads checkpoints)
from nar_refine import dictionaries, input_checks
from nar_refine.errors import NARConfigError, install_excepthook
from nar_refine import criterions, models, tasks  # noqa: F401  (registers with fairseq)

__version__ = "0.2.0"
__all__ = ["NARConfigError"]

install_excepthook()
input_checks.install()
dictionaries.install()
