"""Name each point of a ``pcpretrain train -m`` sweep by the values that vary, e.g. ``pc.degree=4``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from omegaconf import OmegaConf

RESOLVER = "pcpretrain_sweep_subdir"
_SWEEP_FUNCTION = re.compile(r"^(range|choice|glob|interval|tag)\(")


def swept_keys(overrides: Sequence[str]) -> set[str]:
    """Keys given several values on the command line (``a=1,2`` or ``a=range(...)``/``choice(...)``)."""
    keys = set()
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and (_has_top_level_comma(value) or _SWEEP_FUNCTION.match(value)):
            keys.add(key)
    return keys


def point_name(job_overrides: Iterable[str], keys: set[str], job_num: int) -> str:
    """The sweep point's directory name: its swept ``key=value`` pairs, else its job number."""
    parts = [o for o in job_overrides if o.lstrip("+~").partition("=")[0] in keys]
    name = ",".join(sorted(parts)).replace("/", "_")
    return name or f"job{job_num}"


def register_sweep_resolver(overrides: Sequence[str]) -> None:
    """Make ``${pcpretrain_sweep_subdir:...}`` in the Hydra config name points by the swept keys."""
    keys = swept_keys(overrides)
    OmegaConf.register_new_resolver(
        RESOLVER, lambda job_overrides, job_num: point_name(job_overrides, keys, int(job_num)), replace=True
    )


def _has_top_level_comma(value: str) -> bool:
    depth = 0
    for char in value:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False
