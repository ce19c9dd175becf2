"""Issue 27, second round of real-world cases: F29 greyscale photographs, F30 outputs that
would overwrite an input or be left truncated, F31 model files declaring absurd networks.

Every input is generated here. Expected values come from the definitions, not from the code
under test: input files are compared byte for byte, modes are read back with Pillow, and the
fill of a grey image is the ITU-R 601 luma of a colour the test model is built to predict.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from aerial_inpainting.inference import inpaint_image
from aerial_inpainting.inpaint_cli import main
from aerial_inpainting.pconv import unet as unet_module
from aerial_inpainting.pconv.checkpoint import MODEL_FORMAT, load_model, save_model
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

# The test model predicts this colour in every hole pixel it reaches (bias / 255 per channel).
COLOUR = np.array([51, 102, 204], dtype=np.uint8)
# round(0.299 * 51 + 0.587 * 102 + 0.114 * 204) = round(98.379)
COLOUR_LUMA = 98


def colour_unet(depth: int = 3) -> PConvUNet:
    """A real U-Net whose last layer predicts exactly COLOUR wherever it is reached."""
    model = PConvUNet(UNetConfig(depth=depth, base_channels=4, max_channels=8))
    last = model.dec_convs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(COLOUR / 255.0, dtype=torch.float32))
    return model.eval()


@pytest.fixture
def colour_model_file(tmp_path: Path) -> Path:
    return save_model(tmp_path / "models" / "colour.safetensors", colour_unet())


def grey_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W) grey values in [1, 254]."""
    return np.random.default_rng(seed).integers(1, 255, (height, width), dtype=np.uint8)


def hole_mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 (H, W) mask file content: 255 = keep, 0 inside (top, left, bottom, right)."""
    mask = np.full((height, width), 255, np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 0
    return mask


def run_cli(capsys, args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, *needles: str) -> bool:
    """Exit 1, no traceback, the last stderr line an error naming every needle."""
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (
        code == 1
        and "Traceback" not in err
        and last.startswith("aerial-inpaint: error:")
        and all(n.lower() in last.lower() for n in needles)
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes); links read through."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------ F29 greyscale
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_f29_grey_photo_comes_back_grey(tmp_path, colour_model_file, capsys, suffix):
    grey = grey_texture(32, 40, seed=29)
    mask = hole_mask(32, 40, (10, 12, 20, 26))
    Image.fromarray(grey, "L").save(tmp_path / "bw.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / f"out{suffix}"
    code, err = run_cli(
        capsys,
        [tmp_path / "bw.png", tmp_path / "mask.png", "-o", out, "--model", colour_model_file],
    )
    assert code == 0, err
    with Image.open(out) as result:
        assert result.mode == "L"
        values = np.asarray(result)
    keep = mask == 255
    np.testing.assert_array_equal(values[keep], grey[keep])
    assert (values[~keep] == COLOUR_LUMA).all()


def test_f29_grey_with_alpha_keeps_its_alpha(tmp_path, colour_model_file, capsys):
    grey = grey_texture(32, 40, seed=30)
    alpha = np.full_like(grey, 255)
    alpha[:, 30:] = 100  # half-transparent edge: kept as is
    alpha[:, :4] = 0  # transparent film edge: no-data, filled and made opaque
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "bw_la.png")
    mask = hole_mask(32, 40, (10, 12, 20, 26))
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    code, err = run_cli(
        capsys,
        [tmp_path / "bw_la.png", tmp_path / "mask.png", "-o", out, "--model", colour_model_file],
    )
    assert code == 0, err
    with Image.open(out) as result:
        assert result.mode == "LA"
        values = np.asarray(result)
    keep = (mask == 255) & (alpha > 0)
    np.testing.assert_array_equal(values[keep], np.dstack([grey, alpha])[keep])
    assert (values[~keep] == [COLOUR_LUMA, 255]).all()


def test_f29_grey_stored_as_rgb_gets_a_grey_fill_and_colour_keeps_colour(
    tmp_path, colour_model_file, capsys
):
    grey = grey_texture(32, 40, seed=31)
    mask = hole_mask(32, 40, (8, 8, 24, 30))
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.dstack([grey] * 3), "RGB").save(tmp_path / "grey_rgb.png")
    colour = np.random.default_rng(1).integers(1, 255, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(colour, "RGB").save(tmp_path / "colour.png")
    for name in ("grey_rgb", "colour"):
        code, err = run_cli(
            capsys,
            [
                tmp_path / f"{name}.png",
                tmp_path / "mask.png",
                "-o",
                tmp_path / f"{name}_out.png",
                "--model",
                colour_model_file,
            ],
        )
        assert code == 0, err
    with Image.open(tmp_path / "grey_rgb_out.png") as result:
        assert result.mode == "RGB"
        values = np.asarray(result)
    hole = mask == 0
    assert (values[hole] == COLOUR_LUMA).all()
    np.testing.assert_array_equal(values[~hole], np.dstack([grey] * 3)[~hole])
    with Image.open(tmp_path / "colour_out.png") as result:  # control: the model is coloured
        assert (np.asarray(result)[hole] == COLOUR).all()


def test_f29_library_fill_of_a_grey_array_is_grey():
    grey = grey_texture(16, 24, seed=2)
    mask = hole_mask(16, 24, (4, 4, 12, 12))
    out = inpaint_image(colour_unet(), grey, mask)
    assert (out[mask == 0] == COLOUR_LUMA).all()
    np.testing.assert_array_equal(out[mask == 255], np.dstack([grey] * 3)[mask == 255])


# ------------------------------------------------------------------ F30 outputs vs inputs
@pytest.fixture
def f30_pair(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    colour = np.random.default_rng(30).integers(1, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(colour).save(folder / "img.png")
    Image.fromarray(hole_mask(24, 32, (6, 6, 14, 20))).save(folder / "mask.png")
    return folder / "img.png", folder / "mask.png"


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("mask", "mask"),
        ("image", "image"),
        ("image-dotted", "image"),
        ("image-symlink", "image"),
        ("mask-hardlink", "mask"),
    ],
)
def test_f30_out_naming_an_input_is_refused_before_anything_is_written(
    tmp_path, f30_pair, model_file, capsys, monkeypatch, target, needle
):
    image, mask = f30_pair
    folder = image.parent
    if target == "image-symlink":
        (folder / "link.png").symlink_to(image.name)
    if target == "mask-hardlink":
        os.link(mask, folder / "hard.png")
    before = snapshot(folder)
    out = {
        "mask": mask,
        "image": image,
        "image-dotted": folder / ".." / folder.name / "." / image.name,
        "image-symlink": folder / "link.png",
        "mask-hardlink": folder / "hard.png",
    }[target]
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, [image, mask, "-o", out, "--model", model_file])
    assert one_line_error(code, err, needle, out.name), err
    assert snapshot(folder) == before  # inputs byte for byte, and no new or partial file


@pytest.mark.parametrize("target", ["masks", "images", "masks-symlink"])
def test_f30_output_dir_that_is_an_input_folder_is_refused(tmp_path, model_file, capsys, target):
    images, masks = tmp_path / "in", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem in "ab":
        pixels = np.random.default_rng(ord(stem)).integers(1, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{stem}.jpg", quality=95)
        Image.fromarray(hole_mask(24, 32, (6, 6, 14, 20))).save(masks / f"{stem}.png")
    (tmp_path / "masklink").symlink_to(masks)
    output_dir = {"masks": masks, "images": images, "masks-symlink": tmp_path / "masklink"}
    before = snapshot(tmp_path)
    code, err = run_cli(
        capsys,
        [
            "--input-dir",
            images,
            "--mask-dir",
            masks,
            "--output-dir",
            output_dir[target],
            "--overwrite",
            "--model",
            model_file,
        ],
    )
    assert one_line_error(code, err, "--output-dir", "mask" if "mask" in target else "image")
    assert snapshot(tmp_path) == before


def test_f30_report_naming_an_input_is_refused(tmp_path, model_file, capsys):
    images, masks = tmp_path / "in", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(images / "a.png")
    Image.fromarray(hole_mask(16, 16, (4, 4, 8, 8))).save(masks / "a.png")
    before = snapshot(tmp_path)
    code, err = run_cli(
        capsys,
        [
            *("--input-dir", images, "--mask-dir", masks, "--output-dir", tmp_path / "out"),
            *("--report", masks / "a.png", "--model", model_file),
        ],
    )
    assert one_line_error(code, err, "--report", "mask")
    assert snapshot(tmp_path) == before


def test_f30_failed_write_keeps_the_previous_output(
    tmp_path, f30_pair, model_file, capsys, monkeypatch
):
    image, mask = f30_pair
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = out_dir / "prev.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(previous)
    before = snapshot(out_dir)

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", failing_save)
    code, err = run_cli(capsys, [image, mask, "-o", previous, "--model", model_file])
    assert one_line_error(code, err, "cannot write", "prev.png"), err
    assert snapshot(out_dir) == before  # old bytes kept, no temporary file left


def test_f30_existing_out_is_replaced_whole_keeping_its_permissions(
    tmp_path, f30_pair, model_file, capsys
):
    image, mask = f30_pair
    out = tmp_path / "out" / "result.png"
    out.parent.mkdir()
    out.write_bytes(b"old content")
    out.chmod(0o640)
    code, err = run_cli(capsys, [image, mask, "-o", out, "--model", model_file])
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.png"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)
    with Image.open(out) as result:
        assert result.size == (32, 24)
        keep = np.asarray(Image.open(mask)) == 255
        np.testing.assert_array_equal(np.asarray(result)[keep], np.asarray(Image.open(image))[keep])


def _geotiff(path: Path, bands: np.ndarray) -> Path:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    count, height, width = bands.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000.0, 5600000.0, 0.5, 0.5), nodata=0,
    ) as dst:  # fmt: skip
        dst.write(bands)
    return path


def test_f30_geotiff_to_png_failed_copy_keeps_the_previous_output(
    tmp_path, model_file, capsys, monkeypatch
):
    rasterio_shutil = pytest.importorskip("rasterio.shutil")
    bands = np.random.default_rng(3).integers(1, 255, (3, 32, 32), dtype=np.uint8)
    bands[:, 8:16, 8:16] = 0  # nodata hole
    source = _geotiff(tmp_path / "ortho.tif", bands)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "ortho.png").write_bytes(b"previous result")
    before = snapshot(out_dir)

    def failing_copy(src, dst, **kwargs):
        Path(dst).write_bytes(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rasterio_shutil, "copy", failing_copy)
    code, err = run_cli(capsys, [source, "-o", out_dir / "ortho.png", "--model", model_file])
    assert one_line_error(code, err, "cannot write", "ortho.png"), err
    assert snapshot(out_dir) == before


def test_f30_geotiff_out_naming_the_image_is_refused(tmp_path, model_file, capsys):
    bands = np.random.default_rng(4).integers(1, 255, (3, 32, 32), dtype=np.uint8)
    bands[:, 8:16, 8:16] = 0
    source = _geotiff(tmp_path / "ortho.tif", bands)
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, [source, "-o", source, "--model", model_file])
    assert one_line_error(code, err, "image", "ortho.tif"), err
    assert snapshot(tmp_path) == before


def test_f30_raster_writer_refuses_its_input_as_output(tmp_path, tiny_model):
    from aerial_inpainting.geotiff import inpaint_raster
    from aerial_inpainting.inference import InpaintingInputError

    bands = np.random.default_rng(5).integers(1, 255, (3, 32, 32), dtype=np.uint8)
    bands[:, 8:16, 8:16] = 0
    source = _geotiff(tmp_path / "ortho.tif", bands)
    before = source.read_bytes()
    with pytest.raises(InpaintingInputError, match="is the image file"):
        inpaint_raster(tiny_model, source, tmp_path / "." / "ortho.tif")
    assert source.read_bytes() == before


# ------------------------------------------------------------------ F31 absurd model files
def _model_file(path: Path, tensors: dict[str, torch.Tensor], config) -> Path:
    metadata = {"format": MODEL_FORMAT, "config": json.dumps(config), "extra": "{}"}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def f31_pair(tmp_path: Path) -> tuple[Path, Path]:
    pixels = np.random.default_rng(31).integers(1, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    Image.fromarray(hole_mask(32, 32, (8, 8, 20, 20))).save(tmp_path / "mask.png")
    return tmp_path / "img.png", tmp_path / "mask.png"


def test_f31_bomb_config_is_refused_without_building_the_network(
    tmp_path, f31_pair, capsys, monkeypatch
):
    """A 1-tensor file declaring ~175 M parameters: refused, nothing built off the meta device."""
    config = {"in_channels": 3, "out_channels": 3, "depth": 6}
    config |= {"base_channels": 1024, "max_channels": 1024}
    bomb = _model_file(tmp_path / "bomb.safetensors", {"x": torch.zeros(1)}, config)
    built_on: list[str] = []
    real_init = PConvUNet.__init__

    def recording_init(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)  # the device new tensors would go to
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(unet_module.PConvUNet, "__init__", recording_init)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    image, mask = f31_pair
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, [image, mask, "-o", out, "--model", bomb, "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert one_line_error(code, err, "bomb.safetensors"), err
    assert "do not fit" in err
    assert all(device == "meta" for device in built_on)
    assert seconds < 5
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 300  # the declared network alone would take ~700 MiB
    assert not out.exists()


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"depth": 40, "base_channels": 1, "max_channels": 1}, "depth 40"),
        ({"depth": 11, "base_channels": 1, "max_channels": 1}, "depth 11"),
        ({"depth": 2, "base_channels": 1, "max_channels": 100000}, "max_channels 100000"),
        ({"depth": 2, "base_channels": 5000, "max_channels": 1}, "base_channels 5000"),
        ({"depth": 2, "in_channels": 300, "base_channels": 1, "max_channels": 1}, "in_channels"),
    ],
)
def test_f31_absurd_declared_networks_are_refused_in_one_line(
    tmp_path, f31_pair, capsys, config, needle
):
    """Even with tensors that match the declaration (as save_model writes them)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in PConvUNet(UNetConfig(**config)).state_dict().items()}
    tensors = {k: torch.zeros(shape) for k, shape in shapes.items()}
    path = _model_file(tmp_path / "absurd.safetensors", tensors, config)
    with pytest.raises(ValueError, match=r"absurd\.safetensors") as caught:
        load_model(path)
    assert needle in str(caught.value) and "supported range" in str(caught.value)
    image, mask = f31_pair
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, [image, mask, "-o", out, "--model", path])
    assert one_line_error(code, err, "absurd.safetensors", needle), err
    assert not out.exists()


def test_f31_config_that_does_not_match_the_stored_shapes_is_refused(tmp_path, tiny_model):
    """The real tensors of a 4..8-channel network under a header declaring 8..16 channels."""
    config = tiny_model.config.to_dict() | {"base_channels": 8, "max_channels": 16}
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    path = _model_file(tmp_path / "edited.safetensors", tensors, config)
    with pytest.raises(ValueError, match=r"edited\.safetensors.*do not fit together.*declared"):
        load_model(path)


@pytest.mark.parametrize(
    "config_text",
    ["[1, 2, 3]", '{"depth": 1e400}', '{"depth": "deep"}', '{"depth": 3, "wings": 2}', "[" * 5000],
)
def test_f31_unreadable_configs_are_one_line_errors(tmp_path, f31_pair, capsys, config_text):
    path = tmp_path / "odd.safetensors"
    metadata = {"format": MODEL_FORMAT, "config": config_text, "extra": "{}"}
    save_file({"x": torch.zeros(1)}, str(path), metadata=metadata)
    image, mask = f31_pair
    code, err = run_cli(capsys, [image, mask, "-o", tmp_path / "out.png", "--model", path])
    assert one_line_error(code, err, "odd.safetensors"), err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


@pytest.mark.parametrize("prefill", ["none", "pushpull"])
def test_f31_valid_model_files_still_load_exactly(tmp_path, prefill):
    torch.manual_seed(0)
    config = UNetConfig(depth=3, base_channels=4, max_channels=8, prefill=prefill)
    model = PConvUNet(config).eval()
    loaded = load_model(save_model(tmp_path / "m.safetensors", model))
    assert loaded.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch\n\tmore"),
        OSError(5, "I/O error"),
    ],
)
def test_f31_any_loading_failure_is_one_line_naming_the_file(
    tmp_path, f31_pair, model_file, capsys, monkeypatch, error
):
    from aerial_inpainting.pconv import checkpoint

    def failing_load(path, map_location="cpu"):
        raise error

    monkeypatch.setattr(checkpoint, "load_model", failing_load)
    image, mask = f31_pair
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, [image, mask, "-o", out, "--model", model_file])
    assert one_line_error(code, err, model_file.name, "cannot be loaded"), err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not out.exists()


def test_f31_extra_information_that_is_not_an_object_is_dropped(tmp_path, tiny_model):
    metadata = {
        "format": MODEL_FORMAT,
        "config": json.dumps(tiny_model.config.to_dict()),
        "extra": "[1, 2]",
    }
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata=metadata)
    assert load_model(tmp_path / "m.safetensors").extra == {}


# ------------------------------------------------------------------ F27 photo metadata
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
    b'drone-dji:RelativeAltitude="+120.0" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def drone_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0132] = "DJI", "FC6310", "2026:05:01 10:11:12"
    exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: (47.0, 22.0, 30.5), 3: "E", 4: (8.0, 32.0, 10.25), 6: 512.3}
    return exif


def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_f27_exif_gps_xmp_and_icc_survive_with_orientation_reset(
    tmp_path, colour_model_file, capsys, suffix, orientation
):
    pixels = np.random.default_rng(27).integers(1, 255, (24, 40, 3), dtype=np.uint8)
    icc = _srgb_icc()
    Image.fromarray(pixels).save(
        tmp_path / "drone.jpg", quality=95, exif=drone_exif(orientation), xmp=XMP, icc_profile=icc
    )
    shape = (40, 24) if orientation == 6 else (24, 40)  # as displayed
    Image.fromarray(hole_mask(*shape, (5, 5, 12, 12))).save(tmp_path / "mask.png")
    before = snapshot(tmp_path)
    out = tmp_path / f"out{suffix}"
    code, err = run_cli(capsys, ["-q", "--model", colour_model_file, tmp_path / "drone.jpg",
                                 tmp_path / "mask.png", "-o", out])  # fmt: skip
    assert code == 0, err
    with Image.open(out) as result:
        assert result.size == shape[::-1]
        exif = result.getexif()
        gps = exif.get_ifd(0x8825)
        assert (exif.get(0x010F), exif.get(0x0110)) == ("DJI", "FC6310")
        assert exif.get(0x0132) == "2026:05:01 10:11:12"
        assert gps.get(1) == "N" and abs(float(gps[2][0]) - 47) < 1e-9
        assert abs(float(gps[4][2]) - 10.25) < 1e-9 and abs(float(gps[6]) - 512.3) < 1e-6
        assert exif.get(0x0112, 1) == 1  # stored upright: never turned a second time
        assert result.info.get("icc_profile") == icc
    data = out.read_bytes()
    assert b"drone-dji:RelativeAltitude" in data
    assert b'tiff:Orientation="6"' not in data
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out")} == before


def test_f27_grey_photo_keeps_its_icc_profile_and_mode(tmp_path, colour_model_file, capsys):
    from PIL import ImageCms

    grey = grey_texture(24, 32, seed=27)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # any profile bytes
    Image.fromarray(grey, "L").save(tmp_path / "bw.png", icc_profile=icc)
    Image.fromarray(hole_mask(24, 32, (4, 4, 10, 10))).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, ["-q", "--model", colour_model_file, tmp_path / "bw.png",
                                 tmp_path / "mask.png", "-o", out])  # fmt: skip
    assert code == 0, err
    with Image.open(out) as result:
        assert result.mode == "L" and result.info.get("icc_profile") == icc


def test_f27_photo_without_metadata_gets_none(tmp_path, colour_model_file, capsys):
    Image.fromarray(grey_texture(16, 16)).save(tmp_path / "plain.png")
    Image.fromarray(hole_mask(16, 16, (4, 4, 8, 8))).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, ["-q", "--model", colour_model_file, tmp_path / "plain.png",
                                 tmp_path / "mask.png", "-o", out])  # fmt: skip
    assert code == 0, err
    with Image.open(out) as result:
        assert not result.getexif() and "icc_profile" not in result.info
