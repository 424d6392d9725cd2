"""Test and benchmark harness, shared by ``tests/`` and ``bench/``; never imported by the handler or the CLI.

- ``paths``: the repo, its built artifacts, the shared video corpus;
- ``torchserve``: isolated TorchServe instances on free ports; ``context``: a fake TorchServe
  context; ``inproc``: the real handler loaded in this process as a worker loads it;
- ``synth``: the one video synthesizer; ``reference``: the one reference pipeline (pytorchvideo);
- ``memory``: a process's resident memory and its peak, from /proc.
- ``serve_only``: Python with only requirements-serve.txt's packages importable (the serving image).
"""
