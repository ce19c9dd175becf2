"""DeviceTrainStream: each batch is the NumPy crop + dihedral transform of the drawn image and
mask (checked against ``np`` slicing and ``dihedral_transform``), seeded by the step alone,
and usable by the training loop in place of the CPU dataset.

Tests taking ``device`` run on the CPU and, when present, on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.training import box_masks, smooth_images

from aerial_inpainting.pconv import train as T
from aerial_inpainting.pconv.data import dihedral_transform, validation_batch
from aerial_inpainting.pconv.device_stream import DeviceTrainStream


def _stream(device: str = "cpu", size: int = 12, **kwargs) -> DeviceTrainStream:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 20, 20, 3), dtype=np.uint8)
    masks = (rng.uniform(size=(7, 20, 20)) > 0.3).astype(np.uint8)
    return DeviceTrainStream(images, masks, size=size, seed=3, device=device, **kwargs)


def test_each_sample_is_the_numpy_crop_and_transform_of_its_draws(device):
    stream = _stream(device)
    images, masks = stream.batch(step=4, batch_size=64)
    draws = stream.draws(step=4, batch_size=64)
    assert images.shape == (64, 3, 12, 12) and masks.shape == (64, 1, 12, 12)
    assert images.dtype == torch.float32 and masks.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    source_images = stream.images.cpu().numpy()
    source_masks = stream.masks.cpu().numpy()
    assert set(draws.transform.tolist()) == set(range(8))  # 64 draws reach every element
    for b in range(64):
        top, left, k = int(draws.top[b]), int(draws.left[b]), int(draws.transform[b])
        window = (slice(top, top + 12), slice(left, left + 12))
        image = dihedral_transform(source_images[int(draws.image[b])][window], k)
        mask = dihedral_transform(source_masks[int(draws.mask[b])][window], k)
        got = (images[b].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(got, image)
        np.testing.assert_array_equal(masks[b, 0].cpu().numpy(), mask)


def test_a_batch_depends_on_its_step_alone_and_resumes_mid_stream():
    stream = _stream()
    all_batches = list(stream.batches(batch_size=3, start_step=0, total_steps=5))
    resumed = list(_stream().batches(batch_size=3, start_step=2, total_steps=5))
    assert len(all_batches) == 5 and len(resumed) == 3
    for (a, am), (b, bm) in zip(all_batches[2:], resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(am, bm)
    assert not torch.equal(all_batches[0][0], all_batches[1][0])
    other_rank, _ = stream.batch(step=2, batch_size=3, rank=1)
    assert not torch.equal(other_rank, all_batches[2][0])


def test_without_dihedral_crops_keep_their_orientation_and_sizes_are_checked():
    stream = _stream(dihedral=False)
    assert not stream.draws(step=0, batch_size=16).transform.any()
    larger = stream.with_size(20, name="training.late_train_size")
    assert larger.size == 20 and stream.size == 12 and larger.images is stream.images
    with pytest.raises(ValueError, match=r"training\.late_train_size=24"):
        stream.with_size(24, name="training.late_train_size")
    with pytest.raises(ValueError, match="uint8"):
        DeviceTrainStream(np.zeros((2, 8, 8, 3), np.float32), np.ones((1, 8, 8)), 4, 0)
    with pytest.raises(ValueError, match="masks"):
        DeviceTrainStream(np.zeros((2, 8, 8, 3), np.uint8), np.ones((1, 8, 6)), 4, 0)


def test_the_training_loop_trains_and_resumes_on_a_device_stream(
    make_params, tmp_path, device, monkeypatch
):
    """Steps on batches drawn on ``device``, interrupted and resumed: the same weights as an
    uninterrupted run (bit for bit on the CPU, to float tolerance on CUDA)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    images = smooth_images(10, 32, seed=0)
    masks = box_masks(6, 32, seed=1)

    def data() -> T.TrainingData:
        stream = DeviceTrainStream(
            images[:8], np.stack(list(masks.values())), size=16, seed=5, device=device
        )
        vi, vm = validation_batch(images, [8, 9], masks, ["mask_000", "mask_001"], multiple=4)
        return T.TrainingData(stream, vi, vm, {"n": 8, "stream": "device"})

    common = {"device": device, "late_train_size": 32, "late_train_size_from": 0.5}
    straight = T.train(T.TrainConfig.from_params(make_params(**common)), data())
    params = make_params(checkpoint_dir=str(tmp_path / "b"), **common)
    T.train(T.TrainConfig.from_params(params), data(), stop_at_step=2)
    resumed = T.train(T.TrainConfig.from_params(params), data())
    assert resumed.info["resumed_from_step"] == 2 and resumed.info["final_step"] == 7
    for key, value in straight.model.state_dict().items():
        if device == "cpu":
            assert torch.equal(value, resumed.model.state_dict()[key]), key
        else:
            torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)
