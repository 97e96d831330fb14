"""Images per second of the detector's full WinCLIP scoring next to the model's bare forward pass.

    python bench/detector_throughput.py [--images 4] [--batch-size 32] [--device cpu]
                                        [--text-ensemble] [--json FILE]

The model is open_clip's ViT-B-16-plus-240 (the architecture of WinCLIP's paper: a ViT-B/16
of width 896 at 240 px, a 15 × 15 patch grid) with random weights: nothing is downloaded,
and throughput does not depend on what the weights are. Both paths start from the same uint8
240 × 240 images and include preprocessing:

- bare: open_clip's preprocess and `model.encode_image`, batch by batch;
- WinCLIP: `ZeroShotScorer.score`, the image score and the pixel map, which also runs 196
  windows of 2 × 2 and 169 of 3 × 3 patches per image through the transformer (2,670 tokens
  an image against the full pass's 226), harmonic aggregation and the bilinear upsampling.

Text embeddings are computed once per category and kept, so they are no part of a per-image
rate, and the image path is the same whatever the prompts (each class is one averaged
vector by then). By default the scorer gets the 11 state prompts in one template; with
`--text-ensemble` it gets WinCLIP's full 242 (11 states × 22 templates), and the time to
encode them is reported: about a minute of text tower on two CPU cores.

Two cores run WinCLIP at roughly 0.05–0.1 images a second, so the default of 4 images (one
partial batch) keeps the run near two minutes; on a GPU pass `--images 320` for full batches.
On an accelerator one warm-up image goes through both paths first; on CPU only through the
bare one (first-call costs there are small next to a WinCLIP image's ~15 s).
A measurement, not a test: it exits 0 whatever it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adinstruct.validators.detector.backbones import OpenClipBackbone
from adinstruct.validators.detector.prompts import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    PromptSet,
    category_phrase,
    winclip_prompts,
)
from adinstruct.validators.detector.scoring import ZeroShotScorer

ARCH = "ViT-B-16-plus-240"
SIDE = 240


def state_prompts(category: str) -> PromptSet:
    """WinCLIP's 11 states in one template: the same image path as the full ensemble."""
    name = category_phrase(category)

    def compose(states: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"a photo of the {state.format(name)}." for state in states)

    return PromptSet(
        category, compose(NORMAL_STATES), compose(ANOMALOUS_STATES), "ensemble", "winclip"
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures work done rather than work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def bare_forward(backbone: OpenClipBackbone, images: list[np.ndarray], batch_size: int) -> None:
    from PIL import Image

    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = [Image.fromarray(image) for image in images[start : start + batch_size]]
            pixels = torch.stack([backbone.preprocess(image) for image in batch])
            backbone.model.encode_image(pixels.to(device=backbone.device, dtype=backbone.dtype))


def timed(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per path (default 4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    parser.add_argument(
        "--text-ensemble", action="store_true", help="score with all 242 prompts, and time them"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.images < 1 or args.batch_size < 1:
        parser.error("--images and --batch-size must be at least 1")

    import open_clip

    started = time.perf_counter()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(
        ARCH, pretrained=None, image_resize_mode="squash"
    )
    backbone = OpenClipBackbone(
        model, preprocess, open_clip.get_tokenizer(ARCH), name=f"open_clip:{ARCH} (random)",
        device=args.device, batch_size=args.batch_size,
    )  # fmt: skip
    build_s = time.perf_counter() - started
    scorer = ZeroShotScorer(backbone)
    prompts = winclip_prompts("bottle") if args.text_ensemble else state_prompts("bottle")
    text_s = timed(lambda: scorer.text_embeddings(prompts), backbone.device)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(args.images)]
    bare_forward(backbone, images[:1], args.batch_size)  # warm-up
    if backbone.device.type != "cpu":
        scorer.score(images[:1], prompts)
    bare_s = timed(lambda: bare_forward(backbone, images, args.batch_size), backbone.device)
    winclip_s = timed(lambda: scorer.score(images, prompts), backbone.device)

    bare_rate, winclip_rate = args.images / bare_s, args.images / winclip_s
    figures = {
        "model": ARCH, "device": str(backbone.device), "dtype": str(backbone.dtype),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "images": args.images, "batch_size": args.batch_size, "grid": list(backbone.grid),
        "model_build_s": round(build_s, 2), "prompts": len(prompts.normal) + len(prompts.anomalous),
        "text_s": round(text_s, 2), "bare_images_per_s": round(bare_rate, 4),
        "winclip_images_per_s": round(winclip_rate, 4),
        "winclip_over_bare": round(winclip_rate / bare_rate, 4),
    }  # fmt: skip
    print(f"device          {figures['device']} ({figures['dtype']}, "
          f"{figures['torch_threads']} torch threads, {figures['cpus']} CPUs)")  # fmt: skip
    print(f"model           {ARCH}, random weights, {SIDE} px, grid {backbone.grid}, "
          f"built in {build_s:.1f} s")  # fmt: skip
    print(f"text prompts    {figures['prompts']} encoded in {text_s:.2f} s "
          "(once per category; not in the rates)")  # fmt: skip
    print(f"images          {args.images}, batch size {args.batch_size}")
    print(f"bare forward    {bare_rate:8.3f} images/s  ({bare_s:.2f} s)")
    print(f"WinCLIP full    {winclip_rate:8.3f} images/s  ({winclip_s:.2f} s)")
    print(f"ratio           WinCLIP / bare = {winclip_rate / bare_rate:.4f} "
          f"({bare_rate / winclip_rate:.1f}× slower)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
