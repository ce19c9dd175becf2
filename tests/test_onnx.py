"""ONNX export (``aerial-inpainting export --onnx``) and the onnxruntime backend (issue 30).

The exports are made once per module (torch.export takes tens of seconds); the reference
is always the PyTorch network itself, called directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support.images import smooth_image, write_png

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from aerial_inpainting.inference import fill_holes, inpaint_image
from aerial_inpainting.inpaint_cli import main as inpaint_main
from aerial_inpainting.onnx_backend import OnnxUNet, model_key, with_backend
from aerial_inpainting.onnx_export import OnnxExportError, cli, export_onnx
from aerial_inpainting.pconv.checkpoint import save_model
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

TOLERANCE = 1e-4


def _tiny(prefill: str = "none") -> PConvUNet:
    torch.manual_seed(0)
    model = PConvUNet(UNetConfig(depth=3, base_channels=4, max_channels=8, prefill=prefill))
    if prefill != "none":  # its last layer starts at zero: make it correct something
        torch.nn.init.normal_(model.dec_convs[-1].weight, std=0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[PConvUNet, Path]]:
    """{"plain": (model, onnx file) exported through the CLI, "prefill": (model, file)}."""
    folder = tmp_path_factory.mktemp("onnx")
    plain = _tiny()
    model_file = save_model(folder / "pconv_unet.safetensors", plain, {"note": "test"})
    out = folder / "plain.onnx"
    assert cli(["--onnx", str(out), "--model", str(model_file)]) == 0
    prefilled = _tiny("pushpull")
    return {
        "plain": (plain, out),
        "prefill": (prefilled, export_onnx(prefilled, folder / "prefill.onnx")),
    }


@pytest.mark.parametrize("kind", ["plain", "prefill"])
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 16), (3, 40, 24), (2, 64, 128)])
def test_onnx_matches_pytorch_on_random_inputs(exported, kind, batch, height, width):
    model, path = exported[kind]
    onnx_model = OnnxUNet(path)
    generator = torch.Generator().manual_seed(batch * height + width)
    image = torch.rand(batch, 3, height, width, generator=generator)
    mask = (torch.rand(batch, 1, height, width, generator=generator) > 0.4).float()
    mask[0, 0, : height // 2] = 0  # a large hole: pixels beyond the reach too
    with torch.inference_mode():
        expected, expected_reach = model.forward_with_mask(image, mask)
    got, got_reach = onnx_model.forward_with_mask(image, mask)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= TOLERANCE
    assert torch.equal(got_reach > 0, expected_reach > 0)


@pytest.mark.parametrize("kind", ["plain", "prefill"])
def test_onnx_matches_pytorch_on_a_256_px_image(exported, kind):
    model, path = exported[kind]
    onnx_model = OnnxUNet(path)
    rgb = smooth_image(256, 256, seed=3)
    valid = np.ones((256, 256), dtype=bool)
    valid[40:90, 60:200] = False
    valid[150:160, :] = False
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    m = torch.from_numpy(valid)[None, None].float()
    with torch.inference_mode():
        expected, _ = model.forward_with_mask(x, m)
    got, _ = onnx_model.forward_with_mask(x, m)
    assert float((got - expected).abs().max()) <= TOLERANCE
    # and through the whole filling code (hole-aware crops, far-hole passes)
    a = fill_holes(model, rgb, valid, "cpu")
    b = fill_holes(onnx_model, rgb, valid, "cpu")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_the_onnx_file_describes_itself(exported):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(exported["plain"][1]))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["aerial_inpainting.multiple"] == "8"
    assert [i.name for i in proto.graph.input] == ["image", "mask"]
    assert [o.name for o in proto.graph.output] == ["output", "reached"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3]))  # batch, H, W dynamic
    prefill = onnx.load(str(exported["prefill"][1]))
    assert [i.name for i in prefill.graph.input] == ["prefilled", "mask"]


def test_backend_option_of_the_cli_and_the_python_api(exported, tmp_path, monkeypatch, capsys):
    model, path = exported["plain"]
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    target = cache / "aerial_inpainting" / "onnx" / f"pconv_unet-{model_key(model)}.onnx"
    target.parent.mkdir(parents=True)
    shutil.copy(path, target)  # the export the backend would make (and cache) first

    rgb = smooth_image(40, 56, seed=5)
    mask = np.full((40, 56), 255, dtype=np.uint8)
    mask[10:25, 20:40] = 0
    torch_out = inpaint_image(model, rgb, mask)
    onnx_out = inpaint_image(model, rgb, mask, backend="onnx")
    assert np.abs(torch_out.astype(int) - onnx_out.astype(int)).max() <= 1
    assert isinstance(with_backend(model, "onnx"), OnnxUNet)

    model_file = save_model(tmp_path / "m.safetensors", model, {"note": "test"})
    image_path = write_png(tmp_path / "in.png", rgb)
    mask_path = write_png(tmp_path / "mask.png", mask)
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / f"{backend}.png"
        code = inpaint_main(
            [str(image_path), str(mask_path), "-o", str(outs[backend]), "--model",
             str(model_file), "--device", "cpu", "--backend", backend]
        )  # fmt: skip
        assert code == 0
    from support.images import read_png

    diff = np.abs(read_png(outs["torch"]).astype(int) - read_png(outs["onnx"]).astype(int))
    assert diff.max() <= 1


def test_export_refuses_what_it_cannot_export(tmp_path, capsys):
    class NotAUNet(torch.nn.Module):
        def forward(self, image, mask):
            return image

    with pytest.raises(OnnxExportError, match="not a PConvUNet"):
        export_onnx(NotAUNet(), tmp_path / "x.onnx")
    assert cli(["--onnx", str(tmp_path / "x.txt"), "--model", "pretrained"]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def test_onnx_file_without_the_projects_metadata_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["output"])],
        "plain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxExportError, match="metadata"):
        OnnxUNet(path)
