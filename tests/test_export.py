"""Export: scripted == eager, the caller's input is untouched, checkpoints load strictly and round-trip,
checkpoints from files and URLs are never unpickled as code, and the model file records its weights."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import torch

from export.__main__ import main as export_main
from export.build import build_default, build_variant
from export.checkpoint import CheckpointError, load_strict, read_state_dict, weights_origin
from export.reference import DEFAULT, default_contract
from export.save import load_with_contract
from export.scriptable import script_slowfast
from export.variants import DEFAULT_VARIANT, VARIANTS
from export.verify import VerificationError, check_against, make_inputs, reference_outputs

CONTRACT = default_contract()


@pytest.fixture(scope="module")
def eager():
    return build_default(seed=0)


def test_hub_architecture_and_parameter_count(eager):
    # The hub's slowfast_r50, named: its figures, whichever variant is the default.
    r50 = eager if DEFAULT_VARIANT == "slowfast_r50" else build_variant(VARIANTS["slowfast_r50"])
    assert sum(p.numel() for p in r50.parameters()) == 34_566_488
    fusion = r50.blocks[0].multipathway_fusion.conv_fast_to_slow
    assert tuple(fusion.kernel_size) == (7, 1, 1)  # the hub's slowfast_r50 fusion kernel


def test_built_file_matches_eager_and_leaves_inputs_untouched(built, eager):
    scripted, contract = load_with_contract(built["pt"])
    assert isinstance(scripted, torch.jit.ScriptModule) and not isinstance(scripted, torch.jit.TopLevelTracedModule)
    # Offline, the default weights fall back to random ones (tests/test_checkpoint_download.py).
    assert contract == dataclasses.replace(CONTRACT, weights=contract.weights)
    assert contract.weights.startswith(("random weights, seed 0 (predictions are meaningless", f"checkpoint {Path(DEFAULT.checkpoint_url).name}"))
    inputs = make_inputs(CONTRACT, batch=2, crop=224, seed=7)
    given = list(inputs)
    with torch.inference_mode():
        ours = scripted(given)
        reference = eager([t.clone() for t in inputs])
    assert ours.shape == (2, CONTRACT.num_classes)
    assert float((ours - reference).abs().max()) <= 1e-4
    assert given[0] is inputs[0] and given[0].shape == (2, 3, 8, 224, 224)  # caller's list intact


# Batch 3 (~27 s) in make test-all: batch 1 keeps the contract in the default run.
@pytest.mark.parametrize("batch", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_built_file_embedding_is_the_eager_heads_pooled_input(built, eager, batch):
    """forward_with_embedding == the eager head's input (a hook on pytorchvideo's own pool-concat
    stage) averaged over T,H,W, and its logits are the head's projection of that vector."""
    scripted, contract = load_with_contract(built["pt"])
    assert (contract.embedding_size, contract.embedding_name) == (DEFAULT.embedding_size, f"{DEFAULT.name}.head_input")
    head_inputs = []
    hook = eager.blocks[5].register_forward_hook(lambda _m, _i, out: head_inputs.append(out))
    inputs = make_inputs(CONTRACT, batch=batch, crop=256, seed=11)
    try:
        with torch.inference_mode():
            logits, embedding = scripted.forward_with_embedding(list(inputs))
            reference_logits = eager([t.clone() for t in inputs])
            forward_logits = scripted(list(inputs))
    finally:
        hook.remove()
    (head_input,) = head_inputs
    assert head_input.shape == (batch, DEFAULT.embedding_size, 1, 2, 2)  # 256x256: the pathway pools leave 1x2x2 positions
    assert embedding.shape == (batch, DEFAULT.embedding_size) and embedding.dtype == torch.float32
    assert float((embedding - head_input.mean(dim=(2, 3, 4))).abs().max()) <= 1e-4
    assert float((logits - reference_logits).abs().max()) <= 1e-4
    assert torch.equal(logits, forward_logits)  # forward is the same pass's logits
    with torch.inference_mode():
        projected = eager.blocks[6].proj(embedding)  # linear head: proj(mean) == mean(proj)
    assert float((projected - reference_logits).abs().max()) <= 1e-4
    # Not degenerate: the 2048 slow and 256 fast channels both carry signal, and clips differ.
    assert float(embedding[:, :2048].abs().sum()) > 0 and float(embedding[:, 2048:].abs().sum()) > 0


def test_verification_refuses_a_wrong_embedding(eager):
    scripted = script_slowfast(eager)
    expected = reference_outputs(eager, CONTRACT, cases=((1, 224),))
    assert check_against(scripted, expected, CONTRACT, "scripted") <= 1e-4
    logits, embedding = expected[(1, 224)]
    shifted = embedding.clone()
    shifted[0, 2100] += 1e-3  # one fast-pathway feature off by 10x the tolerance
    with pytest.raises(VerificationError, match="embedding max"):
        check_against(scripted, {(1, 224): (logits, shifted)}, CONTRACT, "scripted")


def test_scripting_keeps_every_state_dict_key_and_value(eager):
    scripted = script_slowfast(eager)
    ours, theirs = scripted.state_dict(), eager.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.slow  # a full export (~90 s); the default run exports from a checkpoint in tests/test_finetuned.py
def test_model_zoo_checkpoint_round_trip(tmp_path, eager):
    # A model-zoo style file with weights that differ from the seeded default.
    trained = build_default(seed=123)
    with torch.no_grad():
        for buffer_name, buffer in trained.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
    checkpoint = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": trained.state_dict(), "epoch": 196}, checkpoint)
    output = tmp_path / f"{CONTRACT.model_name}.pt"  # the serving name is the file's stem
    assert export_main(["--output", str(output), "--checkpoint", str(checkpoint)]) == 0
    scripted, contract = load_with_contract(output)
    # the saved contract says which file the weights came from, by name and content hash
    assert contract.weights == f"checkpoint SLOWFAST_8x8_R50.pyth sha256:{hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]}"
    assert dataclasses.replace(contract, weights=CONTRACT.weights) == CONTRACT
    inputs = make_inputs(CONTRACT, batch=1, crop=224, seed=3)
    with torch.inference_mode():
        ours = scripted(list(inputs))
        carried = trained([t.clone() for t in inputs])
        seeded = eager([t.clone() for t in inputs])
    assert float((ours - carried).abs().max()) <= 1e-4
    assert float((ours - seeded).abs().max()) > 1e-3  # the checkpoint's weights, not the defaults


def test_bare_state_dict_is_accepted(tmp_path, eager):
    path = tmp_path / "bare.pt"
    torch.save(eager.state_dict(), path)
    state = read_state_dict(str(path))
    assert set(state) == set(eager.state_dict())


def test_mismatched_checkpoint_names_the_keys(tmp_path, eager):
    state = copy.copy(eager.state_dict())
    del state["blocks.6.proj.weight"]
    state["blocks.6.extra.weight"] = torch.zeros(1)
    state["blocks.6.proj.bias"] = torch.zeros(700)
    model = build_default(seed=0)
    with pytest.raises(CheckpointError) as caught:
        load_strict(model, state, "bad.pyth")
    message = str(caught.value)
    assert "blocks.6.proj.weight" in message and "blocks.6.extra.weight" in message
    assert f"blocks.6.proj.bias: checkpoint (700,) vs model ({CONTRACT.num_classes},)" in message


def test_unreadable_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(str(tmp_path / "missing.pyth"))
    junk = tmp_path / "junk.pyth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        read_state_dict(str(junk))
    assert export_main(["--output", str(tmp_path / "x.pt"), "--checkpoint", str(junk)]) == 1


# -- checkpoints at URLs ---------------------------------------------------------------------------


class _CreatesFile:
    """Unpickling this object opens (creates) ``path``: any code could run in its place."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """(directory served, its base URL) on 127.0.0.1; torch's hub cache moved into tmp_path."""
    root = tmp_path / "served"
    root.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_checkpoint_that_would_run_code_is_refused(http_root, tmp_path):
    root, base = http_root
    marker = tmp_path / "code-ran"
    torch.save({"model_state": {"w": torch.zeros(2)}, "payload": _CreatesFile(marker)}, root / "evil.pyth")
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        read_state_dict(f"{base}/evil.pyth")
    assert not marker.exists(), "unpickling the downloaded checkpoint ran its code"
    cache = tmp_path / "hub" / "checkpoints"
    assert not cache.exists() or not list(cache.iterdir()), "a refused file reached the cache"
    # control: the served file really carries the payload, and a plain unpickle runs it
    torch.load(root / "evil.pyth", weights_only=False)
    assert marker.exists()


def test_url_checkpoint_loads_and_is_named_by_its_hash(http_root, tmp_path):
    root, base = http_root
    weights = {"blocks.0.w": torch.arange(6.0).reshape(2, 3)}
    torch.save({"model_state": weights, "epoch": 3}, root / "SLOWFAST_8x8_R50.pyth")
    url = f"{base}/SLOWFAST_8x8_R50.pyth"
    state = read_state_dict(url)
    assert list(state) == ["blocks.0.w"] and torch.equal(state["blocks.0.w"], weights["blocks.0.w"])
    digest = hashlib.sha256((root / "SLOWFAST_8x8_R50.pyth").read_bytes()).hexdigest()[:12]
    (root / "SLOWFAST_8x8_R50.pyth").unlink()  # the second use reads the hub cache, not the network
    assert weights_origin(url, seed=0) == f"checkpoint SLOWFAST_8x8_R50.pyth sha256:{digest}"


def test_unreachable_url_checkpoint_fails_clearly(http_root):
    _, base = http_root
    with pytest.raises(CheckpointError, match="could not download checkpoint .*missing.pyth"):
        read_state_dict(f"{base}/missing.pyth")


def test_random_weights_say_so():
    assert weights_origin(None, seed=7) == "random weights, seed 7 (predictions are meaningless)"
