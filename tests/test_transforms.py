"""Tensor transforms: shapes, dtypes and values against hand-computed ones."""

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
