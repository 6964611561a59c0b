"""The valid range of a user-set value, declared where the value is consumed.

A :class:`Check` sits on a dataclass field (``field(metadata=check(ge=1))``) or on a parameter
of a class the config instantiates (``batch_size: Annotated[int, Check(ge=1)]``);
llm_scratch/train/validate.py and llm_scratch/sample.py read them and refuse a value out of its
range before anything runs, naming the key the user set. Besides the declared checks, every
value is held to what any consumer accepts (:func:`generic_problem`): no NaN or infinite
number, no integer beyond 64 bits, no NUL character in a string.

Nothing here imports the rest of the package: the model, data and training code all use it.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

# numpy's seeds (np.random.seed, and so Lightning's seed_everything) are 0 .. 2**32 - 1
SEED_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
# a file name's longest component on the common file systems (ext4, xfs, apfs, ntfs: 255)
NAME_MAX = 255
METADATA_KEY = "check"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Check:
    """What a value must be, besides its type; ``None`` always passes (the type says whether
    null is allowed). ``kind`` restricts the check to values of that type (for a key that takes
    an int and a float with different meanings, see :class:`Either`)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    ne: float | None = None  # a value excluded from the range (max_steps=0)
    nonempty: bool = False  # a string or list with something in it
    choices: tuple | None = None  # one of these values
    prefixes: tuple = ()  # or text starting with one of these (a family of names)
    path_part: bool = False  # text that becomes part of a file name: <= NAME_MAX - 4 bytes
    path: bool = False  # a path: each part between slashes <= NAME_MAX bytes
    bytes_each: int | None = None  # the value counts items of this many bytes held in memory
    kind: type | None = None
    why: str = ""  # what the range means, added to the message

    def describe(self) -> str:
        kind = {int: "an integer ", float: "a number ", str: "text "}.get(self.kind, "")
        parts = []
        for op, bound in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)):
            if bound is not None:
                parts.append(f"{op} {bound:g}" if isinstance(bound, float) else f"{op} {bound}")
        if self.ne is not None:
            parts.append(f"not {self.ne}")
        if self.nonempty:
            parts.append("not empty")
        if self.choices is not None:
            family = [f"{p}..." for p in self.prefixes]
            parts.append("one of " + ", ".join([*(str(c) for c in self.choices), *family]))
        if self.path_part:
            parts.append(f"at most {NAME_MAX - 4} bytes between slashes (it names files)")
        if self.path:
            parts.append(f"a path with at most {NAME_MAX} bytes between slashes")
        text = kind + ", ".join(parts)
        return text.strip() + (f" ({self.why})" if self.why else "")

    def applies(self, value: Any) -> bool:
        if value is None:
            return False
        if self.kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if self.kind is float:
            return isinstance(value, float)
        if self.kind is not None:
            return isinstance(value, self.kind)
        return True

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range (``None``: it is in range, or the check does not
        apply to it)."""
        if not self.applies(value):
            return None
        if _number(value) and math.isfinite(value):
            bad = (
                (self.ge is not None and value < self.ge)
                or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le)
                or (self.lt is not None and value >= self.lt)
                or (self.ne is not None and value == self.ne)
            )
            if bad:
                return f"it must be {self.describe()}"
            memory = memory_bytes() if self.bytes_each else None
            if memory and value * self.bytes_each > memory:
                return (
                    f"it would take {value * self.bytes_each / 1e9:,.0f} GB of memory "
                    f"({self.bytes_each} bytes each), more than this machine's "
                    f"{memory / 1e9:,.0f} GB"
                )
        if self.nonempty and isinstance(value, str | list | tuple) and len(value) == 0:
            return f"it must be {self.describe()}"
        named = (
            isinstance(value, str) and value.startswith(self.prefixes) if self.prefixes else False
        )
        if self.choices is not None and value not in self.choices and not named:
            return f"it must be {self.describe()}"
        if self.path_part and isinstance(value, str):
            parts = value.split("/")
            longest = max(len(p.encode("utf-8", "surrogateescape")) for p in parts)
            if longest > NAME_MAX - 4 or not all(parts):
                return f"it must be {self.describe()}, without empty parts; got {longest} bytes"
        if self.path and isinstance(value, str):
            longest = max(len(p.encode("utf-8", "surrogateescape")) for p in value.split("/"))
            if longest > NAME_MAX:
                return f"it must be {self.describe()}; one part has {longest} bytes"
        return None


@dataclass(frozen=True)
class Either:
    """Valid when one of ``checks`` applies to the value and passes (``val_check_interval``: an
    integer >= 1, or a fraction in (0, 1])."""

    checks: tuple[Check, ...] = field(default_factory=tuple)

    def __init__(self, *checks: Check) -> None:
        object.__setattr__(self, "checks", checks)

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.checks)

    def problem(self, value: Any) -> str | None:
        applying = [c for c in self.checks if c.applies(value)]
        if value is None or any(c.problem(value) is None for c in applying):
            return None
        return f"it must be {self.describe()}"


def check(**kwargs: Any) -> dict[str, Check]:
    """A dataclass field's metadata holding a :class:`Check`: ``field(metadata=check(ge=0))``."""
    return {METADATA_KEY: Check(**kwargs)}


def declared(annotation: Any) -> list[Check | Either]:
    """The checks in an ``Annotated[...]`` type, also inside ``X | None`` (none for a plain
    type)."""
    found = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, Check | Either)]
    for arg in typing.get_args(annotation) if not found else ():
        found += declared(arg)
    return found


# The common ranges, for signatures: ``batch_size: Count = 8``, ``stride: Count | None = None``.
Count = Annotated[int, Check(ge=1)]  # a number of things, at least one
Size = Annotated[int, Check(ge=0)]  # zero or more
Seed = Annotated[int, Check(ge=0, le=SEED_MAX)]  # numpy's seed range
# tokens generated one at a time: a million is hours on a GPU, and more never finishes
MAX_NEW_TOKENS = 1_000_000
NewTokens = Annotated[int, Check(ge=1, le=MAX_NEW_TOKENS)]
# DataLoader worker processes: each is a process of its own (2**62 would fork until it fails)
Workers = Annotated[int, Check(ge=0, le=1024, why="worker processes")]


def enforce(obj: Any, prefix: str) -> None:
    """Refuse (:class:`UserError`) a field of the dataclass ``obj`` that is out of its declared
    range or that no consumer takes, named ``<prefix>.<field>`` (``<field>`` without a prefix):
    the same check a config gets, for objects built in code and for sample.py's options."""
    from dataclasses import fields

    from llm_scratch.errors import UserError

    for f in fields(obj):
        value = getattr(obj, f.name)
        rule = f.metadata.get(METADATA_KEY)
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            problem = generic_problem(item) or (rule.problem(item) if rule else None)
            if problem is not None:
                key = f"{prefix}.{f.name}" if prefix else f.name
                raise UserError(f"{key}={value!r} is out of range: {problem}.")


def generic_problem(value: Any) -> str | None:
    """What no consumer accepts, whatever the key: NaN or infinity (torch, numpy and Lightning
    take them, and a run fails later for another reason), an integer beyond 64 bits, a NUL
    character (the OS refuses it in a path)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "it must be a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        return "it must fit in 64 bits"
    if isinstance(value, str) and "\x00" in value:
        return "it must not contain a NUL character"
    return None
