"""TapTuneImageGrid: the cells are the images, the labels are drawn, bad input is named."""

from __future__ import annotations

import pytest
import torch

from taptune.nodes.common import NodeInputError
from taptune.nodes.image_grid import TapTuneImageGrid
from taptune.training.visuals import grid_shape, label_band_height


def _batch(count: int, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def _run(images, labels: str = "", columns: int = 0) -> torch.Tensor:
    # ComfyUI hands an input-list node every input as a list.
    return TapTuneImageGrid.execute(images=images, labels=[labels], columns=[columns]).result[0]


def test_cells_hold_the_images_in_reading_order_under_their_labels():
    images = _batch(3)
    grid = _run([images], "base\nadapted\n", columns=2)
    band = label_band_height(48)
    assert grid.shape == (1, 2 * (32 + band), 2 * 48, 3)
    for index in range(3):
        row, column = divmod(index, 2)
        top, left = row * (32 + band) + band, column * 48
        cell = grid[0, top : top + 32, left : left + 48]
        assert torch.allclose(cell, images[index], atol=1 / 255 + 1e-6)
    # Labelled strips have dark text; the third strip (no label) is blank white.
    assert grid[0, :band, :48].min() < 0.5 and grid[0, :band, 48:].min() < 0.5
    assert torch.all(grid[0, 32 + band : 32 + 2 * band, :48] == 1.0)


def test_a_list_of_differently_sized_images_becomes_one_grid():
    grid = _run([_batch(1, 32, 32), _batch(2, 64, 16, seed=1)], "a\nb\nc")
    assert grid.shape == (1, 32 + label_band_height(32), 3 * 32, 3)


def test_default_layout_is_one_row_up_to_six_then_square():
    assert grid_shape(5, 0) == (1, 5)
    assert grid_shape(7, 0) == (3, 3)
    assert grid_shape(4, 10) == (1, 4)


@pytest.mark.parametrize(
    ("call", "input_name"),
    [
        (lambda: _run([_batch(2)], "a\nb\nc"), "labels"),
        (lambda: _run([_batch(1)], "x" * 201), "labels"),
        (lambda: _run([_batch(1)], "a\x00"), "labels"),
        (lambda: _run([_batch(1)], columns=-1), "columns"),
        (lambda: _run([_batch(1)], columns=10**9), "columns"),
        (lambda: _run(["not an image"]), "images"),
        (lambda: _run([]), "images"),
        (lambda: _run([torch.zeros(300, 4, 4, 3)]), "images"),
        (lambda: _run([torch.zeros(1, 1, 1, 3).expand(1, 9000, 9000, 3)]), "images"),
    ],
)
def test_bad_input_names_the_node_and_the_input(call, input_name):
    with pytest.raises(NodeInputError) as caught:
        call()
    assert f"TapTuneImageGrid: input '{input_name}'" in str(caught.value)
