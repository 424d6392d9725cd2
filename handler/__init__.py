"""TorchServe handler for SlowFast R50: video bytes in, top-k Kinetics-400 actions out.

Packed into the .mar as a package; the module TorchServe loads is ``slowfast_handler``.
"""
