"""An exception both sides import, so each can rebuild the other's failure."""


class InteropError(Exception):
    """Raised by the ``interop.fail`` task."""
