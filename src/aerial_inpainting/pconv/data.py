"""Training data: seeded, resumable streams of (image, mask) pairs for the partial-conv U-Net.

Determinism is by construction rather than by saved state: sample number ``k`` of a run
(counted over the whole run, across epochs) always gets the same image, crop, flips and mask,
because the image comes from a per-epoch permutation seeded with ``(seed, epoch)`` and the
augmentations from a generator seeded with ``(seed, k)``. So a resumed run just restarts the
stream at ``k = step * batch_size``, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

# Crops whose hole ratio falls outside this range are redrawn (a few times) so that most
# training samples carry a useful hole; the last draw is kept regardless.
_HOLE_RATIO_RANGE = (0.01, 0.7)
_MASK_CROP_TRIES = 6


@dataclass(frozen=True)
class AugmentConfig:
    """Which random augmentations to apply (all seeded).

    ``dihedral``: image and mask together get one of the eight flips and quarter turns (the
    dihedral group D4; aerial views have no "up"); it supersedes ``hflip``/``vflip``.
    ``mask_flip``/``mask_rot90`` apply to masks drawn from a fixed pool only.
    """

    hflip: bool = True
    vflip: bool = True
    mask_flip: bool = True
    mask_rot90: bool = True
    dihedral: bool = False


# A mask generator: (rng, height, width) -> uint8 (height, width) mask, 1 = valid.
MaskGenerator = Callable[[np.random.Generator, int, int], np.ndarray]


def dihedral_transform(array: np.ndarray, k: int) -> np.ndarray:
    """Element ``k`` (0..7) of D4 on the two leading axes: ``k % 4`` quarter turns, then a
    left-right flip when ``k >= 4``. ``k = 0`` is the identity."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def to_image_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (H, W, 3) -> float32 (N, 3, H, W) / (3, H, W) in [0, 1]."""
    # A float32 copy made by NumPy: works for read-only inputs (a memory-mapped images.npy)
    # without PyTorch's non-writable-array warning; the values are those of ``.float()``.
    tensor = torch.from_numpy(np.array(images, dtype=np.float32))
    return tensor.movedim(-1, -3).div_(255.0)


def to_mask_tensor(masks: np.ndarray) -> torch.Tensor:
    """uint8/bool (N, H, W) or (H, W) with 1 = valid -> float32 (N, 1, H, W) / (1, H, W)."""
    tensor = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
    return tensor.unsqueeze(-3)


class InpaintingTrainDataset(Dataset):
    """Random crops of the training images paired with random masks.

    Masks come from ``mask_generator`` when given: drawn on the fly at the full image size
    and cropped with the image (the same window), so a crop sees holes at the scale of the
    photograph; otherwise from the fixed pool ``masks`` (flipped, turned, cropped).

    Items are addressed by ``(k, i)``: ``k`` is the run-wide sample number that seeds the
    augmentation, ``i`` the position in ``rows``. A plain int ``i`` means ``(i, i)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: Sequence[int],
        masks: Sequence[np.ndarray],
        size: int,
        seed: int,
        augment: AugmentConfig | None = None,
        mask_generator: MaskGenerator | None = None,
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images: expected a uint8 array (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if len(rows) == 0:
            raise ValueError("train split is empty: no images to train on")
        if len(masks) == 0 and mask_generator is None:
            raise ValueError("train mask pool is empty: no masks to train with")
        bad_rows = [r for r in rows if not 0 <= int(r) < len(images)]
        if bad_rows:
            raise ValueError(
                f"train split refers to rows {bad_rows[:5]} outside the images array (N={len(images)})"
            )
        height, width = images.shape[1:3]
        self._check_size(size, "training.train_size", height, width)
        self.images = images
        self.rows = [int(r) for r in rows]
        self.masks = [(np.asarray(m) > 0).astype(np.uint8) for m in masks]
        self.size = int(size)
        self.seed = int(seed)
        self.augment = augment or AugmentConfig()
        self.mask_generator = mask_generator

    @staticmethod
    def _check_size(size: int, name: str, height: int, width: int) -> None:
        if size > height or size > width:
            raise ValueError(
                f"{name}={size} is larger than the images ({height}x{width}); lower {name}"
            )

    def with_size(self, size: int, name: str = "training.train_size") -> InpaintingTrainDataset:
        """The same stream (images, masks, seed, augmentation) with crops of ``size`` pixels.

        Sample ``k`` keeps its image and its seeded generator ``(seed, k)``; its crop window,
        mask crop and transform are drawn from that generator at the new size (so they differ
        from the ``train_size`` draws, and are as reproducible). Shares the image array (no
        copy). Raises ValueError naming ``name`` when ``size`` exceeds the images.
        """
        self._check_size(int(size), name, *self.images.shape[1:3])
        other = copy.copy(self)
        other.size = int(size)
        return other

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        k, i = (key, key) if isinstance(key, int) else key
        rng = np.random.default_rng([self.seed, int(k)])
        if self.mask_generator is not None:
            image, mask = self._generated_pair(self.images[self.rows[i]], rng)
        else:
            image = self._crop(self.images[self.rows[i]], rng)
            if not self.augment.dihedral:
                if self.augment.hflip and rng.random() < 0.5:
                    image = image[:, ::-1]
                if self.augment.vflip and rng.random() < 0.5:
                    image = image[::-1]
            mask = self._random_mask(rng)
        if self.augment.dihedral:
            transform = int(rng.integers(8))
            image = dihedral_transform(image, transform)
            mask = dihedral_transform(mask, transform)
        return to_image_tensor(image), to_mask_tensor(mask)

    def _generated_pair(
        self, array: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A crop of the image and the same window of a full-size mask drawn for it."""
        height, width = array.shape[:2]
        top = int(rng.integers(0, height - self.size + 1))
        left = int(rng.integers(0, width - self.size + 1))
        window = (slice(top, top + self.size), slice(left, left + self.size))
        crop = np.asarray(array[window])
        mask = np.ones((self.size, self.size), np.float32)
        for _ in range(_MASK_CROP_TRIES):
            mask = np.asarray(self.mask_generator(rng, height, width)[window], np.float32)
            if _HOLE_RATIO_RANGE[0] <= 1.0 - float(mask.mean()) <= _HOLE_RATIO_RANGE[1]:
                break
        return crop, mask

    def _crop(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = array.shape[:2]
        top = int(rng.integers(0, height - self.size + 1))
        left = int(rng.integers(0, width - self.size + 1))
        return np.asarray(array[top : top + self.size, left : left + self.size])

    def _random_mask(self, rng: np.random.Generator) -> np.ndarray:
        mask = self.masks[int(rng.integers(len(self.masks)))]
        if self.augment.mask_rot90:
            mask = np.rot90(mask, int(rng.integers(4)))
        if self.augment.mask_flip:
            if rng.random() < 0.5:
                mask = mask[:, ::-1]
            if rng.random() < 0.5:
                mask = mask[::-1]
        if min(mask.shape) < self.size:
            # A pool of masks smaller than the crops: scale up (nearest keeps it binary).
            reps = -(-self.size // min(mask.shape))
            mask = np.kron(mask, np.ones((reps, reps), dtype=mask.dtype))
        if mask.shape == (self.size, self.size):
            return mask.astype(np.float32)
        crop = mask
        for _ in range(_MASK_CROP_TRIES):
            crop = self._crop(mask, rng)
            hole_ratio = 1.0 - float(crop.mean())
            if _HOLE_RATIO_RANGE[0] <= hole_ratio <= _HOLE_RATIO_RANGE[1]:
                break
        return crop.astype(np.float32)


class ResumableSampler(Sampler):
    """Run-wide stream of ``(k, row_position)`` keys, restartable at any sample number.

    Epoch ``e`` visits the dataset in the permutation drawn from ``default_rng([seed, e])``.
    ``rank``/``world_size`` take every ``world_size``-th key, leaving room for data-parallel
    training where each process reads its own share of the same stream.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        start: int = 0,
        stop: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.seed, self.start, self.stop = int(n), int(seed), int(start), stop
        self.rank, self.world_size = int(rank), int(world_size)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0x5EED, int(epoch)]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start + self.rank
        epoch, perm = -1, np.empty(0, dtype=np.int64)
        while self.stop is None or k < self.stop:
            if k // self.n != epoch:
                epoch = k // self.n
                perm = self.permutation(epoch)
            yield k, int(perm[k % self.n])
            k += self.world_size

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an unbounded ResumableSampler has no length")
        return max(0, -(-(self.stop - self.start - self.rank) // self.world_size))


def make_train_loader(
    dataset: InpaintingTrainDataset,
    batch_size: int,
    start_step: int,
    total_steps: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader yielding batches ``start_step + 1 .. total_steps`` of the run's stream."""
    sampler = ResumableSampler(
        len(dataset),
        seed=dataset.seed,
        start=start_step * batch_size * world_size,
        stop=total_steps * batch_size * world_size,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=False),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def validation_batch(
    images: np.ndarray,
    rows: Sequence[int],
    masks: Mapping[str, np.ndarray],
    mask_ids: Sequence[str],
    multiple: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed images with their fixed masks, centre-cropped to a multiple of ``multiple``."""
    image_list, mask_list = [], []
    for row, mask_id in zip(rows, mask_ids, strict=True):
        image = np.asarray(images[int(row)])
        if mask_id not in masks:
            raise ValueError(f"test_mask_index names mask {mask_id!r} that is not in test_masks")
        mask = np.asarray(masks[mask_id])
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"test mask {mask_id!r} is {mask.shape}, its image (row {row}) is {image.shape[:2]}"
            )
        height = image.shape[0] // multiple * multiple
        width = image.shape[1] // multiple * multiple
        if height == 0 or width == 0:
            raise ValueError(
                f"test images ({image.shape[0]}x{image.shape[1]}) are smaller than 2**depth={multiple}"
            )
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        image_list.append(image[top : top + height, left : left + width])
        mask_list.append((mask[top : top + height, left : left + width] > 0).astype(np.uint8))
    return to_image_tensor(np.stack(image_list)), to_mask_tensor(np.stack(mask_list))
