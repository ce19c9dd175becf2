"""The pyfunc model: log to a temporary MLflow store, load it back, predict == inpaint_image."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from PIL import Image
from support.images import box_mask, read_png, smooth_image, write_png

from aerial_inpainting.inference import inpaint_image
from aerial_inpainting.inpaint_cli import main
from aerial_inpainting.mlflow_model import encode_png, log_pyfunc_model
from aerial_inpainting.pconv.unet import PConvUNet


def _decode(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image).copy()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny model logged once to a sqlite MLflow store: (model, model_uri, run_id)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    try:
        experiment = mlflow.create_experiment("inpaint-test", artifact_location=str(tmp / "art"))
        torch.manual_seed(0)
        model = PConvUNet(TINY).eval()
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_pyfunc_model(model, name="model")
        yield model, info.model_uri, run.info.run_id
    finally:
        mlflow.set_tracking_uri(previous)


def test_pyfunc_round_trip_matches_inpaint_image(logged):
    model, uri, _ = logged
    loaded = mlflow.pyfunc.load_model(uri)
    images = [smooth_image(37, 53, seed=1), smooth_image(24, 16, seed=2)[:, :, 0]]  # RGB, gray
    masks = [
        box_mask(37, 53, [(5, 5, 20, 30)]) * 255,
        box_mask(24, 16, [(3, 3, 12, 12)]).astype(bool).astype(np.uint8) * 255,
    ]
    frame = pd.DataFrame(
        {"image": [encode_png(i) for i in images], "mask": [encode_png(m) for m in masks]}
    )
    result = loaded.predict(frame)
    assert list(result.columns) == ["inpainted"] and len(result) == 2
    for text, image, mask in zip(result["inpainted"], images, masks, strict=True):
        expected = inpaint_image(model, image, mask)
        np.testing.assert_array_equal(_decode(text), expected)

    inverted = pd.DataFrame(
        {"image": [encode_png(images[0])], "mask": [encode_png(255 - masks[0])]}
    )
    out = loaded.predict(inverted, params={"invert_mask": True})
    np.testing.assert_array_equal(
        _decode(out["inpainted"][0]), inpaint_image(model, images[0], masks[0])
    )


def test_unwrapped_model_accepts_numpy_arrays(logged):
    model, uri, _ = logged
    python_model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    image, mask = smooth_image(16, 24), box_mask(16, 24, [(4, 4, 10, 10)])
    frame = pd.DataFrame({"image": [image], "mask": [mask]})
    out = python_model.predict(None, frame)
    np.testing.assert_array_equal(_decode(out["inpainted"][0]), inpaint_image(model, image, mask))


def test_bad_rows_get_a_clear_error(logged):
    _, uri, _ = logged
    loaded = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame(
        {"image": ["not base64!"], "mask": [encode_png(np.ones((4, 4), np.uint8))]}
    )
    with pytest.raises(Exception, match="row 0 image"):
        loaded.predict(frame)


def test_cli_takes_an_mlflow_uri(logged, tmp_path: Path, capsys):
    """``--model runs:/<id>/model`` (the store is the fixture's, set as tracking URI)."""
    model, _, run_id = logged
    image, mask = smooth_image(21, 30), box_mask(21, 30, [(2, 3, 15, 20)])
    image_path = write_png(tmp_path / "i.png", image)
    mask_path = write_png(tmp_path / "m.png", mask * 255)
    out = tmp_path / "o.png"
    args = [str(image_path), str(mask_path), "-o", str(out), "--model", f"runs:/{run_id}/model"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    np.testing.assert_array_equal(read_png(out), inpaint_image(model, image, mask))
    code = main([*args[:-1], f"runs:/{'0' * 32}/model"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot download from MLflow" in err and "Traceback" not in err


def test_cli_finds_the_run_in_the_project_store_from_a_subdirectory_quietly(
    logged, tmp_path: Path, capfd, monkeypatch
):
    """No tracking URI set: ``runs:/`` resolves in the store of the project holding the cwd
    (its conf's relative ``sqlite:///mlflow.db``, under the root); ``-q`` prints nothing,
    MLflow's download bar included."""
    import shutil

    from mlflow.tracking._tracking_service import utils as tracking_utils

    model, _, run_id = logged
    store = Path(mlflow.get_tracking_uri().removeprefix("sqlite:///"))
    project = store.parent  # the fixture's folder becomes a Kedro project around its store
    repo = Path(__file__).resolve().parents[1]
    if not (project / "pyproject.toml").exists():
        shutil.copy2(repo / "pyproject.toml", project / "pyproject.toml")
        shutil.copytree(repo / "conf" / "base", project / "conf" / "base")
        (project / "sub" / "dir").mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.chdir(project / "sub" / "dir")
    image, mask = smooth_image(21, 30), box_mask(21, 30, [(2, 3, 15, 20)])
    image_path = write_png(tmp_path / "i.png", image)
    mask_path = write_png(tmp_path / "m.png", mask * 255)
    out = tmp_path / "o.png"
    args = [str(image_path), str(mask_path), "-o", str(out), "--model", f"runs:/{run_id}/model"]
    code = main([*args, "-q"])
    captured = capfd.readouterr()
    assert code == 0 and captured.err == "" and captured.out == "", captured.err
    np.testing.assert_array_equal(read_png(out), inpaint_image(model, image, mask))
    assert sorted(p.name for p in (project / "sub" / "dir").iterdir()) == []


def test_the_pretrained_model_logs_as_a_pyfunc(tmp_path):
    """`log_pyfunc_model("pretrained")`: the shipped model, served like a trained one; the
    package's bundled code leaves the shipped files out (the weights are the artifact)."""
    from aerial_inpainting.pretrained_model import load_pretrained

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        experiment = mlflow.create_experiment("pretrained", artifact_location=str(tmp_path / "a"))
        with mlflow.start_run(experiment_id=experiment):
            info = log_pyfunc_model("pretrained", name="model")
        loaded = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    image, mask = smooth_image(40, 48, seed=3), box_mask(40, 48, [(6, 8, 30, 40)]) * 255
    frame = pd.DataFrame({"image": [encode_png(image)], "mask": [encode_png(mask)]})
    result = _decode(loaded.predict(frame)["inpainted"][0])
    np.testing.assert_array_equal(result, inpaint_image(load_pretrained(), image, mask))
    logged_files = [p.name for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert logged_files.count("skyview-small.safetensors") == 1  # the artifact, not in the code
