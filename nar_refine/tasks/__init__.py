from . import nar_translation  # noqa: F401
