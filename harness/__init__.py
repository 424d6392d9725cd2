"""Test and benchmark harness: isolated TorchServe instances and a fake TorchServe context.

Shared by ``tests/`` and ``bench/``; never imported by the handler or the CLI.
"""
