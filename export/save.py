"""Write and read a TorchScript file that carries its own preprocessing contract."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import torch

from handler.contract import CONTRACT_FILE, PreprocessContract


def save_with_contract(module: torch.jit.ScriptModule, contract: PreprocessContract, output: Path) -> None:
    """Save atomically: a half-written .pt never replaces a good one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.jit.save(module, str(partial), _extra_files={CONTRACT_FILE: contract.to_json()})
    os.replace(partial, output)


def load_with_contract(path: Path) -> Tuple[torch.jit.ScriptModule, PreprocessContract]:
    extra = {CONTRACT_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, PreprocessContract.from_json(extra[CONTRACT_FILE])
