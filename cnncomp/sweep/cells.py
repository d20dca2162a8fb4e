"""A sweep's cells: override parsing, the basic sweeper's expansion, and which keys vary.

The one place cnncomp parses `key=value` overrides: through Hydra's `OverridesParser` (quoting,
`+key`/`~key`, `key@pkg`, comma lists and `glob(...)`), never by splitting on `=`. The sweep
callback (`cnncomp.sweep.SweepCallback`) and the report (`cnncomp.report`) expand a sweep's cells
with the same `expected_cells`: the callback from the live multirun config, the report from the
`multirun.yaml` Hydra saved in the sweep dir.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("cnncomp.sweep")

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def parse_overrides(overrides: Iterable[str], config_loader: Any = None) -> list[Override]:
    """Hydra's parse of command-line overrides (`config_loader` is needed only for `glob(...)`)."""
    return OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides))


def override_dict(overrides: Iterable[str]) -> dict[str, str]:
    """{key: value} of a cell's overrides, keys with their `+`/`~` prefix and `@package` as Hydra writes them."""
    return {o.get_key_element(): o.get_value_element_as_str() for o in parse_overrides(overrides)}


def cell_key(overrides: Iterable[str]) -> frozenset[str]:
    """An order-free identity of a cell's overrides, normalized through Hydra's parser."""
    return frozenset(f"{k}={v}" for k, v in override_dict(overrides).items())


def sweep_cells(
    arguments: Sequence[str], params: Mapping[str, Any] | None = None, config_loader: Any = None
) -> list[list[str]]:
    """The job overrides of every cell of a sweep, expanded exactly as Hydra's BasicSweeper does:
    `hydra.sweeper.params` first, then the command-line task overrides (a later key wins), then
    the cartesian product of the comma lists. `config_loader` is needed only for `glob(...)` sweeps."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(_override_strings(arguments, params), config_loader)
    return BasicSweeper.split_arguments(parsed, None)[0]


def _override_strings(arguments: Sequence[str], params: Mapping[str, Any] | None) -> list[str]:
    return [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)


def sweep_params(cfg: DictConfig) -> tuple[list[str], dict[str, Any]]:
    """A multirun's command-line task overrides and its `hydra.sweeper.params`."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return list(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)), dict(params)


def varying_keys(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(keys swept over, keys set to one value) among a multirun's task overrides."""
    last: dict[str, Any] = {}
    for o in parse_overrides(_override_strings(*sweep_params(cfg))):
        last[o.key_or_group] = o  # the command line wins over hydra.sweeper.params
    vary = [k for k, o in last.items() if o.is_sweep_override()]
    fixed = [k for k, o in last.items() if not o.is_sweep_override()]
    return vary, fixed


def expected_cells(cfg: DictConfig) -> list[list[str]] | None:
    """Every cell's overrides in job-number order, as the basic sweeper expands a multirun config:
    the live one (the sweep callback) or a sweep dir's saved `multirun.yaml` (the report). None when
    another sweeper runs the sweep (no `_target_` counts as the basic sweeper, Hydra's default) or
    when the basic sweeper cannot expand it without the config repository (`glob(...)`)."""
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_") or BASIC_SWEEPER)
    if not target.endswith("BasicSweeper"):
        return None
    try:
        return sweep_cells(*sweep_params(cfg))
    except Exception as err:  # a sweep the basic sweeper rejects or needs a config loader for
        log.debug("cannot expand the sweep: %s", err)
        return None
