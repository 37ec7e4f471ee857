"""Stub of ComfyUI's server module for the m3gate pack tests.

PromptServer.instance is set by the constructor, as in ComfyUI; send_sync
records (event, data, sid) instead of writing to websockets. client_id is the
id of the client whose prompt is running, which ComfyUI's executor sets.
"""


class PromptServer:
    instance = None

    def __init__(self, loop=None):
        PromptServer.instance = self
        self.loop = loop
        self.client_id = None
        self.sent = []

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data, sid))
