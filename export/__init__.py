"""Build SlowFast R50 with pytorchvideo, script it, verify it and save it with its contract."""
