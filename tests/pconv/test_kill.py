"""kill -9 in the middle of training loses at most the steps since the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from support.training import box_masks, smooth_images

from aerial_inpainting.pconv import train as T
from aerial_inpainting.pconv.checkpoint import list_checkpoints
from aerial_inpainting.pconv.data import InpaintingTrainDataset

_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests_dir!r})
    from support.training import box_masks, smooth_images
    from aerial_inpainting.pconv import train as T
    from aerial_inpainting.pconv.data import InpaintingTrainDataset

    class Slow(T.TrainingCallback):  # keeps the run alive long enough to be killed mid-way
        def on_checkpoint(self, step, path):
            print("checkpoint", step, flush=True)
            time.sleep({pause})

    images = smooth_images(10, 32, seed=0)
    dataset = InpaintingTrainDataset(images, range(8), list(box_masks(4, 32, 1).values()), 16, seed=5)
    cfg = T.TrainConfig.from_params({params!r})
    T.train(cfg, T.TrainingData(dataset, description={{"n": 8}}), callbacks=[Slow()])
    print("finished", flush=True)
    """
)


def _data() -> T.TrainingData:
    images = smooth_images(10, 32, seed=0)
    dataset = InpaintingTrainDataset(
        images, range(8), list(box_masks(4, 32, 1).values()), 16, seed=5
    )
    return T.TrainingData(dataset, description={"n": 8})


def _train_in_subprocess(params: dict) -> subprocess.Popen:
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _SCRIPT.format(tests_dir=tests_dir, params=params, pause=0.3)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(make_params, tmp_path):
    params = make_params(steps_stage1=5, steps_stage2=5, checkpoint_every=2, val_images=0)
    ckpt_root = tmp_path / "checkpoints"

    victim = _train_in_subprocess(params)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for the checkpoint of step 4, then kill
            line = victim.stdout.readline()
            if line.startswith("checkpoint 4"):
                break
            assert line, "training subprocess ended before its second checkpoint"
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    (run_dir,) = list(ckpt_root.iterdir())
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 4]

    # the next run (here in this process, with new objects) resumes from step 4 ...
    cfg = T.TrainConfig.from_params(params)
    resumed = T.train(cfg, _data())
    assert resumed.info["resumed_from_step"] == 4 and resumed.info["final_step"] == 10
    # ... and ends where an uninterrupted run ends
    straight = T.train(
        T.TrainConfig.from_params({**params, "checkpoint_dir": str(tmp_path / "b")}), _data()
    )
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
