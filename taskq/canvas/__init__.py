"""Canvas: signatures and the workflows built from them.

``Signature`` (``task.s()``, ``task.si()``, ``signature()``), ``chain`` (also
``a | b``), ``group``, ``chord``, ``chunks``, ``xmap`` / ``xstarmap``
(``task.map()``, ``task.starmap()``), ``GroupResult``, and the hooks the worker
calls after each task (``on_success``, ``on_failure``). See docs/canvas.md.
"""

from taskq.canvas.hooks import on_failure, on_success
from taskq.canvas.maps import chunks, register_builtins, xmap, xstarmap
from taskq.canvas.primitives import chain, chord, group
from taskq.canvas.results import GroupResult
from taskq.canvas.signature import Signature, maybe_signature, signature, subtask

__all__ = [
    "GroupResult",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "on_failure",
    "on_success",
    "register_builtins",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]
