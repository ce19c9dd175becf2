"""The validation grids: titled columns, holes in the colour the title names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aerial_inpainting.tracking import (
    GRID_COLUMNS,
    GRID_SEPARATOR,
    grid_header_height,
    make_grid,
)


@pytest.mark.parametrize("tile", [32, 256])
def test_grid_has_a_title_over_each_of_its_five_columns(tile: int) -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, tile, tile) * 0.5 + 0.25
    masks = torch.ones(2, 1, tile, tile)
    masks[:, :, tile // 4 : tile // 2, tile // 3 : tile // 2] = 0
    output = torch.rand(2, 3, tile, tile)
    comp = images * masks + output * (1 - masks)
    grid = make_grid(images, masks, output, comp)
    header = grid_header_height(tile)
    assert len(GRID_COLUMNS) == 5 and GRID_COLUMNS[0] == "input (holes in magenta)"
    assert grid.shape == (header + 2 * tile + GRID_SEPARATOR, 5 * tile + 4 * GRID_SEPARATOR, 3)
    # the title strip: white, with dark text over every column and none over the separators
    strip = grid[:header]
    for c in range(5):
        x0 = c * (tile + GRID_SEPARATOR)
        assert (strip[:, x0 : x0 + tile] < 128).any(), f"no title over column {c}"
        if c:
            assert (strip[:, x0 - GRID_SEPARATOR : x0] == 255).all()
    # the tiles below, computed here by hand: holes magenta in the input, then the mask,
    # output, composite and truth of image 1 (row 2)
    top = header + tile + GRID_SEPARATOR
    x = (images[1].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    hole = masks[1, 0].numpy() == 0
    expected_input = x.copy()
    expected_input[hole] = (255, 0, 255)
    np.testing.assert_array_equal(grid[top : top + tile, :tile], expected_input)
    np.testing.assert_array_equal(
        grid[top : top + tile, tile + GRID_SEPARATOR : 2 * tile + 2][..., 0], np.where(hole, 0, 255)
    )
    truth_x = 4 * (tile + GRID_SEPARATOR)
    np.testing.assert_array_equal(grid[top : top + tile, truth_x : truth_x + tile], x)
