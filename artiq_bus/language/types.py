"""Type names for kernel signatures (``def f(self) -> TInt32``).

Until the compiler arrives they are placeholders: printable, comparable marks that let
experiment files written for ARTIQ import and run their host code unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["TypeMark", "TNone", "TBool", "TInt32", "TInt64", "TFloat", "TStr", "TBytes",
           "TByteArray", "TList", "TTuple", "TArray"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TypeMark:
    """A named type, possibly with type parameters (``TList(TInt32)``)."""

    name: str
    params: tuple[object, ...] = ()

    def __repr__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(map(repr, self.params))})"


TNone = TypeMark("TNone")
TBool = TypeMark("TBool")
TInt32 = TypeMark("TInt32")
TInt64 = TypeMark("TInt64")
TFloat = TypeMark("TFloat")
TStr = TypeMark("TStr")
TBytes = TypeMark("TBytes")
TByteArray = TypeMark("TByteArray")


def TList(elt: object = None) -> TypeMark:  # noqa: N802 - ARTIQ's name
    """A list whose elements have type ``elt``."""
    return TypeMark("TList", (elt,))


def TTuple(elts: tuple[object, ...] | list[object] = ()) -> TypeMark:  # noqa: N802
    """A tuple with element types ``elts``."""
    return TypeMark("TTuple", tuple(elts))


def TArray(elt: object = None, num_dims: int = 1) -> TypeMark:  # noqa: N802
    """A numpy array of ``elt`` with ``num_dims`` dimensions."""
    return TypeMark("TArray", (elt, num_dims))
