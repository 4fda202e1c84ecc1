"""What a topology is: named stages (spouts and workers) and the edges between them.

A `Topology` is declared once, at module level, so that worker processes can find it by the
module that defines it and its name (as they find grid functions): `Topology("collage")` records
the module it is created in. Upstreams are stages declared before, so every topology is a DAG.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_PENDING = 100
"""Values (bundles, for a bundled worker) that may wait at one stage unless it says otherwise."""

_registry: dict[tuple[str, str], Topology] = {}
"""Every topology created in this process, by (module, name)."""


@dataclass(eq=False)
class Stage:
    """One spout or worker of a topology. Calling it calls its function."""

    topology: Topology
    name: str
    fn: Callable[..., Any]
    upstream: tuple[str, ...] = ()
    bundle: bool = False
    sequential: bool = False
    max_pending: int = DEFAULT_MAX_PENDING
    downstream: list[str] = field(default_factory=list)

    @property
    def is_spout(self) -> bool:
        return not self.upstream

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<stage {self.topology.name}.{self.name}>"


class Topology:
    """A DAG of spouts and workers, run by `grid.run(topology)`.

    Define it at module level in a module the grid's workers import (`--import`), as grid
    functions are: a worker process finds a stage by the topology's module and name.
    """

    def __init__(self, name: str, *, module: str | None = None) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"a topology needs a name, got {name!r}")
        self.name = name
        self.module = module or _caller_module()
        self.stages: dict[str, Stage] = {}
        _registry[(self.module, name)] = self

    def __repr__(self) -> str:
        return f"<topology {self.module}.{self.name}: {', '.join(self.stages)}>"

    def spout(self, fn: Callable[..., Any]) -> Stage:
        """A source: `fn(emit)`, sync or async, calls `emit(seq, value)` for each value (await it
        in an async spout: it waits while the downstream is full)."""
        return self._add(Stage(self, _name_of(fn), fn))

    def worker(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        upstream: Iterable[Stage | str] = (),
        bundle: bool = False,
        sequential: bool = False,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> Callable[[Callable[..., Any]], Stage]:
        """A worker of the values of `upstream` (stages declared before).

        Without `bundle`: `fn(seq, value, upstream=name)` once per value. With `bundle`:
        `fn(seq, {upstream name: value})` once per seq id, when every upstream delivered it.
        `sequential` (bundled only): bundles run one at a time in seq id order. At most
        `max_pending` values (bundles) wait at this stage. The return value goes downstream;
        None sends nothing.
        """
        if fn is not None:
            raise TypeError(
                f"@{self.name}.worker needs upstream=[...]: @topology.worker(upstream=)"
            )
        names = tuple(self._upstream_name(item) for item in upstream)

        def decorate(target: Callable[..., Any]) -> Stage:
            _check_options(target, names, bundle, sequential, max_pending)
            stage = Stage(self, _name_of(target), target, names, bundle, sequential, max_pending)
            return self._add(stage)

        return decorate

    def _upstream_name(self, item: Stage | str) -> str:
        name = item.name if isinstance(item, Stage) else item
        stage = self.stages.get(name) if isinstance(name, str) else None
        if stage is None or (isinstance(item, Stage) and item.topology is not self):
            raise ValueError(
                f"topology {self.name!r}: upstream {item!r} is no stage declared before in it "
                f"(stages: {', '.join(self.stages) or 'none'})"
            )
        return name

    def _add(self, stage: Stage) -> Stage:
        if stage.name in self.stages:
            raise ValueError(f"topology {self.name!r} already has a stage named {stage.name!r}")
        self.stages[stage.name] = stage
        for name in stage.upstream:
            self.stages[name].downstream.append(stage.name)
        return stage

    def sinks(self) -> list[Stage]:
        """The workers with no downstream: their outputs are what `grid.run` yields."""
        return [s for s in self.stages.values() if not s.is_spout and not s.downstream]

    def spouts(self) -> list[Stage]:
        return [s for s in self.stages.values() if s.is_spout]

    def ancestors(self, name: str) -> set[str]:
        """Every stage whose values reach `name`."""
        found: set[str] = set()
        todo = list(self.stages[name].upstream)
        while todo:
            current = todo.pop()
            if current not in found:
                found.add(current)
                todo.extend(self.stages[current].upstream)
        return found

    def validate(self) -> None:
        """A topology that can run: a spout, and a sink that something reaches."""
        if not self.spouts():
            raise ValueError(f"topology {self.name!r} has no spout")
        if not self.sinks():
            raise ValueError(f"topology {self.name!r} has no worker")


def find_topology(module: str, name: str) -> Topology | None:
    """The topology `name` of `module`, if that module has been imported here."""
    return _registry.get((module, name))


def _caller_module() -> str:
    frame = sys._getframe(2)
    return str(frame.f_globals.get("__name__", "__main__"))


def _name_of(fn: Callable[..., Any]) -> str:
    if not callable(fn):
        raise TypeError(f"a stage needs a function, got {type(fn).__name__}")
    return str(getattr(fn, "__name__", type(fn).__name__))


def _check_options(
    fn: Callable[..., Any], upstream: tuple[str, ...], bundle: bool, sequential: bool, limit: int
) -> None:
    where = f"worker {_name_of(fn)!r}"
    if not upstream:
        raise ValueError(f"{where} needs at least one upstream stage (upstream=[...])")
    if len(set(upstream)) != len(upstream):
        raise ValueError(f"{where} names an upstream twice: {list(upstream)}")
    if sequential and not bundle:
        raise ValueError(f"{where}: sequential=True needs bundle=True")
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{where}: max_pending must be an int of at least 1, not {limit!r}")
