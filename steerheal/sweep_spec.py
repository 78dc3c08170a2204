"""A sweep: a base run config and the settings to vary, expanded into one RunConfig per run.

The TOML form:

    name = "barrier aggregates"      # optional
    [base]                           # run-config fields, the same names as a run.toml
    rounds = 4
    [base.heal]
    tau = 1.0
    [axes]                           # each value a list; every combination is one run (a grid)
    agg = ["mean", "rmse"]
    seed = [1, 2, 3]

or, instead of [axes], listed combinations:

    [[runs]]
    agg = "mean"
    seed = 1

An axis names any run-config field (`seed`, `rounds`, `alphas`, ...), a heal setting by its own
name when no run-config field has it (`agg`, `tau`, `lam`, `ref`, `epochs`, ...), or a nested
setting by its dotted path (`heal.seed`, `filters.max_repetition`, `backtrack.threshold`).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from steerheal.backtrack import BacktrackConfig
from steerheal.errors import SteerhealError
from steerheal.filters import FilterConfig
from steerheal.heal import HealConfig
from steerheal.run_config import RunConfig

MAX_RUNS_WITHOUT_YES = 1000
NESTED = {"heal": HealConfig, "filters": FilterConfig, "backtrack": BacktrackConfig}
_TOP = {f.name for f in fields(RunConfig)}


def setting_path(name: str) -> tuple[str, ...]:
    """Where an axis name lives in a run config: ("seed",), ("heal", "agg"), ...; a name that is
    no setting is a SteerhealError listing what is."""
    if not isinstance(name, str) or not name:
        raise SteerhealError(f"An axis name must be text, got {name!r}.")
    parts = tuple(name.split("."))
    if len(parts) == 1 and parts[0] in _TOP and parts[0] not in NESTED:
        return parts
    if len(parts) == 1:
        owners = [group for group, cls in NESTED.items() if parts[0] in {f.name for f in fields(cls)}]
        if len(owners) == 1:
            return owners[0], parts[0]
    if len(parts) == 2 and parts[0] in NESTED and parts[1] in {f.name for f in fields(NESTED[parts[0]])}:
        return parts
    raise SteerhealError(f"Unknown setting {name!r} to sweep: use a run-config field (e.g. seed, rounds, alphas), "
                         "a heal setting (agg, tau, lam, ref, epochs, ...) or a dotted path (filters.max_repetition, "
                         "backtrack.threshold).")


def _plain(value: Any) -> Any:
    """TOML/JSON values as run-config data (lists stay lists: the config turns them into tuples)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SteerhealError(f"A swept value must be finite, got {value!r}.")
    return value


def apply(base: dict, point: dict) -> dict:
    """The base run-config data with one point's values put in their places."""
    data = json.loads(json.dumps(base))  # a deep copy of plain data
    for name, value in point.items():
        path = setting_path(name)
        if len(path) == 1:
            data[path[0]] = _plain(value)
        else:
            group = data.get(path[0]) or {}
            if not isinstance(group, dict):
                raise SteerhealError(f"{path[0]} must be a table of settings.")
            data[path[0]] = {**group, path[1]: _plain(value)}
    return data


def parse_value(text: str) -> Any:
    """A value as TOML reads it (numbers, true/false, lists, quoted text), else the bare text."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def axes_from_text(text: str) -> dict:
    """Axes written one per line, `name = v1, v2, v3` (or a TOML list): {name: [values]}."""
    axes: dict = {}
    for n, line in enumerate((text or "").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, eq, values = line.partition("=")
        if not eq or not name.strip():
            raise SteerhealError(f"Axis line {n} ({line!r}): write NAME = V1, V2, e.g. agg = mean, rmse.")
        parsed = parse_value(values if values.strip().startswith("[") else f"[{values}]")
        if not isinstance(parsed, list):
            parsed = [parse_value(v) for v in values.split(",") if v.strip()]
        axes[name.strip()] = parsed
    return axes


def label(point: dict) -> str:
    """One run's varied settings in words: 'agg=mean seed=1'."""
    return " ".join(f"{k}={v}" for k, v in point.items()) or "base"


@dataclass(frozen=True)
class SweepSpec:
    base: dict = field(default_factory=dict)
    axes: dict = field(default_factory=dict)  # name -> list of values (a grid)
    combinations: tuple = ()  # or listed points, each a dict of name -> value
    name: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "SweepSpec":
        if not isinstance(data, dict):
            raise SteerhealError("A sweep spec must be a table with [base] and [axes] (or [[runs]]).")
        unknown = set(data) - {"base", "axes", "runs", "name"}
        if unknown:
            raise SteerhealError(f"Unknown sweep table(s) {', '.join(sorted(unknown))}: a sweep has [base], [axes] "
                                 "or [[runs]], and an optional name.")
        base, axes, runs = data.get("base", {}), data.get("axes", {}), data.get("runs", [])
        if not isinstance(base, dict):
            raise SteerhealError("[base] must be a table of run settings.")
        if not isinstance(axes, dict) or not isinstance(runs, list):
            raise SteerhealError("[axes] must be a table of lists; [[runs]] a list of tables.")
        if axes and runs:
            raise SteerhealError("Give either [axes] (a grid) or [[runs]] (listed combinations), not both.")
        for name, values in axes.items():
            if not isinstance(values, list):
                raise SteerhealError(f"axis {name!r} must be a list of values, e.g. {name} = [1, 2].")
        if any(not isinstance(r, dict) for r in runs):
            raise SteerhealError("each [[runs]] entry must be a table of settings.")
        return cls(base=dict(base), axes={k: list(v) for k, v in axes.items()},
                   combinations=tuple(dict(r) for r in runs), name=str(data.get("name", "")))

    def to_dict(self) -> dict:
        out: dict = {"name": self.name, "base": self.base}
        if self.combinations:
            out["runs"] = [dict(c) for c in self.combinations]
        else:
            out["axes"] = self.axes
        return out

    def size(self) -> int:
        if self.combinations:
            return len(self.combinations)
        return math.prod(len(v) for v in self.axes.values()) if self.axes else 0

    def points(self) -> list[dict]:
        if self.combinations:
            return [dict(c) for c in self.combinations]
        names = list(self.axes)
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.axes[n] for n in names))]

    def expand(self, yes: bool = False) -> list[tuple[dict, RunConfig]]:
        """Every run's (point, validated RunConfig), before anything is stored: an unknown axis, an
        empty grid, a bad value or a grid over 1000 runs without yes is a SteerhealError."""
        for name in list(self.axes) + [k for c in self.combinations for k in c]:
            setting_path(name)
        for name in self.base:
            if name not in _TOP and name not in NESTED:
                setting_path(name)  # a bare heal name in [base] is allowed and moved into place below
        n = self.size()
        if n == 0:
            empty = [k for k, v in self.axes.items() if not v]
            raise SteerhealError("The sweep has no runs: " + (f"axis {empty[0]!r} is an empty list." if empty else
                                                              "give [axes] with at least one value each, or [[runs]]."))
        if n > MAX_RUNS_WITHOUT_YES and not yes:
            raise SteerhealError(f"The sweep has {n} runs (over {MAX_RUNS_WITHOUT_YES}): pass --yes to start them "
                                 "all, or vary fewer settings.")
        base = apply({k: v for k, v in self.base.items() if k in _TOP},
                     {k: v for k, v in self.base.items() if k not in _TOP})
        out = []
        for point in self.points():
            try:
                cfg = RunConfig.from_dict(apply(base, point)).validate()
            except SteerhealError as err:
                raise SteerhealError(f"Run {label(point)}: {err}") from None
            if cfg.curation == "manual":
                raise SteerhealError("A sweep cannot wait for hand curation: use curation = \"auto\".")
            out.append((point, cfg))
        return out
