"""Topologies (Clusterduck's DAGs): spouts and workers on the grid, run by `grid.run`."""

from girder.topology.model import DEFAULT_MAX_PENDING, Stage, Topology
from girder.topology.stage import Printed

__all__ = ["DEFAULT_MAX_PENDING", "Printed", "Stage", "Topology"]
