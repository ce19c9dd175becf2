"""What the MLflow UI shows for a `kedro run` of this project, checked in headless Chromium.

A developer script (not a CI test): it copies the project's configuration into a temporary
folder, runs a tiny `kedro run` there (the synthetic stand-in data, a 2-level U-Net, a few
steps; data -> training -> evaluation), serves that project's MLflow store with
`mlflow server`, opens it in headless Chromium (Debian's `chromium`, driven by the
playwright Python package; no browser is downloaded) and

* screenshots the experiment page (it must open in the "Model training" view, runs table,
  not the GenAI one) -> docs/images/mlflow_experiment.png;
* screenshots the logged model's page (its evaluation metrics and the test split under
  "Datasets used") -> docs/images/mlflow_logged_model.png;
* writes what the pages said to benchmarks/results/mlflow_ui_check.json and exits 1 when a
  check fails.

    sudo apt-get install -y chromium            # once
    nice -n 19 python benchmarks/mlflow_ui_screenshots.py [--keep DIR | --project DIR/project]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
RESULT = REPO / "benchmarks" / "results" / "mlflow_ui_check.json"
TINY_RUN = {
    "data_processing.image_size": 64,
    "data_processing.synthetic.images_per_class": 10,
    "training.device": "cpu",
    "training.model.depth": 2,
    "training.model.base_channels": 4,
    "training.model.max_channels": 16,
    "training.train_size": 32,
    "training.batch_size": 2,
    "training.steps_stage1": 4,
    "training.steps_stage2": 2,
    "training.max_minutes": "null",
    "training.vgg_weights": "none",
    "training.mask_source": "pool",
    "training.log_every": 1,
    "training.val_every": 3,
    "training.val_images": 2,
    "training.progress_bar": "false",
    "evaluate.device": "cpu",
    "evaluate.biharmonic_sample": 2,
    "evaluate.lpips_net": "none",
    "evaluate.num_workers": 1,
    "evaluate.progress_bar": "false",
}
MODEL_TRAINING = "workflowType=machine_learning"  # the UI's model-training view
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def make_project(destination: Path) -> Path:
    """The project's conf/base and pyproject in ``destination``, MLflow store inside it."""
    destination.mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", destination / "pyproject.toml")
    shutil.copytree(REPO / "conf" / "base", destination / "conf" / "base")
    (destination / "conf" / "local").mkdir()
    (destination / "src").mkdir()
    (destination / ".telemetry").write_text("consent: false\n")
    mlflow_file = destination / "conf" / "base" / "mlflow.yml"
    config = yaml.safe_load(mlflow_file.read_text())
    config["server"]["mlflow_tracking_uri"] = f"sqlite:///{destination / 'mlflow.db'}"
    config["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"] = (
        destination / "mlartifacts"
    ).as_uri()
    mlflow_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return destination


def environment() -> dict[str, str]:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds:.0f} s")


def close_assistant(page) -> None:
    """Close the UI's "MLflow Assistant" side panel when it is open (more room for the page)."""
    try:
        panel = page.get_by_text("MLflow Assistant", exact=False).first
        if panel.is_visible():
            header = panel.locator("xpath=ancestor::div[.//button][1]")
            header.locator("button").last.click(timeout=3000)
            page.wait_for_timeout(1000)
    except Exception:  # a UI without the panel, or another layout: leave it
        pass


def save_small_png(page, path: Path) -> None:
    """A screenshot as a 128-colour PNG (a third of the size; UI colours are few)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def view_of(url: str) -> str:
    """The UI's view from its URL: ``machine_learning`` (Model training) or ``genai``."""
    for view in ("machine_learning", "genai"):
        if f"workflowType={view}" in url:
            return view
    return "unknown"


def experiment_link(base: str, experiment_id: str) -> str:
    from aerial_inpainting.hooks import mlflow_ui_link

    return mlflow_ui_link(base, experiment_id)


def screenshots(base: str, experiment_id: str, model_id: str, run_name: str, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    found: dict[str, object] = {}
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        page = browser.new_page()
        # A fresh browser, the bare experiment URL: MLflow 3.17 picks the view from the
        # browser's GenAI / Model-training switch (default GenAI), not from the experiment.
        page.goto(f"{base}/#/experiments/{experiment_id}")
        page.wait_for_timeout(6000)
        found["bare_experiment_url_lands_on"] = page.url
        # The link the project prints after a run (and the docs give): the model-training view.
        page.goto(experiment_link(base, experiment_id))
        page.wait_for_timeout(6000)
        found["experiment_url"] = page.url
        text = page.inner_text("body")
        found["experiment_view"] = view_of(page.url)
        found["experiment_page_shows_the_run"] = run_name in text
        close_assistant(page)
        save_small_png(page, IMAGES / "mlflow_experiment.png")

        page.goto(f"{base}/#/experiments/{experiment_id}/models/{model_id}?{MODEL_TRAINING}")
        page.wait_for_timeout(6000)
        text = page.inner_text("body")
        found["model_url"] = page.url
        found["model_page_metrics_heading"] = next(
            (line for line in text.splitlines() if line.startswith("Metrics")), None
        )
        found["model_page_lists_the_test_split"] = "(test split)" in text
        found["model_page_psnr_metric"] = "evaluate.model.psnr_mean" in text
        close_assistant(page)
        save_small_png(page, IMAGES / "mlflow_logged_model.png")
        browser.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="make the project here and keep it")
    parser.add_argument("--project", type=Path, help="reuse DIR/project of an earlier --keep")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    env = environment()
    run_seconds = None
    if args.project:  # a project copy this script made before (--keep): no new kedro run
        work, project = args.project.parent, args.project
    else:
        work = args.keep or Path(tempfile.mkdtemp(prefix="mlflow_ui_"))
        project = make_project(work / "project")
        params = ",".join(f"{k}={v}" for k, v in TINY_RUN.items())
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "kedro", "run", f"--params={params}"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        (work / "kedro_run.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            print((done.stdout + done.stderr)[-4000:], file=sys.stderr)
            return 1
        run_seconds = round(time.monotonic() - started, 1)

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aerial_inpainting")
    (run,) = client.search_runs([experiment.experiment_id])
    (model,) = client.search_logged_models([experiment.experiment_id])
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", 120)
        IMAGES.mkdir(parents=True, exist_ok=True)
        found = screenshots(
            base, experiment.experiment_id, model.model_id, run.info.run_name, args.chromium
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    checks = {
        "the project's experiment link opens the model-training view": (
            found["experiment_view"] == "machine_learning"
            and bool(found["experiment_page_shows_the_run"])
        ),
        "logged model lists its metrics": bool(found["model_page_metrics_heading"])
        and found["model_page_metrics_heading"] != "Metrics (0)",
        "logged model lists the test split": bool(found["model_page_lists_the_test_split"]),
        "runner tag is a class name": run.data.tags.get("runner") == "SequentialRunner",
    }
    result = {
        "command": "python benchmarks/mlflow_ui_screenshots.py",
        "mlflow": mlflow.__version__,
        "chromium": subprocess.run(
            [args.chromium, "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "kedro_run_seconds": run_seconds,
        "run_name": run.info.run_name,
        "experiment_kind_tag": experiment.tags.get("mlflow.experimentKind"),
        "logged_model_metrics": len(model.metrics or []),
        "logged_model_datasets": sorted({m.dataset_name for m in model.metrics or []} - {None}),
        "pages": found,
        "checks": checks,
        "screenshots": ["docs/images/mlflow_experiment.png", "docs/images/mlflow_logged_model.png"],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    if not args.keep and not args.project:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
