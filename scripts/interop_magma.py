"""Check the Magma-8B export against Microsoft's own Magma code (``make interop``), run with the main venv.

1. Exports a magma-tiny model of ours in the Magma-8B layout (``magma.magma8b_layout.export_magma8b``) and
   computes our logits on one prompt with two images (our processor: input ids, crops, crop grids).
2. In its own venv (``runs/.interop-venvs/magma``: transformers 4.48.3, which their hub README's fork is
   based on, timm, open_clip; torch and torchvision borrowed from the main venv), loads the export with THEIR
   classes, imported from a package made of their .py files (from ``--magma-code``): transformers'
   remote-code loader refuses their modeling module, which imports deepspeed inside a function inference
   never calls. Stock transformers renames every ``*.gamma`` key while loading, dropping the ConvNeXt layer
   scales, so the weights are loaded by name (reported as a NOTE). Their vision tower is the open_clip model of
   ``hf-hub:laion/CLIP-convnext_xxlarge-...``; an offline hub cache entry under that name describes the tiny
   trunk (registered with timm under its own name), as the real entry describes ConvNeXt-XXLarge.
3. Runs their model on the same pixels and ids (their conventions: one ``<image>`` per image, which their
   model expands; ``pixel_values`` (batch, crops, 3, H, W); ``image_sizes`` (batch, images, 2) crop grids)
   and compares logits; also their processor (tokenizer + ``MagmaImageProcessor``) against ours.

Prints one ``PASS``/``FAIL`` line per check and the max abs logit difference; exits non-zero on a mismatch.

Usage: ``.venv/bin/python scripts/interop_magma.py --magma-code DIR`` (DIR holds their configuration_magma.py,
modeling_magma.py, image_tower_magma.py, processing_magma.py, image_processing_magma.py: the ``magma/``
folder of github.com/microsoft/Magma, or a download of the microsoft/Magma-8B hub repo). Their code is read
from DIR at run time, never copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "runs" / ".interop-venvs" / "magma"
# their pyproject pins transformers 4.44 (a fork), timm 0.9.12; open_clip >= 2.24 has image_transform_v2
REQUIREMENTS = [
    "torch==2.13.0",
    "torchvision==0.28.0",
    "transformers==4.48.3",  # their hub README names a 4.48.2 fork; 4.44 renames every *.gamma key on load
    "timm==0.9.12",
    "open_clip_torch==2.24.0",
    "wandb",  # modeling_magma.py imports it at the top
]
THEIR_FILES = (
    "configuration_magma.py",
    "modeling_magma.py",
    "image_tower_magma.py",
    "processing_magma.py",
    "image_processing_magma.py",
)
CLIP_HUB_ID = "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg"  # what their image tower asks open_clip for
TIMM_NAME = "magma_interop_convnext"
TOLERANCE = 1e-5
PROMPT = "<image>\nWhat is in the first picture?\n<image>\nAnd in the second?"


def report(name: str, passed: bool, detail: str = "") -> bool:
    print(f"{'PASS' if passed else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
    return passed


# ---- our side (main venv) ---------------------------------------------------------------------------
def interop_python() -> Path:
    """The venv's python, created once. PyPI's torchvision is a CUDA build that needs torch's CUDA libraries,
    which the CPU torch 2.13 on disk lacks, so the venv then borrows torch and torchvision (with their CUDA
    libraries) from the main venv: links in one folder, put on sys.path after the venv's own packages."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import transformers, open_clip, timm, wandb, torchvision"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing {' '.join(REQUIREMENTS)} into {VENV} (its own venv)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True, timeout=1800)
    if subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torch", "torchvision"], check=True)
        ours = Path(__import__("torch").__file__).resolve().parents[1]
        borrowed = VENV / "borrowed-torch"
        borrowed.mkdir(exist_ok=True)
        patterns = ("torch", "torch-*", "torchgen", "functorch", "torchvision*", "nvidia*", "cuda*", "triton*")
        for pattern in patterns:
            for path in ours.glob(pattern):
                if not (borrowed / path.name).exists():
                    (borrowed / path.name).symlink_to(path)
        site = Path(
            subprocess.check_output(
                [str(python), "-c", "import site; print(site.getsitepackages()[0])"], text=True
            ).strip()
        )
        (site / "borrowed_torch.pth").write_text(f"{borrowed}\n")
        subprocess.run(probe, check=True)
    return python


def write_case(work: Path) -> None:
    """The export, the inputs (ours and theirs), our logits and the images, under ``work``."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from magma.config import load_config
    from magma.magma8b_layout import export_magma8b
    from magma.model import MagmaForCausalLM
    from magma.processor import MagmaProcessor

    torch.manual_seed(0)
    config = load_config("magma-tiny")
    model = MagmaForCausalLM(config).eval()
    with torch.no_grad():
        model.projector.row_separator.normal_()  # non-zero, so its placement shows in the logits
        for name, parameter in model.vision_tower.named_parameters():
            if name.endswith("gamma"):  # ConvNeXt layer scales away from their init, so a dropped one shows
                parameter.uniform_(0.5, 1.5)
    processor = MagmaProcessor.from_config(config)
    rng = np.random.default_rng(0)
    images = []
    for index, (width, height) in enumerate(((300, 140), (120, 260))):
        path = work / f"image{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        images.append(path)
    inputs = processor(PROMPT, images)
    with torch.no_grad():
        logits = model(**inputs.as_kwargs()).logits
    export_magma8b(model, work / "export", processor.tokenizer, vision_backbone="convnextxxlarge")
    ids = inputs.input_ids[0].tolist()
    image_id = config.tokens.image_token_id
    collapsed = [token for i, token in enumerate(ids) if token != image_id or i == 0 or ids[i - 1] != image_id]
    rendered = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT.replace("<image>", "<image_start><image><image_end>")}],
        tokenize=False,
        add_generation_prompt=True,
    )
    save_file(
        {
            "logits": logits.contiguous(),
            "pixel_values": inputs.pixel_values.contiguous(),
            "image_grids": inputs.image_grids.contiguous(),
            "their_input_ids": torch.tensor([collapsed]),
        },
        str(work / "case.safetensors"),
    )
    trunk = {"dims": list(config.vision.dims), "depths": list(config.vision.depths), "norm_eps": config.vision.norm_eps}
    spec = {"images": [str(p) for p in images], "prompt": rendered, "trunk": trunk, "image": vars(config.image)}
    (work / "case.json").write_text(json.dumps(spec, default=list))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--magma-code", type=Path, required=True, help="The folder holding their modeling files.")
    parser.add_argument("--peer", type=Path, help=argparse.SUPPRESS)  # the venv side, given the case folder
    args = parser.parse_args()
    if args.peer:
        return peer(args.magma_code, args.peer)
    missing = [name for name in THEIR_FILES if not (args.magma_code / name).is_file()]
    if missing:
        print(f"error: '{args.magma_code}' lacks {missing}; give the folder of Microsoft's Magma code", file=sys.stderr)
        return 2
    python = interop_python()
    with tempfile.TemporaryDirectory(prefix="interop-magma-") as folder:
        work = Path(folder)
        write_case(work)
        hub = work / "hub"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "TRANSFORMERS_OFFLINE": "1"}
        env |= {"HF_HOME": str(work / "hf-home"), "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
        command = [str(python), __file__, "--magma-code", str(args.magma_code.resolve()), "--peer", str(work)]
        return subprocess.run(command, env=env, timeout=1800).returncode


# ---- their side (the interop venv; imports nothing of ours) ----------------------------------------------
def fake_clip_hub_entry(hub: Path, embed_dim: int = 1024) -> None:
    """An offline hub cache entry for the open_clip model their image tower names, describing the tiny trunk
    (its weights file is never read: their tower is built without pretrained weights)."""
    entry = hub / f"models--{CLIP_HUB_ID.replace('/', '--')}"
    revision = "0" * 40
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision)
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": TIMM_NAME, "timm_model_pretrained": False, "timm_pool": ""},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    model_cfg["vision_cfg"] |= {"timm_proj": "linear", "timm_drop": 0.0, "timm_drop_path": None, "image_size": 128}
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"")


def register_tiny_trunk(trunk: dict) -> None:
    import timm.models
    from timm.models.convnext import ConvNeXt

    def magma_interop_convnext(pretrained: bool = False, **kwargs):  # timm calls it so
        kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
        model = ConvNeXt(depths=trunk["depths"], dims=trunk["dims"], norm_eps=trunk["norm_eps"], **kwargs)
        model.pretrained_cfg = model.default_cfg = {}
        return model

    magma_interop_convnext.__module__ = "timm.models.convnext"
    timm.models.register_model(magma_interop_convnext)


def peer(magma_code: Path, work: Path) -> int:
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    spec = json.loads((work / "case.json").read_text())
    case = load_file(str(work / "case.safetensors"))
    fake_clip_hub_entry(Path(os.environ["HF_HUB_CACHE"]))
    register_tiny_trunk(spec["trunk"])
    # their classes, imported from a package of their files: AutoModelForCausalLM with trust_remote_code would
    # first demand deepspeed, which modeling_magma.py imports inside a function that inference never calls
    package = work / "magma_remote"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in THEIR_FILES:
        shutil.copy(magma_code / name, package / name)
    sys.path.insert(0, str(work))
    from magma_remote.image_processing_magma import MagmaImageProcessor
    from magma_remote.modeling_magma import MagmaForCausalLM
    from magma_remote.processing_magma import MagmaProcessor
    from transformers import AutoTokenizer

    directory = work / "export"  # as exported: their MagmaConfig reads config.json, their loader the shards
    ok = True
    model, info = MagmaForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32, output_loading_info=True)
    model.eval()
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    renamed = [key for key in missing if key.endswith(".gamma") and key[: -len("gamma")] + "weight" in unexpected]
    if len(renamed) == len(missing) == len(unexpected) and renamed:
        # stock transformers (4.44-4.48) renames every "*.gamma" key to "*.weight" while loading, so the ConvNeXt
        # layer scales of any Magma checkpoint (Magma-8B's too) are dropped: the reason their README asks for their
        # transformers fork. The file is right; load it as their fork does, by name.
        print(f"NOTE  stock transformers' from_pretrained renamed {len(renamed)} ConvNeXt layer scales (*.gamma)")
        files = (
            json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"].values()
            if (directory / "model.safetensors.index.json").is_file()
            else ["model.safetensors"]
        )
        state = {}
        for file in sorted(set(files)):
            state |= load_file(str(directory / file))
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    ok &= report(
        "their MagmaForCausalLM holds every exported tensor",
        not missing and not unexpected and not info["mismatched_keys"],
        f"{type(model).__module__}.{type(model).__name__}; {len(missing)} missing, {len(unexpected)} unexpected"
        + (f": {(missing + unexpected)[:4]}" if missing or unexpected else ""),
    )
    ids = case["their_input_ids"]
    grids = case["image_grids"]
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=case["pixel_values"].unsqueeze(0),  # (batch, crops, 3, H, W)
            image_sizes=grids.unsqueeze(0),  # (batch, images, [rows, cols])
            use_cache=False,
        )
    theirs, ours = out.logits.float(), case["logits"].float()
    same_shape = theirs.shape == ours.shape
    difference = (theirs - ours).abs().max().item() if same_shape else float("inf")
    ok &= report(
        "their logits equal ours (fp32)",
        same_shape and difference <= TOLERANCE,
        f"max abs diff {difference:.3g}, logits {tuple(theirs.shape)} (ours {tuple(ours.shape)}), "
        f"tolerance {TOLERANCE:g}",
    )
    print(json.dumps({"name": "magma8b_export_logits_max_abs_diff", "value": difference, "unit": "logit"}))

    settings = json.loads((directory / "preprocessor_config.json").read_text())
    settings = {key: value for key, value in settings.items() if key not in ("auto_map", "processor_class")}
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    processor = MagmaProcessor(image_processor=MagmaImageProcessor(**settings), tokenizer=tokenizer)
    images = [Image.open(path).convert("RGB") for path in spec["images"]]
    features = processor(texts=spec["prompt"], images=images, return_tensors="pt")
    their_ids = features["input_ids"]
    ok &= report(
        "their tokenizer gives our ids for the rendered prompt",
        their_ids.tolist() == ids.tolist(),
        f"{their_ids.shape[-1]} ids, ours {ids.shape[-1]}",
    )
    pixels = features["pixel_values"]
    their_grids = torch.as_tensor(features["image_sizes"]).reshape(-1, 2)
    same_crops = pixels.shape == case["pixel_values"].shape and torch.equal(their_grids, grids)
    pixel_difference = (pixels - case["pixel_values"]).abs().max().item() if same_crops else float("inf")
    # images up to EXACT_RESIZE_MAX_PIXELS go through their steps (normalise, then resize in float)
    ok &= report(
        "their image processor gives our crops and pixel values",
        same_crops and pixel_difference <= 1e-6,
        f"grids {their_grids.tolist()} (ours {grids.tolist()}), max abs pixel diff {pixel_difference:.3g}",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
