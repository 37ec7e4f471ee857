"""Stub of comfy_execution.graph_utils: ExecutionBlocker as in ComfyUI."""


class ExecutionBlocker:
    """Return this from a node and any users will be blocked with the given
    error message; a message of None blocks silently."""

    def __init__(self, message):
        self.message = message
