"""KServe (kserve-torchserve runtime) layout: ``python -m deploy.kserve.build``."""
