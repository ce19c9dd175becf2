"""aerial-inpaint --input-dir: every pair, bad pairs reported and skipped, no overwrite, CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from support.images import box_mask, read_png, smooth_image, write_png

from aerial_inpainting.inpaint_cli import REPORT_COLUMNS, main

SIZE = (24, 40)
BOXES = [(4, 6, 12, 20)]


def _folders(tmp_path: Path) -> tuple[Path, Path, Path, dict[str, np.ndarray]]:
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    mask = box_mask(*SIZE, BOXES) * 255
    pictures = {}
    for index, stem in enumerate(["a", "b"]):
        pictures[stem] = smooth_image(*SIZE, seed=index)
        write_png(images / f"{stem}.png", pictures[stem])
        write_png(masks / f"{stem}.png", mask)
    write_png(images / "nomask.png", smooth_image(*SIZE, seed=5))  # no mask: fails
    write_png(images / "small.png", smooth_image(10, 10))  # mask of another size: fails
    write_png(masks / "small.png", box_mask(*SIZE, BOXES) * 255)
    write_png(images / "full.png", smooth_image(*SIZE, seed=6))  # mask without hole
    write_png(masks / "full.png", np.full(SIZE, 255, np.uint8))
    (images / "junk.png").write_bytes(b"not an image")  # unreadable: fails
    write_png(masks / "junk.png", mask)
    write_png(masks / "orphan.png", mask)  # mask without image: listed, not a failure
    (images / ".hidden.png").write_bytes(b"ignored")
    (images / "notes.txt").write_text("ignored")
    return images, masks, out, pictures


def _report(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == REPORT_COLUMNS
    return {Path(row["file"] or row["mask"]).stem: row for row in rows}


def _run(capsys, args: list) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_folder_run_processes_good_pairs_and_reports_bad_ones(tmp_path, model_file, capsys):
    images, masks, out, pictures = _folders(tmp_path)
    args = ["--input-dir", images, "--mask-dir", masks, "--output-dir", out]
    code, err = _run(capsys, [*args, "--model", model_file, "--device", "cpu"])
    assert code == 1  # some pairs failed
    keep = box_mask(*SIZE, BOXES) == 1
    for stem, picture in pictures.items():
        result = read_png(out / f"{stem}.png")
        np.testing.assert_array_equal(result[keep], picture[keep])
        assert not np.array_equal(result[~keep], picture[~keep])
    report = _report(out / "inpaint_report.csv")
    assert set(report) == {"a", "b", "nomask", "small", "full", "junk", "orphan"}
    assert report["a"]["status"] == "inpainted"
    assert float(report["a"]["hole_ratio"]) == pytest.approx((~keep).mean(), abs=1e-6)
    assert float(report["a"]["seconds"]) >= 0
    assert report["a"]["output"] == str(out / "a.png")
    assert report["full"]["status"] == "unchanged"
    np.testing.assert_array_equal(read_png(out / "full.png"), read_png(images / "full.png"))
    for stem, words in {
        "nomask": "no mask named nomask",
        "small": "same size",
        "junk": "junk.png",
    }.items():
        assert report[stem]["status"] == "failed" and words in report[stem]["reason"], stem
        assert words in err
        assert not (out / f"{stem}.png").exists()
    assert report["orphan"]["status"] == "ignored"
    assert "2 inpainted, 1 unchanged" in err and "3 failed" in err


def test_existing_results_are_kept_unless_overwrite(tmp_path, model_file, capsys):
    images, masks, out, _ = _folders(tmp_path)
    for name in ["nomask", "small", "junk"]:
        (images / f"{name}.png").unlink()
    base = ["--input-dir", images, "--mask-dir", masks, "--output-dir", out, "--model", model_file]
    write_png(out / "a.png", np.zeros((*SIZE, 3), np.uint8))  # a result from before
    code, _ = _run(capsys, base)
    assert code == 0  # an existing result is not a failure
    np.testing.assert_array_equal(read_png(out / "a.png"), 0)
    report = _report(out / "inpaint_report.csv")
    assert report["a"]["status"] == "exists" and "--overwrite" in report["a"]["reason"]
    assert report["b"]["status"] == "inpainted"
    before = (out / "b.png").read_bytes()
    code, _ = _run(capsys, [*base, "--overwrite", "--report", tmp_path / "r.csv"])
    assert code == 0
    assert read_png(out / "a.png").any()  # replaced
    assert (out / "b.png").read_bytes() == before  # same model, same result
    assert _report(tmp_path / "r.csv")["a"]["status"] == "inpainted"


def test_jpeg_inputs_become_png_and_stems_must_be_unique(tmp_path, model_file, capsys):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    from PIL import Image

    images.mkdir()
    Image.fromarray(smooth_image(*SIZE)).save(images / "x.jpg")
    write_png(masks / "x.png", box_mask(*SIZE, BOXES) * 255)
    write_png(images / "y.png", smooth_image(*SIZE))
    Image.fromarray(smooth_image(*SIZE)).save(images / "y.jpg")
    write_png(masks / "y.png", box_mask(*SIZE, BOXES) * 255)
    code, _ = _run(
        capsys,
        ["--input-dir", images, "--mask-dir", masks, "--output-dir", out, "--model", model_file],
    )
    assert code == 1
    assert (out / "x.png").is_file()
    report = _report(out / "inpaint_report.csv")
    assert report["y"]["status"] == "failed" and "same stem" in report["y"]["reason"]


@pytest.mark.parametrize(
    "args",
    [
        ["--input-dir", "in"],  # no --output-dir
        ["img.png", "mask.png", "-o", "o.png", "--input-dir", "in", "--output-dir", "o"],
        ["img.png", "mask.png"],  # no -o
        ["--output-dir", "o"],
    ],
)
def test_bad_command_lines(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_missing_input_dir_or_a_model_file(tmp_path, model_file, capsys, monkeypatch):
    code, err = _run(capsys, ["--input-dir", tmp_path / "nope", "--output-dir", tmp_path / "o"])
    assert code == 1 and "not a directory" in err
    images, masks, out, _ = _folders(tmp_path)
    monkeypatch.chdir(tmp_path)  # not a Kedro project
    missing = tmp_path / "missing.safetensors"
    argv = ["--input-dir", images, "--mask-dir", masks, "--output-dir", out, "--model", missing]
    code, err = _run(capsys, argv)
    assert code == 1 and "missing.safetensors" in err
    assert not out.exists()  # nothing written before the model is known


def test_a_folder_outside_a_project_uses_the_pretrained_model(tmp_path, capsys, monkeypatch):
    images, masks, out, _ = _folders(tmp_path)
    monkeypatch.chdir(tmp_path)  # not a Kedro project: no trained model
    code, err = _run(capsys, ["--input-dir", images, "--mask-dir", masks, "--output-dir", out])
    assert code == 1  # the folder holds bad pairs on purpose
    assert "pretrained model" in err and (out / "a.png").is_file()
