"""girder grid functions of the comparison; worker processes load them with
`girder worker --import benchmarks.compare.girder_tasks`.

Every function takes a `tag` so that each measured run uses keys that nothing has cached yet.
Nested calls use girder's one way: `girder.call_reentrant`.
"""

from __future__ import annotations

import girder
from benchmarks.compare.workloads import DagShape, burn, count_execution
from benchmarks.remote_tasks import chain, echo, tree  # the same W1-W4 functions

__all__ = ["chain", "echo", "tree"]


@girder.function
def square(tag: str, x: int) -> int:
    """The call that the cache workload repeats."""
    return x * x


@girder.function
def dag_leaf(leaf: int, shape: tuple[int, int, int, int, float], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    burn(dag.work_ms)
    count_execution(tag)
    return dag.leaf_value(leaf)


@girder.function
async def dag_mid(mid: int, shape: tuple[int, int, int, int, float], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    values = await girder.call_reentrant([(dag_leaf, k, shape, tag) for k in dag.leaves_of(mid)])
    burn(dag.work_ms)
    count_execution(tag)
    return mid + sum(int(v) for v in values)


@girder.function
async def dag_top(top: int, shape: tuple[int, int, int, int, float], tag: str) -> int:
    dag = DagShape.from_tuple(shape)
    values = await girder.call_reentrant([(dag_mid, j, shape, tag) for j in dag.mids_of(top)])
    burn(dag.work_ms)
    count_execution(tag)
    return top + sum(int(v) for v in values)
