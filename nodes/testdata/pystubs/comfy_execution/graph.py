"""Stub of comfy_execution.graph, which re-exports ExecutionBlocker."""
from comfy_execution.graph_utils import ExecutionBlocker  # noqa: F401
