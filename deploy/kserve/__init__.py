"""KServe: the layout (``python -m deploy.kserve.build``) and the pod's model server
(``python -m deploy.kserve.server``, run in the kserve venv) in front of TorchServe."""
