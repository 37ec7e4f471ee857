"""Stub of ComfyUI's comfy package: empty, so any use of comfy.* by the
m3gate pack fails loudly in the tests (the pack must not need it)."""
