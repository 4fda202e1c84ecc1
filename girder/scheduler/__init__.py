"""The scheduler: nodes (workers, distributors, clients) and the policy they follow."""

from girder.scheduler.client import Client
from girder.scheduler.distributor import Distributor
from girder.scheduler.node import Node, NodeStats
from girder.scheduler.worker import Worker

__all__ = ["Client", "Distributor", "Node", "NodeStats", "Worker"]
