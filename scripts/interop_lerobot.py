"""Check our LeRobot v3 datasets against the real lerobot package (``make interop``), run with the main venv.

1. Creates ``runs/.interop-venvs/lerobot`` once (lerobot 0.4.x pins torch < 2.11, so it cannot share our
   venv): ``torch==2.13.0`` first (the CPU build on this machine), then lerobot with ``--no-deps`` and the
   dependencies its dataset code imports, so that pip never swaps torch for a CUDA build. torchvision is a
   stub: no torchvision wheel matches torch 2.13's CPU ABI, and the dataset paths checked here use it only
   for import-time names and for lerobot's torchvision video decoder, which the child replaces (see there).
2. Records datasets here with our own code: the simulated robot through ``robot.recording`` (two
   datasets) and the daemon's ``EpisodeRecorder`` (one), with H.264 video.
3. Runs ``scripts/interop_lerobot_child.py`` in that venv: lerobot opens them, aggregates two, resumes one
   with one more episode through its own writer, and writes an AV1 dataset, which this script then reads
   with our reader and compares frame by frame.

Prints one ``PASS``/``FAIL`` line per check; exits non-zero if any fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VENV = REPO / "runs" / ".interop-venvs" / "lerobot"
LEROBOT = "lerobot>=0.4.4,<0.5"
# What lerobot's dataset code imports (from its 0.4.4 METADATA, ranges kept), without torch/torchvision.
LEROBOT_DEPENDENCIES = [
    "datasets>=4,<5",
    "huggingface-hub>=0.34.2,<0.36",
    "av>=15,<16",
    "packaging>=24.2,<26",
    "jsonlines>=4,<5",
    "deepdiff>=7,<9",
    "draccus==0.10.0",
    "einops>=0.8,<0.9",
    "termcolor>=2.4,<4",
    "opencv-python-headless>=4.9,<4.13",
    "imageio>=2.34,<3",
    "accelerate>=1.10,<2",
    "pandas",
    "pyarrow",
    "numpy<3",
    "pillow",
]
TORCH = "torch==2.13.0"
TORCHVISION_STUB = '''"""Stand-in for torchvision in the lerobot interop venv: no torchvision wheel matches torch
2.13's CPU build. lerobot's dataset modules import these names; nothing checked by
scripts/interop_lerobot.py calls them."""
import types

import torch

io = types.SimpleNamespace(VideoReader=None)
__version__ = "0.0.0-interop-stub"


def set_video_backend(backend):
    raise RuntimeError("torchvision is stubbed in this venv; decode with PyAV")
'''
TRANSFORMS_STUB = """import torch


class ToTensor:
    def __call__(self, image):
        raise RuntimeError("torchvision is stubbed in this venv")
"""
V2_STUB = """import torch

from . import functional  # noqa: F401


class Transform(torch.nn.Module):
    pass


class Identity(Transform):
    def forward(self, *inputs):
        return inputs[0] if len(inputs) == 1 else inputs


class Compose(Transform):
    def __init__(self, transforms):
        super().__init__()
        self.transforms = transforms
"""


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def ensure_venv() -> float:
    """Create the lerobot venv unless it is ready; returns the seconds it took (0 when it existed)."""
    stamp = VENV / ".ready"
    if stamp.is_file():
        return 0.0
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", "--clear", str(VENV)])
    pip = [str(VENV / "bin/python"), "-m", "pip", "install", "-q"]
    _run([*pip, "--upgrade", "pip"])
    _run([*pip, TORCH])
    _run([*pip, "--no-deps", LEROBOT])
    _run([*pip, *LEROBOT_DEPENDENCIES, TORCH])  # naming torch again keeps pip from replacing it
    site = Path(
        subprocess.check_output([str(VENV / "bin/python"), "-c", "import site; print(site.getsitepackages()[0])"])
        .decode()
        .strip()
    )
    stub = site / "torchvision"
    (stub / "transforms" / "v2").mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(TORCHVISION_STUB)
    (stub / "transforms" / "__init__.py").write_text(TRANSFORMS_STUB)
    (stub / "transforms" / "v2" / "__init__.py").write_text(V2_STUB)
    (stub / "transforms" / "v2" / "functional.py").write_text("")
    stamp.write_text(json.dumps({"lerobot": LEROBOT, "torch": TORCH}))
    return time.monotonic() - started


def record_our_datasets(work: Path) -> dict[str, str]:
    """Two datasets from ``robot.recording`` and one from the daemon's recorder, simulated robot, H.264."""
    from envs.mujoco.experts import ScriptedExpert
    from robot.episode_recorder import EpisodeRecorder, TickRecord
    from robot.recording import record_episodes
    from robot.sim import SimRobot

    paths = {}
    for name, first in (("ours_a", 0), ("ours_b", 10)):
        record_episodes(
            lambda index, first=first: SimRobot(task="reach", image_size=64, control_hz=10, state_index=first + index),
            lambda robot: ScriptedExpert(robot.env),
            2,
            work / name,
            10,
            keep_failures=True,
        )
        paths[name] = str(work / name)
    robot = SimRobot(task="reach", image_size=64, control_hz=10, state_index=3)
    with robot:
        features = robot.observation_features
        camera = next(key for key in features if key.startswith("observation.images."))
        recorder = EpisodeRecorder(
            work / "daemon",
            robot.name,
            10,
            features["observation.state"].shape[0],
            robot.action_features["action"].names,
            [camera],
            (64, 64),
            state_names=features["observation.state"].names,
        )
        recorder.start(0)
        robot.start_episode(0)
        observation = robot.get_observation()
        expert = ScriptedExpert(robot.env)
        expert.reset({"instruction": observation["instruction"]})
        for _ in range(8):
            sent = robot.send_action(expert.act(observation))
            recorder.add(
                TickRecord(
                    observation["observation.state"],
                    sent,
                    sent,
                    {camera: observation[camera]},
                    observation["instruction"],
                    {"period_s": 0.1},
                    [],
                )
            )
            observation = robot.get_observation()
        paths["daemon"] = str(recorder.finish())
    return paths


def compare_av1(reference: Path, frames_file: Path) -> tuple[bool, str]:
    """Our reader on lerobot's AV1 dataset: every frame against the frames lerobot was given."""
    from data_tools.lerobot_reader import LeRobotDatasetReader

    written = np.load(frames_file)
    reader = LeRobotDatasetReader(reference)
    camera = reader.cameras[0]
    codec = reader.features[camera]["info"]["video.codec"]
    decoded = np.concatenate([reader.episode(index).frames[camera] for index in range(reader.num_episodes)])
    if decoded.shape != written.shape:
        return False, f"{codec}: {decoded.shape} frames read, {written.shape} written"
    error = np.abs(decoded.astype(np.int16) - written.astype(np.int16)).mean(axis=(1, 2, 3))
    shifted = np.abs(decoded[1:].astype(np.int16) - written[:-1].astype(np.int16)).mean(axis=(1, 2, 3))
    ok = codec == "av1" and error.max() < 6 and bool(np.all(error[1:] < shifted))
    return ok, f"{codec}, {len(decoded)} frames, mean abs error max {error.max():.2f} (neighbour {shifted.min():.2f})"


def probe_codec(path: Path) -> str:
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.codec.canonical_name


def main() -> int:
    seconds = ensure_venv()
    print(f"lerobot venv: {VENV} ({f'created in {seconds:.0f} s' if seconds else 'ready'})")
    work = REPO / "runs" / "interop-lerobot"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    paths = record_our_datasets(work)
    from data_tools.lerobot_reader import LeRobotDatasetReader

    ours = LeRobotDatasetReader(paths["ours_a"])
    frames = [ours.episode(index).frames[ours.cameras[0]] for index in range(ours.num_episodes)]
    np.save(work / "ours_a_frames.npy", np.concatenate(frames))
    from data_tools.lerobot_merge import merge_datasets

    paths["merged"] = str(merge_datasets(work / "ours_merged", [paths["ours_a"], paths["ours_b"]]).out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_LEROBOT_HOME": str(work / "home")}
    child = subprocess.run(
        [str(VENV / "bin/python"), str(REPO / "scripts/interop_lerobot_child.py"), str(work), json.dumps(paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 and not results:
        print(child.stdout[-3000:], child.stderr[-5000:])
    reference = work / "lerobot_av1"
    if (reference / "meta/info.json").is_file():
        ok, detail = compare_av1(reference, work / "lerobot_av1_frames.npy")
        results.append({"check": "our reader decodes lerobot's AV1 dataset", "ok": ok, "detail": detail})
    else:
        results.append({"check": "our reader decodes lerobot's AV1 dataset", "ok": False, "detail": "not written"})
    for name, episodes in (("aggregated", 4), ("resumed", 3)):
        try:
            reader = LeRobotDatasetReader(work / name)
            lengths = [len(reader.episode(index)) for index in range(reader.num_episodes)]
            codecs = sorted({probe_codec(path) for path in (work / name).rglob("*.mp4")})
            ok, detail = reader.num_episodes == episodes, f"{reader.num_episodes} episodes {lengths}, videos {codecs}"
        except Exception as error:  # reported as a failed check
            ok, detail = False, f"{type(error).__name__}: {error}"
        results.append({"check": f"our reader reads lerobot's {name} dataset", "ok": ok, "detail": detail})
    for result in results:
        print(f"{'PASS' if result['ok'] else 'FAIL'}  {result['check']}: {result['detail']}")
    failed = [result for result in results if not result["ok"]]
    if child.returncode != 0:
        print(child.stderr[-3000:])
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or child.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
