"""Tensor transforms: shapes, dtypes and values against hand-computed ones."""

import sys

import pytest
import torch

from handler.transforms import crop_and_normalize, pack_pathways, resize_short_side, rotate_frames, slow_indices


def test_crop_and_normalize_values_and_layout():
    frames = torch.zeros(2, 4, 6, 3, dtype=torch.uint8)
    frames[0, 1, 2] = torch.tensor([255, 0, 51], dtype=torch.uint8)  # inside the crop at (1, 2)
    out = crop_and_normalize(frames, [(1, 2)], crop_size=2, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    assert out.shape == (1, 3, 2, 2, 2) and out.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.45) / 0.225, (0.0 - 0.45) / 0.225, (0.2 - 0.45) / 0.225])
    assert torch.allclose(out[0, :, 0, 0, 0], expected, atol=1e-6)
    assert torch.allclose(out[0, :, 1, 1, 1], torch.full((3,), -2.0), atol=1e-6)  # black -> -0.45/0.225


def test_crop_and_normalize_equals_the_float_pipeline():
    frames = torch.randint(0, 256, (8, 20, 30, 3), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    ours = crop_and_normalize(frames, [(3, 5)], crop_size=12, mean=mean, std=std)[0]
    reference = frames.permute(3, 0, 1, 2).float() / 255.0
    reference = (reference - torch.tensor(mean)[:, None, None, None]) / torch.tensor(std)[:, None, None, None]
    assert torch.allclose(ours, reference[:, :, 3:15, 5:17], atol=1e-5)


def test_several_crops_stack_as_views():
    frames = torch.arange(10 * 10, dtype=torch.uint8).reshape(1, 10, 10, 1).expand(1, 10, 10, 3).contiguous()
    out = crop_and_normalize(frames, [(0, 0), (0, 5)], crop_size=5, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
    assert out.shape == (2, 3, 1, 5, 5)
    assert out[0, 0, 0, 0, 0] == 0 and out[1, 0, 0, 0, 0] == 5


def test_slow_pathway_uses_pytorchvideo_packing_indices():
    assert slow_indices(32, 4) == [0, 4, 8, 13, 17, 22, 26, 31]
    fast = torch.arange(32, dtype=torch.float32).reshape(1, 1, 32, 1, 1).expand(2, 3, 32, 4, 4)
    slow, same_fast = pack_pathways(fast, 4)
    assert slow.shape == (2, 3, 8, 4, 4) and same_fast is fast
    assert slow[0, 0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]


def test_rotation_follows_the_display_matrix_direction():
    # A 2x3 frame: FFmpeg rotation -90 (display matrix) means "turn clockwise to display".
    frame = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.uint8).reshape(1, 2, 3, 1)
    clockwise = rotate_frames(frame, -90)[0, :, :, 0]
    assert clockwise.tolist() == [[4, 1], [5, 2], [6, 3]]
    counter = rotate_frames(frame, 90)[0, :, :, 0]
    assert counter.tolist() == [[3, 6], [2, 5], [1, 4]]
    assert rotate_frames(frame, 180)[0, :, :, 0].tolist() == [[6, 5, 4], [3, 2, 1]]
    assert rotate_frames(frame, 0) is frame


def test_resize_short_side_keeps_aspect_and_dtype():
    frames = torch.full((2, 100, 200, 3), 77, dtype=torch.uint8)
    out = resize_short_side(frames, 50)
    assert out.shape == (2, 50, 100, 3) and out.dtype == torch.uint8 and int(out.float().mean()) == 77


PAGE_FAULT_PROBE = """
import resource, sys, torch
from handler.contract import PreprocessContract
from handler.heap import fix_mmap_threshold
from handler.run import view_pathways
from export.reference import default_contract
assert fix_mmap_threshold(), "not glibc"
torch.set_num_threads(1)
contract = default_contract()
frames = torch.randint(0, 256, (contract.num_frames, contract.short_side, 455, 3), dtype=torch.uint8)
views = [(frames, (0, 100))]
view_pathways(views, contract)  # first call: code and libraries paged in
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    slow, fast = view_pathways(views, contract)
    del slow, fast
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="page-fault counts (getrusage ru_minflt) and glibc's mallopt")
def test_a_views_preprocess_maps_only_the_models_input() -> None:
    # In a worker every buffer of 1 MiB or more is a fresh mapping (handler/heap.py): each float
    # temporary of the preprocess costs its size in page faults (issue 26: ~110 MB a view made the
    # worker's preprocess several times slower than its arithmetic). Only the output may be mapped:
    # fast (3,32,256,256) + slow (3,8,256,256) float32 = 31.5 MB = 7,680 pages of 4 KiB.
    import subprocess

    from harness.paths import REPO

    run = subprocess.run([sys.executable, "-c", PAGE_FAULT_PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    faults = float(run.stdout.strip().splitlines()[-1])
    output_pages = (3 * 32 * 256 * 256 + 3 * 8 * 256 * 256) * 4 / 4096
    assert faults <= output_pages * 1.1, f"{faults:.0f} page faults a view; its input alone is {output_pages:.0f} pages"
