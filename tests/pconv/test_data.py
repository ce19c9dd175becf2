"""The training data stream: crops, flips, masks, and a resumable, seeded sample order."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from support.training import box_masks, smooth_images

from aerial_inpainting.pconv.data import (
    AugmentConfig,
    InpaintingTrainDataset,
    ResumableSampler,
    make_train_loader,
    to_image_tensor,
    validation_batch,
)


@pytest.fixture
def dataset() -> InpaintingTrainDataset:
    images = np.random.default_rng(0).integers(0, 256, (5, 24, 20, 3), dtype=np.uint8)
    return InpaintingTrainDataset(
        images, [4, 0, 2], list(box_masks(3, 24, 1).values()), size=8, seed=3
    )


def _windows(array: np.ndarray, size: int) -> list[np.ndarray]:
    h, w = array.shape[:2]
    return [
        array[t : t + size, x : x + size] for t in range(h - size + 1) for x in range(w - size + 1)
    ]


def test_item_is_a_crop_of_its_image_possibly_flipped(dataset):
    for k, i in itertools.product(range(6), range(3)):
        image, mask = dataset[(k, i)]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert mask.shape == (1, 8, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
        crop = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        source = dataset.images[dataset.rows[i]]
        variants = [crop, crop[:, ::-1], crop[::-1], crop[::-1, ::-1]]
        assert any(np.array_equal(v, w) for v in variants for w in _windows(source, 8))


def test_same_key_same_sample_other_key_other_sample(dataset):
    a, b = dataset[(11, 1)], dataset[(11, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [dataset[(k, 1)] for k in range(12, 20)]
    assert any(not torch.equal(a[0], o[0]) for o in others)
    assert any(not torch.equal(a[1], o[1]) for o in others)


def test_masks_come_from_the_pool_up_to_flips_and_turns():
    pool = [np.kron(np.array([[1, 0], [1, 1]], dtype=np.uint8), np.ones((4, 4), dtype=np.uint8))]
    images = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    ds = InpaintingTrainDataset(images, [0], pool, size=8, seed=0)
    seen = set()
    for k in range(40):
        mask = ds[(k, 0)][1][0].numpy().astype(np.uint8)
        assert mask.sum() == 48  # one quarter is a hole, whatever the orientation
        seen.add(mask.tobytes())
    assert len(seen) == 4  # the hole visits all four quadrants
    fixed = InpaintingTrainDataset(
        images, [0], pool, 8, 0, AugmentConfig(False, False, False, False)
    )
    assert all(np.array_equal(fixed[(k, 0)][1][0].numpy(), pool[0]) for k in range(5))


def test_sampler_epochs_are_permutations_and_restart_anywhere():
    full = list(ResumableSampler(7, seed=5, stop=21))
    assert [k for k, _ in full] == list(range(21))
    for epoch in range(3):
        assert sorted(p for _, p in full[epoch * 7 : (epoch + 1) * 7]) == list(range(7))
    assert full[:7] != full[7:14] or full[7:14] != full[14:21]
    assert list(ResumableSampler(7, seed=5, start=9, stop=21)) == full[9:]
    ranks = [list(ResumableSampler(7, seed=5, stop=21, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == full
    assert len(ResumableSampler(7, seed=5, start=9, stop=21)) == 12


def test_loader_resumes_mid_stream_and_workers_do_not_change_batches():
    images = smooth_images(6, 16, seed=0)
    ds = InpaintingTrainDataset(images, range(6), list(box_masks(3, 16, 0).values()), 8, seed=1)
    full = list(make_train_loader(ds, batch_size=4, start_step=0, total_steps=5))
    tail = list(make_train_loader(ds, batch_size=4, start_step=3, total_steps=5, num_workers=1))
    assert len(full) == 5 and len(tail) == 2
    for (a_img, a_msk), (b_img, b_msk) in zip(full[3:], tail, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_msk, b_msk)


def test_bad_inputs_are_named():
    images = smooth_images(2, 16, seed=0)
    masks = list(box_masks(1, 16, 0).values())
    with pytest.raises(ValueError, match="train_size=32 is larger than the images"):
        InpaintingTrainDataset(images, [0, 1], masks, size=32, seed=0)
    with pytest.raises(ValueError, match="mask pool is empty"):
        InpaintingTrainDataset(images, [0], [], size=8, seed=0)
    with pytest.raises(ValueError, match="rows \\[5\\] outside"):
        InpaintingTrainDataset(images, [5], masks, size=8, seed=0)


def test_validation_batch_centre_crops_to_a_multiple():
    images = smooth_images(2, 18, seed=0)
    masks = {"a": np.ones((18, 18), np.uint8), "b": np.zeros((18, 18), np.uint8)}
    imgs, msks = validation_batch(images, [1, 0], masks, ["a", "b"], multiple=8)
    assert imgs.shape == (2, 3, 16, 16) and msks.shape == (2, 1, 16, 16)
    assert torch.equal(
        imgs[0], torch.from_numpy(images[1, 1:17, 1:17]).permute(2, 0, 1).float() / 255
    )
    assert msks[0].min() == 1 and msks[1].max() == 0
    with pytest.raises(ValueError, match="'zz' that is not in test_masks"):
        validation_batch(images, [0], masks, ["zz"], multiple=8)


def test_image_tensor_of_a_read_only_array_is_exact_and_warning_free():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    images.setflags(write=False)  # as a memory-mapped images.npy is
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's non-writable-array UserWarning would raise
        tensor = to_image_tensor(images)
    expected = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    assert tensor.dtype == torch.float32 and tensor.shape == (2, 3, 8, 6)
    np.testing.assert_array_equal(tensor.numpy(), expected)
