"""Write and read a TorchScript file that carries its own preprocessing contract."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Tuple

import torch

from handler.contract import CONTRACT_FILE, PreprocessContract


def save_with_contract(
    module: torch.jit.ScriptModule, contract: PreprocessContract, output: Path,
    extra: Optional[Mapping[str, bytes]] = None,
) -> None:
    """Save atomically: a half-written .pt never replaces a good one. ``extra``: more files stored
    beside the contract (the int8 IR, export/int8.py)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.jit.save(module, str(partial), _extra_files={CONTRACT_FILE: contract.to_json(), **(extra or {})})
    os.replace(partial, output)


def load_with_contract(path: Path) -> Tuple[torch.jit.ScriptModule, PreprocessContract]:
    extra = {CONTRACT_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, PreprocessContract.from_json(extra[CONTRACT_FILE])
