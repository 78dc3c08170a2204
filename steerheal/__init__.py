"""steerheal: steer a model along a persona axis, then heal the steered behaviour into LoRA adapters."""

from steerheal.errors import SteerhealError

__version__ = "0.1.0"
__all__ = ["SteerhealError", "__version__"]
