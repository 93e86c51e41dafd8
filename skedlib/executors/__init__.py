"""Executors: how an agent starts, stops and observes one container of a task."""

from skedlib.executors.base import (
    ContainerRef,
    ContainerStatus,
    Executor,
    ExecutorContext,
    TaskRejected,
    convert_blob,
    substitute_port,
)

__all__ = ["ContainerRef", "ContainerStatus", "Executor", "ExecutorContext", "TaskRejected",
           "convert_blob", "substitute_port"]
