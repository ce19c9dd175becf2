"""Training batches drawn where the model trains: images and masks held in device memory.

:class:`~aerial_inpainting.pconv.data.InpaintingTrainDataset` prepares each sample in NumPy on
the CPU (DataLoader workers); on a GPU that is the bottleneck long before the network is. A
:class:`DeviceTrainStream` holds the decoded images (uint8) and a pool of full-size masks in
the device's memory and draws each batch with a few tensor operations there:

* for sample ``b`` of step ``t``: an image (uniformly, with replacement), a mask of the pool,
  one crop window used for both, and one of the eight flips and quarter turns (the dihedral
  group D4, as :func:`~aerial_inpainting.pconv.data.dihedral_transform` numbers them);
* every draw comes from a generator seeded with ``(seed, t, rank)``: batch ``t`` is the same
  whatever came before it, so a resumed run restarts the stream at its step and needs no saved
  state (the same contract as the CPU stream);
* crop and transform are one gather: output pixel ``(a, b)`` reads the crop's pixel
  ``T_k^{-1}(a, b)``.

Plain PyTorch, usable without Kedro; ``train`` takes one as ``TrainingData.train``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BatchDraws:
    """The random choices of one batch, each a (B,) int64 tensor: image row, pool mask, crop
    window's top and left corner, dihedral element ``k`` (0..7)."""

    image: torch.Tensor
    mask: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    transform: torch.Tensor


def _as_tensor(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    return tensor.to(device)


class DeviceTrainStream:
    """Seeded batches of ``size`` x ``size`` crops with masks, drawn on ``device``.

    ``images``: uint8 (N, H, W, 3); ``masks``: (M, H, W) with 1 = valid (uint8 or bool), the
    images' size; ``dihedral``: draw one of the 8 flips/quarter turns per sample (else none).
    Raises ValueError for arrays of other shapes or types, an empty image set or mask pool,
    or ``size`` larger than the images.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        masks: np.ndarray | torch.Tensor,
        size: int,
        seed: int,
        device: str | torch.device = "cpu",
        dihedral: bool = True,
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise ValueError(f"images: expected uint8 (N, H, W, 3), got {tuple(images.shape)}")
        if str(images.dtype) not in ("uint8", "torch.uint8"):
            raise ValueError(f"images: expected uint8, got {images.dtype}")
        if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(images.shape[1:3]) or not len(masks):
            raise ValueError(
                f"masks: expected a non-empty pool (M, {images.shape[1]}, {images.shape[2]}), "
                f"got {tuple(masks.shape)}"
            )
        self.device = torch.device(device)
        self.images = _as_tensor(images, self.device)
        self.masks = (_as_tensor(masks, self.device) > 0).to(torch.uint8)
        self.seed = int(seed)
        self.dihedral = bool(dihedral)
        self.size = self._checked_size(size, "training.train_size")

    def _checked_size(self, size: int, name: str) -> int:
        height, width = self.images.shape[1:3]
        if not 0 < int(size) <= min(height, width):
            raise ValueError(f"{name}={size} must be in 1..{min(height, width)} (the images' side)")
        return int(size)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def with_size(self, size: int, name: str = "training.train_size") -> DeviceTrainStream:
        """The same stream with ``size``-pixel crops (the tensors are shared, not copied)."""
        other = copy.copy(self)
        other.size = self._checked_size(size, name)
        return other

    def draws(self, step: int, batch_size: int, rank: int = 0) -> BatchDraws:
        """The random choices of batch ``step`` of process ``rank`` (see the module docstring)."""
        generator = torch.Generator(device=self.device)
        state = np.random.SeedSequence([self.seed, int(step), int(rank)]).generate_state(1)
        generator.manual_seed(int(state[0]))
        height, width = self.images.shape[1:3]

        def draw(high: int) -> torch.Tensor:
            return torch.randint(high, (batch_size,), generator=generator, device=self.device)

        return BatchDraws(
            image=draw(len(self.images)),
            mask=draw(len(self.masks)),
            top=draw(height - self.size + 1),
            left=draw(width - self.size + 1),
            transform=draw(8)
            if self.dihedral
            else torch.zeros(batch_size, dtype=torch.int64, device=self.device),
        )

    def _source_pixels(self, draws: BatchDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and columns (B, s, s) in the full image that each output pixel reads."""
        s = self.size
        a = torch.arange(s, device=self.device).view(1, s, 1).expand(1, s, s)
        b = torch.arange(s, device=self.device).view(1, 1, s).expand(1, s, s)
        k = draws.transform.view(-1, 1, 1)
        b = torch.where(k >= 4, s - 1 - b, b)  # the left-right flip comes last: undo it first
        # np.rot90 by r quarter turns: out[a, b] = in[u, v] with (u, v) = (a, b), (b, s-1-a),
        # (s-1-a, s-1-b), (s-1-b, a) for r = 0, 1, 2, 3.
        r = k % 4
        u = torch.where(
            r == 0, a, torch.where(r == 1, b, torch.where(r == 2, s - 1 - a, s - 1 - b))
        )
        v = torch.where(
            r == 0, b, torch.where(r == 1, s - 1 - a, torch.where(r == 2, s - 1 - b, a))
        )
        return u + draws.top.view(-1, 1, 1), v + draws.left.view(-1, 1, 1)

    def batch(self, step: int, batch_size: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step``: float32 images (B, 3, s, s) in [0, 1] (channels_last strides) and
        float32 masks (B, 1, s, s), 1 = valid, on the stream's device."""
        draws = self.draws(step, batch_size, rank)
        rows, cols = self._source_pixels(draws)
        images = self.images[draws.image.view(-1, 1, 1), rows, cols]  # (B, s, s, 3)
        masks = self.masks[draws.mask.view(-1, 1, 1), rows, cols]  # (B, s, s)
        return images.permute(0, 3, 1, 2).float().div_(255.0), masks.unsqueeze(1).float()

    def batches(
        self,
        batch_size: int,
        start_step: int,
        total_steps: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_step + 1 .. total_steps`` of process ``rank`` (``world_size`` only
        names the contract shared with the CPU loader: each rank draws its own batches)."""
        del world_size
        for step in range(int(start_step), int(total_steps)):
            yield self.batch(step, batch_size, rank)
