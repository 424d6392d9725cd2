"""Choose the worker's device and load the model onto it: ``load_runtime`` is the one entry point.

GPU workers run TorchScript (``runtime_torchscript``); CPU workers run OpenVINO
(``runtime_openvino``, converted at load from the same .pt) unless ``cpu_runtime: torchscript``,
or OpenVINO cannot import, convert or compile the model: then TorchScript, with a warning. Both
satisfy ``runtime_base.Runtime``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from handler.contract import ContractError
from handler.serve_settings import ServeOptions
from handler.runtime_base import Runtime
from handler.runtime_openvino import OpenVinoRuntime
from handler.runtime_torchscript import TorchScriptRuntime

log = logging.getLogger(__name__)


def choose_device(gpu_id: Optional[int], cuda_available: Optional[bool] = None) -> torch.device:
    """``cuda:{gpu_id}`` when TorchServe gave this worker a GPU and CUDA works, else CPU."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if gpu_id is not None and available:
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def load_runtime(path: Path, device: torch.device, options: ServeOptions, workers: int = 1) -> Runtime:
    """The model at ``path`` loaded for ``device``, optimized, warmed up (``options.warmup``).

    ``workers``: workers sharing this host's cores (sizes the CPU thread pool).
    """
    if device.type == "cpu" and options.cpu_runtime == "openvino":
        try:
            return OpenVinoRuntime.load(path, options, workers)
        except ContractError:
            raise  # the .pt itself is wrong: TorchScript would refuse it too
        except Exception as exc:  # never a dead worker: the TorchScript path serves the same .pt
            log.warning(
                "cpu_runtime openvino failed (%s: %s); falling back to TorchScript fp32",
                type(exc).__name__, exc, exc_info=True,
            )
    return TorchScriptRuntime.load(path, device, options)
