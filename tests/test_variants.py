"""The variant table (export/variants.py) against pytorchvideo's own builders, the checkpoint formats
people have, label files, and the contract's activation and channel order as the handler applies
them. The heavy variants' scripted == eager check runs behind the slow marker."""

from __future__ import annotations

import functools
import json
from typing import Dict, Iterator, List, Tuple

import pytest
import torch

import export.variants
from export.checkpoint import CheckpointError, load_strict, unwrap_state_dict
from export.variants import (
    CLASSIFIERS, DEFAULT_VARIANT, VARIANTS, VariantError, build, contract_for, get_variant, head_classes, read_label_file,
    recognise, resolve_labels,
)
from handler.contract import ContractError, PreprocessContract, activate, combine_views
from handler.errors import RequestError
from handler.request_options import resolve_request_options
from handler.serve_settings import ServeOptions
from handler.render import top_predictions
from handler.run import WindowJob, mean_scores, run_windows
from handler.runtime_base import Outputs, model_outputs
from harness.paths import MODEL


@pytest.fixture(scope="module", autouse=True)
def skeletons_built_once() -> Iterator[None]:
    """Each (variant, classes) skeleton built once for the module (recognise() builds every variant's
    for each state dict it is given: seconds each time), the same shapes every time."""
    cached = functools.lru_cache(maxsize=None)(export.variants.skeleton_shapes)

    def shapes(variant: export.variants.Variant, num_classes: int) -> Dict[str, Tuple[int, ...]]:
        return dict(cached(variant, num_classes))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export.variants, "skeleton_shapes", shapes)
        yield


def meta_model(name: str, classes: int = 400) -> torch.nn.Module:
    with torch.device("meta"):
        return VARIANTS[name].builder(pretrained=False, model_num_class=classes)


# -- the table against pytorchvideo ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_contract_fits_the_builders_network(name):
    """The head pools over exactly the frames the contract feeds it (slow T/alpha, fast T, at the
    7x7 of a 224 crop), takes slow + fast channels, and the parameter count is the model zoo's."""
    variant, model = VARIANTS[name], meta_model(name)
    contract = contract_for(variant, read_label_file(variant.labels_file))
    slow_pool, fast_pool = model.blocks[5].pool
    assert tuple(slow_pool.kernel_size) == (contract.slow_frames, 7, 7)
    assert tuple(fast_pool.kernel_size) == (contract.num_frames, 7, 7)
    assert model.blocks[6].proj.in_features == contract.embedding_size == 2048 + 256
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - variant.params_m) < 0.01, f"{name}: {params:.2f} M parameters"
    assert contract.model_name == contract.variant == name and contract.num_classes == 400
    # 30 fps frames, fast stride 2: the window covers 2 x num_frames source frames.
    assert contract.window_seconds == pytest.approx(2 * contract.num_frames / 30)


def test_the_16x8_variant_samples_64_frames_over_128():
    contract = contract_for(get_variant("slowfast_16x8_r101_50_50"), ["a"])
    assert (contract.num_frames, contract.slow_frames, contract.window_seconds) == (64, 16, pytest.approx(128 / 30))


def test_default_variant_and_unknown_names():
    # The default variant is the first row and the model `make mar` builds and config.properties serves.
    assert DEFAULT_VARIANT == MODEL and list(VARIANTS)[0] == DEFAULT_VARIANT
    with pytest.raises(VariantError, match="unknown variant 'slowfast_r18'.*slowfast_r50"):
        get_variant("slowfast_r18")


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("classes", [12, 400])
def test_a_state_dict_is_recognised_by_its_shapes(name, classes):
    shapes = export.variants.skeleton_shapes(VARIANTS[name], classes)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert head_classes(state) == classes
    assert recognise(state).name == name


def test_a_state_dict_no_variant_fits_is_refused():
    shapes = export.variants.skeleton_shapes(VARIANTS["slowfast_r50"], 12)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    del state["blocks.0.multipathway_blocks.0.conv.weight"]
    with pytest.raises(VariantError, match="matches none of slowfast_r50, slowfast_r101"):
        recognise(state)
    with pytest.raises(VariantError, match="no head projection"):
        head_classes({"w": torch.zeros(2)})


# -- checkpoint formats ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_state():
    """The real R50 state dict with a 12-class head (random weights)."""
    return build(VARIANTS["slowfast_r50"], num_classes=12, seed=3).state_dict()


@pytest.fixture(scope="module")
def other_model():
    """(an R50 with other random weights, those weights): reset before each load, not rebuilt."""
    model = build(VARIANTS["slowfast_r50"], num_classes=12, seed=9)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("layout", ["model_zoo", "bare", "lightning", "pysf", "ddp"])
def test_every_checkpoint_layout_loads_strictly(small_state, other_model, layout):
    saved = {
        "model_zoo": {"model_state": small_state, "epoch": 1},
        "bare": small_state,
        "lightning": {"state_dict": _prefixed(small_state, "model."), "epoch": 4, "global_step": 80,
                      "pytorch-lightning_version": "2.2.0", "hyper_parameters": {"lr": 0.1}},
        "pysf": {"model_state": _prefixed(small_state, "model."), "epoch": 196, "cfg": "TRAIN:\n  ENABLE: True"},
        "ddp": _prefixed(small_state, "module."),
    }[layout]
    state = unwrap_state_dict(saved, layout)
    assert list(state) == list(small_state)
    model, initial = other_model
    assert head_classes(state) == 12
    model.load_state_dict(initial)
    assert not torch.equal(model.blocks[6].proj.weight, small_state["blocks.6.proj.weight"])
    load_strict(model, state, layout)
    assert torch.equal(model.blocks[6].proj.weight, small_state["blocks.6.proj.weight"])


def test_a_prefix_on_some_keys_only_is_kept_and_named(small_state):
    mixed = {("model." + k if i % 2 else k): v for i, (k, v) in enumerate(small_state.items())}
    state = unwrap_state_dict({"state_dict": mixed}, "mixed")
    model = build(VARIANTS["slowfast_r50"], num_classes=12)
    with pytest.raises(CheckpointError, match=r"missing keys: .*unexpected keys: model\.blocks"):
        load_strict(model, state, "mixed.ckpt")


def test_a_file_without_tensors_is_refused():
    with pytest.raises(CheckpointError, match="holds no state dict"):
        unwrap_state_dict({"epoch": 3, "state_dict": {}}, "empty.ckpt")


# -- labels ---------------------------------------------------------------------------------------


def test_label_files_text_json_map_and_list(tmp_path):
    (tmp_path / "c.txt").write_text("jump\n\nrun \nwave\n")
    (tmp_path / "c.json").write_text(json.dumps({"wave": 2, "jump": 0, "run": 1}))
    (tmp_path / "l.json").write_text(json.dumps(["jump", "run", "wave"]))
    for name in ("c.txt", "c.json", "l.json"):
        assert read_label_file(tmp_path / name) == ("jump", "run", "wave")
    assert len(read_label_file(VARIANTS["slowfast_r50"].labels_file)) == 400


def test_label_count_must_match_the_head(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(f"class {i}" for i in range(11)))
    with pytest.raises(VariantError, match="has 11 labels but the model's head has 12 classes"):
        resolve_labels(VARIANTS["slowfast_r50"], 12, tmp_path / "c.txt")
    with pytest.raises(VariantError, match="the head has 12 classes but no label file was given"):
        resolve_labels(VARIANTS["slowfast_r50"], 12, None)
    (tmp_path / "gap.json").write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(VariantError, match="indices must be 0..1"):
        read_label_file(tmp_path / "gap.json")


# -- the contract's activation and channel order ----------------------------------------------------


def test_contract_reads_version_2_files_as_softmax_rgb():
    contract = contract_for(VARIANTS["slowfast_r50"], ["a", "b"], activation="sigmoid", channel_order="BGR")
    assert PreprocessContract.from_json(contract.to_json()) == contract
    old = json.loads(contract.to_json())
    for key in ("activation", "channel_order", "variant"):
        del old[key]
    old["version"] = 2
    read = PreprocessContract.from_json(json.dumps(old))
    assert (read.activation, read.channel_order, read.variant) == ("softmax", "RGB", "slowfast_r50")
    with pytest.raises(ContractError, match="activation 'relu'"):
        contract_for(VARIANTS["slowfast_r50"], ["a"]).__class__(**{**contract.__dict__, "activation": "relu"})


def test_activation_and_how_views_combine():
    logits = torch.tensor([[2.0, 0.0, -2.0], [0.0, 1.0, 0.0]])
    soft = activate(logits, "softmax")
    assert torch.allclose(soft.sum(1), torch.ones(2))
    sig = activate(logits, "sigmoid")
    assert torch.allclose(sig, 1 / (1 + torch.exp(-logits))) and float(sig[0].sum()) != pytest.approx(1.0)
    assert torch.equal(combine_views(sig, "sigmoid"), torch.maximum(sig[0], sig[1]))
    assert torch.allclose(combine_views(soft, "softmax"), (soft[0] + soft[1]) / 2)
    with pytest.raises(ContractError):
        activate(logits, "tanh")


def _contract(**changes) -> PreprocessContract:
    base = contract_for(VARIANTS["slowfast_r50"], ["a", "b", "c"], **changes)
    return PreprocessContract(**{**base.__dict__, "num_frames": 4, "alpha": 2, "short_side": 8, "crop_size": 8,
                                 "mean": (0.1, 0.5, 0.9), "std": (0.2, 0.3, 0.4)})


def _recording_infer(outputs: List[torch.Tensor], seen: List[List[torch.Tensor]]):
    def infer(pathways):
        seen.append([p.clone() for p in pathways])
        batch = pathways[0].shape[0]
        probabilities = torch.stack([outputs.pop(0) for _ in range(batch)])
        # Logits stand-in: the probabilities scaled, so their combination is told apart from max/mean.
        return Outputs(logits=probabilities * 10, probabilities=probabilities, embedding=torch.ones(batch, 5))
    return infer


def test_bgr_models_get_flipped_channels_normalized_in_their_own_order():
    frames = torch.randint(0, 256, (4, 8, 12, 3), dtype=torch.uint8)  # T, H, W, RGB
    inputs = {}
    for order in ("RGB", "BGR"):
        seen: List[List[torch.Tensor]] = []
        contract = _contract(channel_order=order)
        list(run_windows([WindowJob("w", frames, 1)], contract, _recording_infer([torch.zeros(3)], seen), 4))
        inputs[order] = seen[0][1][0]  # fast pathway, (3, T, 8, 8)
    crop = frames[:, :, 2:10, :].permute(3, 0, 1, 2).float() / 255  # centre crop, (3, T, 8, 8)
    mean, std = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.3, 0.4])
    expected_rgb = (crop - mean[:, None, None, None]) / std[:, None, None, None]
    bgr = crop.flip(0)  # channel 0 is blue, normalized with the contract's first mean/std
    expected_bgr = (bgr - mean[:, None, None, None]) / std[:, None, None, None]
    assert torch.allclose(inputs["RGB"], expected_rgb, atol=1e-5)
    assert torch.allclose(inputs["BGR"], expected_bgr, atol=1e-5)


def test_model_outputs_carry_float32_logits_and_their_activation():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]).half()  # as autocast gives them
    outputs = model_outputs(logits, torch.ones(2, 4).half(), "sigmoid")
    assert outputs.logits.dtype == outputs.probabilities.dtype == outputs.embedding.dtype == torch.float32
    assert torch.equal(outputs.logits, logits.float())
    assert torch.equal(outputs.probabilities, torch.sigmoid(logits.float()))
    view = outputs.row(1)
    assert torch.equal(view.logits, logits[1].float()) and view.embedding.shape == (4,)


def test_sigmoid_views_combine_by_max_softmax_by_mean():
    frames = torch.zeros(4, 8, 24, 3, dtype=torch.uint8)
    views = [torch.tensor([0.9, 0.1, 0.2]), torch.tensor([0.2, 0.8, 0.1]), torch.tensor([0.1, 0.1, 0.3])]
    for activation, expected in (("sigmoid", torch.tensor([0.9, 0.8, 0.3])), ("softmax", torch.tensor([0.4, 1 / 3, 0.2]))):
        scores = list(run_windows([WindowJob("w", frames, 3)], _contract(activation=activation),
                                  _recording_infer(list(views), []), 2))
        assert torch.allclose(scores[0].probabilities, expected)
        assert torch.allclose(mean_scores(scores * 2, activation).probabilities, expected)
        # Every other output is averaged whatever the activation.
        assert torch.allclose(scores[0].outputs.logits, torch.stack(views).mean(0) * 10)


# -- the threshold option ---------------------------------------------------------------------------


def test_threshold_alone_returns_every_label_at_or_above_it():
    options = resolve_request_options({"threshold": "0.5"}, ServeOptions(), 4)
    assert (options.topk, options.threshold) == (4, 0.5)
    probabilities = [0.7, 0.5, 0.49, 0.9]
    picked = top_predictions(probabilities, ["a", "b", "c", "d"], options.topk, options.threshold)
    assert [p["label"] for p in picked] == ["d", "a", "b"]
    assert top_predictions(probabilities, ["a", "b", "c", "d"], 4, 0.95) == []


def test_threshold_with_topk_keeps_the_top_k_of_those_above_it():
    options = resolve_request_options({"threshold": "0.5", "topk": "2"}, ServeOptions(), 4)
    picked = top_predictions([0.7, 0.5, 0.49, 0.9], ["a", "b", "c", "d"], options.topk, options.threshold)
    assert [p["label"] for p in picked] == ["d", "a"]
    assert resolve_request_options({}, ServeOptions(), 4).threshold is None


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "high"])
def test_threshold_outside_0_1_is_a_400(bad):
    with pytest.raises(RequestError, match="threshold must be (in 0..1|a number)") as caught:
        resolve_request_options({"threshold": bad}, ServeOptions(), 4)
    assert caught.value.status == 400


def test_client_sends_threshold_and_drops_the_default_topk():
    import argparse

    from client.options import add_request_options, request_fields

    parser = argparse.ArgumentParser()
    add_request_options(parser)
    assert request_fields(parser.parse_args(["--threshold", "0.3"])) == {"threshold": "0.3"}
    assert request_fields(parser.parse_args(["--threshold", "0.3", "--topk", "2"])) == {"topk": "2", "threshold": "0.3"}
    assert request_fields(parser.parse_args([])) == {"topk": "5"}


# -- each variant: scripted == eager ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slowfast_r101", "slowfast_16x8_r101_50_50"])
def test_heavy_variant_exports_scripted_equal_to_eager(name, tmp_path):
    """The exporter's own checks (logits and embedding within 1e-4, batch 1 and 3, crops 224 and
    256, after saving and reloading), on random weights: minutes per variant on a loaded CPU."""
    from export.__main__ import export
    from export.save import load_with_contract

    contract = export(tmp_path / f"{name}.pt", "random", seed=0)
    _, saved = load_with_contract(tmp_path / f"{name}.pt")
    assert saved == contract and saved.model_name == saved.variant == name


# -- each variant: preprocessing against pytorchvideo's own pipeline -----------------------------------


def test_every_variant_preprocesses_like_the_default_or_is_checked_against_pytorchvideo(shared_videos):
    """R101 shares the default's preprocessing numbers (so tests/test_reference_parity.py covers it);
    the 16x8 samples 64 frames over 128/30 s and is compared here with the tutorial pipeline fed the
    same window and frame count, on a Kinetics clip (no resize: at most 1 level of rounding)."""
    from harness.reference import reference_pathways
    from tests.test_reference_parity import LEVEL, ours

    labels = read_label_file(VARIANTS[DEFAULT_VARIANT].labels_file)
    default = contract_for(VARIANTS[DEFAULT_VARIANT], labels)
    same = ("num_frames", "alpha", "window_seconds", "short_side", "crop_size", "mean", "std", "channel_order")
    r101 = contract_for(VARIANTS["slowfast_r101"], labels)
    assert [getattr(r101, f) for f in same] == [getattr(default, f) for f in same]
    contract = contract_for(VARIANTS["slowfast_16x8_r101_50_50"], labels)
    path = shared_videos / "tv__WUzgd7C1pWA.mp4"
    window, (slow, fast) = ours(path, contract)
    assert window[1] - window[0] == pytest.approx(128 / 30, abs=1e-3)
    ref_slow, ref_fast = reference_pathways(str(path), window, num_frames=contract.num_frames, alpha=contract.alpha)
    assert fast.shape == ref_fast.shape == (3, 64, 256, 256) and slow.shape == ref_slow.shape == (3, 16, 256, 256)
    assert float(((fast - ref_fast).abs() / LEVEL).max()) <= 1.01
    assert float(((slow - ref_slow).abs() / LEVEL).max()) <= 1.01
