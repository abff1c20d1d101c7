"""The one place where system metrics catch every exception, and why.

System figures are a bonus: a figure that cannot be read must cost that figure, never the other figures, the
threads, or training. What a table row can raise is open-ended: pynvml's ``NVMLError`` subclasses and ctypes
errors, psutil's ``OSError``/``RuntimeError`` (or ``AttributeError`` where a platform lacks a call), torch.cuda's
``RuntimeError``/``AssertionError`` without a usable device, and a ``TypeError`` from a binding whose result has
another shape. The caller's sink is the caller's code. Those two calls go through :meth:`Guard.run`, the only
``except Exception`` of :mod:`sdxl_dist_log.system`; everything else catches only what it knows it can get.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


class Guard:
    """Runs calls that must not raise; reports the first failure of each name with one log line.

    Args:
        logger: where the lines go.
        unit_name: what a unit is in the line (``"gpu"``: "disabled on gpu 3"); "" leaves the unit out.
        disable: a (name, unit) that failed once is never called again (table rows: an unsupported figure stays
            unsupported); when False every call is tried again (the sink: the backend may recover).

    Example:
        >>> guard = Guard(logging.getLogger("x"), "gpu")
        >>> out = {}
        >>> guard.run("power", lambda: out.update(power_watts=1 / 0), unit=0)
        False
    """

    def __init__(self, logger: logging.Logger, unit_name: str = "", *, disable: bool = True) -> None:
        self.log = logger
        self.unit_name = unit_name
        self.disable = disable
        self.disabled: set[tuple[str, int]] = set()
        self._reported: set[str] = set()

    def run(self, name: str, action: Callable[[], Any], unit: int = 0) -> bool:
        """Call ``action()``; True when it returned, False when it raised or (name, unit) is disabled."""
        if (name, unit) in self.disabled:
            return False
        try:
            action()
        except Exception as exc:  # the module docstring says why this one catch is broad
            if self.disable:
                self.disabled.add((name, unit))
            self.report(name, exc, unit)
            return False
        return True

    def report(self, name: str, exc: BaseException, unit: int = 0) -> None:
        """Log ``exc`` if it is the first failure of ``name``; later ones are silent."""
        if name in self._reported:
            return
        self._reported.add(name)
        if self.disable:
            where = f" on {self.unit_name} {unit}" if self.unit_name else ""
            self.log.warning("system metrics: %r disabled%s (%s: %s); other figures go on",
                             name, where, type(exc).__name__, exc)
        else:
            self.log.warning("system metrics: %s failed (%s: %s); goes on next interval",
                             name, type(exc).__name__, exc)
