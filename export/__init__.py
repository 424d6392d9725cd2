"""Build a SlowFast variant (export/variants.py) with pytorchvideo, load its weights, script it, verify it
and save it with its contract."""
