"""Hydra sweep overrides -> Optuna distributions.

``interval(a, b)`` -> FloatDistribution (IntDistribution when both ends are ints), ``tag(log, ...)`` on a
log scale; ``range(a, b[, step])`` -> IntDistribution (FloatDistribution for float steps), ``high`` inclusive
as Optuna's are, so ``range(1, 4)`` gives 1, 2, 3; ``choice(...)`` -> CategoricalDistribution; a plain value
is fixed in every trial. An underscore module: Hydra's plugin scan does not import it (nor Optuna) on every run.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``["optimizer.lr=tag(log, interval(1e-4, 0.1))", "seed=1"]`` -> ({"optimizer.lr": ...}, {"seed": "1"}).

    A later override of the same key wins (the command line over ``hydra.sweeper.params``)."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        step = value.step if value.step is not None else 1
        if any(isinstance(x, float) for x in (value.start, value.stop, step)):
            # Hydra's range excludes stop; Optuna's high is inclusive: the last value below stop.
            high = value.start + step * ((value.stop - value.start - 1e-12) // step)
            return FloatDistribution(value.start, high, step=step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(
        f"{key}={override.input_line}: not a search space the Optuna sweeper knows; use "
        "choice(...), range(...) or [tag(log, ...)] interval(...)"
    )


def override_value(value: Any) -> str:
    """A sampled value as an override's right-hand side (choices come back encoded already)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else repr(value)
