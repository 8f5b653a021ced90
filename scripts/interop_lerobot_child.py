"""Runs inside the lerobot venv (see scripts/interop_lerobot.py): lerobot's own code on our datasets.

argv: WORK_DIR PATHS_JSON. Prints one JSON line per check: {"check", "ok", "detail"}.

lerobot decodes video with torchcodec or torchvision, neither of which installs beside torch 2.13 CPU
here, so ``lerobot.datasets.lerobot_dataset.decode_video_frames`` is replaced by a PyAV decoder with
lerobot's contract (timestamps in the file, each frame within ``tolerance_s`` or an error). Everything
else (metadata, file and timestamp lookup, aggregate, the writer, AV1 encoding) is lerobot's own code.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import av
import lerobot.datasets.lerobot_dataset as lerobot_dataset
import numpy as np
import torch
from lerobot.datasets.aggregate import aggregate_datasets
from lerobot.datasets.lerobot_dataset import LeRobotDataset


def decode_with_pyav(video_path, timestamps, tolerance_s, backend=None) -> torch.Tensor:
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        decoded = [
            (float(frame.pts * stream.time_base), frame.to_ndarray(format="rgb24"))
            for frame in container.decode(stream)
        ]
    times = np.array([time for time, _ in decoded])
    frames = []
    for wanted in timestamps:
        nearest = int(np.argmin(np.abs(times - wanted)))
        if abs(times[nearest] - wanted) > tolerance_s:
            raise AssertionError(
                f"no frame within {tolerance_s}s of {wanted}s in {video_path} (nearest {times[nearest]})"
            )
        frames.append(decoded[nearest][1])
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


lerobot_dataset.decode_video_frames = decode_with_pyav
RESULTS: list[dict] = []


def check(name: str):
    def wrap(function):
        try:
            ok, detail = function()
        except Exception as error:  # a failure of lerobot on our data is the finding, reported per check
            ok, detail = False, f"{type(error).__name__}: {error} | {traceback.format_exc(limit=-3)!r}"
        # lerobot's AV1 encoder (SVT-AV1), run as root, leaves this thread at real-time priority: undo it
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        RESULTS.append({"check": name, "ok": bool(ok), "detail": detail})
        print(json.dumps(RESULTS[-1]), flush=True)
        return function

    return wrap


def camera_of(dataset: LeRobotDataset) -> str:
    return dataset.meta.video_keys[0]


def frames_match(dataset: LeRobotDataset, reference: np.ndarray, indices: list[int]) -> float:
    """Largest mean abs difference (0..255) between lerobot's frames at ``indices`` and ``reference``."""
    camera = camera_of(dataset)
    worst = 0.0
    for index in indices:
        image = (dataset[index][camera].permute(1, 2, 0).numpy() * 255).round()
        worst = max(worst, float(np.abs(image - reference[index]).mean()))
    return worst


def main() -> int:
    work, paths = Path(sys.argv[1]), json.loads(sys.argv[2])
    ours_frames = np.load(work / "ours_a_frames.npy")

    @check("lerobot opens our robot.recording dataset")
    def _():
        dataset = LeRobotDataset("local/ours_a", root=paths["ours_a"])
        names = dataset.meta.features["observation.state"]["names"]
        worst = frames_match(dataset, ours_frames, [0, 1, dataset.num_frames // 2, dataset.num_frames - 1])
        ok = dataset.num_episodes == 2 and dataset.num_frames == len(ours_frames) and bool(names) and worst < 2
        detail = f"{dataset.num_episodes} episodes, {dataset.num_frames} frames, state names {names[:3]}..."
        return ok, f"{detail}, frame diff {worst:.2f}"

    @check("lerobot opens the daemon recorder's dataset")
    def _():
        dataset = LeRobotDataset("local/daemon", root=paths["daemon"])
        item = dataset[dataset.num_frames - 1]
        names = dataset.meta.features["observation.state"]["names"]
        ok = dataset.num_frames == 8 and item[camera_of(dataset)].shape[0] == 3 and bool(names)
        return (
            ok,
            f"{dataset.num_frames} frames, timing features {[k for k in dataset.features if k.startswith('timing.')]}",
        )

    @check("aggregate_datasets merges two of our datasets")
    def _():
        target = work / "aggregated"
        aggregate_datasets(
            ["local/ours_a", "local/ours_b"],
            "local/aggregated",
            roots=[Path(paths["ours_a"]), Path(paths["ours_b"])],
            aggr_root=target,
        )
        merged = LeRobotDataset("local/aggregated", root=target)
        a = LeRobotDataset("local/ours_a", root=paths["ours_a"])
        b = LeRobotDataset("local/ours_b", root=paths["ours_b"])
        actions = np.stack(merged.hf_dataset["action"])
        expected = np.concatenate([np.stack(a.hf_dataset["action"]), np.stack(b.hf_dataset["action"])])
        worst = frames_match(merged, ours_frames, [0, a.num_frames - 1])
        last_b = b[b.num_frames - 1][camera_of(b)]
        last_merged = merged[merged.num_frames - 1][camera_of(merged)]
        tail = float((last_b - last_merged).abs().mean() * 255)
        ok = (
            (merged.num_episodes, merged.num_frames) == (4, a.num_frames + b.num_frames)
            and np.array_equal(actions, expected)
            and worst < 2
            and tail < 2
        )
        detail = f"{merged.num_episodes} episodes, {merged.num_frames} frames, actions equal"
        return ok, f"{detail}, frame diffs {worst:.2f}/{tail:.2f}"

    @check("lerobot opens our lerobot-merge output and aggregates it again")
    def _():
        merged = LeRobotDataset("local/merged", root=paths["merged"])
        a = LeRobotDataset("local/ours_a", root=paths["ours_a"])
        worst = frames_match(merged, ours_frames, list(range(a.num_frames)))
        target = work / "merged_again"
        aggregate_datasets(
            ["local/merged", "local/ours_a"], "local/again", roots=[Path(paths["merged"]), Path(paths["ours_a"])],
            aggr_root=target,
        )  # fmt: skip
        again = LeRobotDataset("local/again", root=target)
        ok = merged.num_episodes == 4 and worst < 2 and again.num_episodes == 6
        return (
            ok,
            f"{merged.num_episodes} episodes, frame diff {worst:.2f}; aggregated with ours_a: {again.num_episodes}",
        )

    @check("lerobot resumes our dataset and adds an episode with its own writer")
    def _():
        root = work / "resumed"
        shutil.copytree(paths["ours_b"], root)
        dataset = LeRobotDataset("local/resumed", root=root)
        before = dataset.num_frames
        camera = camera_of(dataset)
        shape = dataset.meta.features[camera]["shape"]
        state_dim = dataset.meta.features["observation.state"]["shape"][0]
        action_dim = dataset.meta.features["action"]["shape"][0]
        for step in range(6):
            frame = {
                "observation.state": np.full(state_dim, step, np.float32),
                "action": np.full(action_dim, -step, np.float32),
                "task": "an episode added by lerobot",
            }
            frame |= {key: np.full(shape, 40 * step, dtype=np.uint8) for key in dataset.meta.video_keys}
            dataset.add_frame(frame)
        dataset.save_episode()
        dataset.finalize()
        reopened = LeRobotDataset("local/resumed", root=root)
        last = reopened[reopened.num_frames - 1]
        ok = (reopened.num_episodes, reopened.num_frames) == (3, before + 6) and float(last["action"][0]) == -5.0
        brightness = float(last[camera].mean() * 255)
        ok = (
            ok
            and abs(brightness - 200) < 6
            and float(reopened[0]["action"][0]) == float(dataset.hf_dataset["action"][0][0])
        )
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*.mp4"))
        detail = f"{reopened.num_episodes} episodes, {reopened.num_frames} frames"
        return ok, f"{detail}, last frame brightness {brightness:.0f}, videos {files}"

    @check("lerobot writes an AV1 dataset (the reference our reader must read)")
    def _():
        root = work / "lerobot_av1"
        camera = "observation.images.top"
        features = {
            "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
            "action": {"dtype": "float32", "shape": (2,), "names": ["dx", "dy"]},
            camera: {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channels"]},
        }
        dataset = LeRobotDataset.create("local/lerobot_av1", fps=10, features=features, root=root, robot_type="test")
        written = []
        for episode, length in enumerate((12, 9)):
            for step in range(length):
                image = np.full((48, 64, 3), 90, np.uint8)
                left = (4 * step + 9 * episode) % 50
                image[10:24, left : left + 14] = (230, 60, 30)
                written.append(image)
                dataset.add_frame(
                    {
                        "observation.state": np.zeros(2, np.float32),
                        "action": np.full(2, step, np.float32),
                        camera: image,
                        "task": f"task {episode}",
                    }
                )
            dataset.save_episode()
        dataset.finalize()
        np.save(work / "lerobot_av1_frames.npy", np.stack(written))
        codec = dataset.meta.features[camera]["info"]["video.codec"]
        return codec == "av1", f"video.codec {codec}, {len(written)} frames"

    return 0 if all(result["ok"] for result in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
