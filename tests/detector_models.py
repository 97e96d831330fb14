"""Models and releases the detector tests share: the hand-built planted-defect backbone, a tiny
random open_clip model saved the ways real weights ship, and a release whose defects are red.

Import it after `pytest.importorskip("torch")`: the backbone is a torch module's worth of
tensors.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adinstruct.validators.detector.backbones import Backbone, ImageEncoding, ImageInput, to_rgb

SIDE, PATCH = 64, 8  # the hand-built backbone's input and patch size: an 8 × 8 grid
NORMAL, ANOMALOUS, OTHER = 0, 1, 2  # directions of its 8-dimensional joint space
DIM = 8
ANOMALOUS_WORDS = re.compile(r"damaged|with (flaw|defect|damage)\b|crack")


class PlantedDefectBackbone(Backbone):
    """Embeddings that say "anomalous" exactly where the image is red.

    A patch token, a window embedding and the CLS embedding each point toward the
    "anomalous" text direction in proportion to the defect pixels they cover, which it reads
    from the pixels itself, so every step between the embeddings and the map is the scorer's.
    """

    name = "planted-defect"
    grid = (SIDE // PATCH, SIDE // PATCH)
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.text_calls = 0
        #: The size of each `encode_images` call, in order.
        self.batches: list[int] = []

    @staticmethod
    def defectness(image: ImageInput) -> np.ndarray:
        """(64, 64) in [0, 1]: how red each pixel of the squashed image is."""
        pixels = np.asarray(to_rgb(image).resize((SIDE, SIDE), Image.BILINEAR), dtype=float)
        return np.clip((pixels[..., 0] - pixels[..., 1]) / 150.0, 0.0, 1.0)

    @staticmethod
    def embed(fraction: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """Toward ANOMALOUS by the defect fraction, toward NORMAL by the rest, texture beside."""
        vector = torch.zeros(*fraction.shape, DIM)
        vector[..., NORMAL] = 1.0 - fraction
        vector[..., ANOMALOUS] = fraction
        vector[..., 3:] = texture.unsqueeze(-1) * torch.linspace(-0.2, 0.2, DIM - 3)
        return vector

    def encode_images(
        self, images: Sequence[ImageInput], *, window_sizes: Sequence[int] = ()
    ) -> ImageEncoding:
        self.batches.append(len(images))
        defect = torch.tensor(np.stack([self.defectness(image) for image in images]))
        texture = defect.new_tensor(
            np.stack(
                [np.asarray(to_rgb(i).convert("L").resize((SIDE, SIDE))) / 255.0 for i in images]
            )
        )

        # The mean over every k·PATCH-pixel square whose corner is on the patch grid: a
        # window's fraction comes from its own pixels, not from the patch tokens.
        def region_means(values: torch.Tensor, size: int) -> torch.Tensor:
            pooled = torch.nn.functional.avg_pool2d(
                values.unsqueeze(1), kernel_size=size * PATCH, stride=PATCH
            )
            return pooled.squeeze(1)

        patches = self.embed(region_means(defect, 1), region_means(texture, 1))
        windows = {
            size: self.embed(region_means(defect, size), region_means(texture, size))
            for size in window_sizes
        }
        # An image with 5% red is certainly defective: CLIP's CLS is that sensitive in spirit.
        global_fraction = (defect.mean(dim=(1, 2)) * 20).clamp(max=1.0)
        cls = self.embed(global_fraction, texture.mean(dim=(1, 2)))
        sizes = [(to_rgb(image).height, to_rgb(image).width) for image in images]
        return ImageEncoding(cls=cls, patches=patches, windows=windows, sizes=sizes)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """A text reads as anomalous if it names a defect, "other" if a misprint, else normal."""
        self.text_calls += 1
        rows = []
        for text in texts:
            vector = torch.zeros(DIM)
            if ANOMALOUS_WORDS.search(text):
                vector[ANOMALOUS] = 1.0
            elif "misprint" in text:
                vector[OTHER] = 1.0
            else:
                vector[NORMAL] = 1.0
            # Each prompt a little off its class direction, stably across runs.
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            vector[3:] = torch.tensor(np.random.default_rng(seed).normal(0, 0.05, DIM - 3))
            rows.append(vector)
        return torch.stack(rows)


# -- a tiny random open_clip model on disk ------------------------------------------------

TINY_ARCH = "adinstruct-tiny-vit"
#: A ViT of width 64, 2 layers, patch 16 at 64 px (a 4 × 4 grid), with a 2-layer text tower.
#: The vocabulary is CLIP's, so open_clip's own BPE tokenizer (shipped in the wheel) serves.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class TinyOpenClip:
    config: Path  # the architecture's config, as open_clip.add_model_config reads it
    weights: Path  # its state dict, as open_clip's .pt releases ship
    folder: Path  # open_clip_config.json and weights, for the local-dir: spec

    @property
    def local_dir_spec(self) -> str:
        return f"open_clip:{TINY_ARCH}@local-dir:{self.folder}"


def save_tiny_open_clip(root: Path, seed: int = 0) -> TinyOpenClip:
    """Build the tiny model with random weights and save it both ways under `root`."""
    import open_clip

    root.mkdir(parents=True, exist_ok=True)
    config = root / f"{TINY_ARCH}.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    folder = root / "tiny-dir"
    folder.mkdir(exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP_CONFIG, "preprocess_cfg": {}})
    )
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    weights = root / "tiny.pt"
    torch.save(model.state_dict(), weights)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return TinyOpenClip(config=config, weights=weights, folder=folder)


# -- a release in the MVTec AD layout whose defects are red --------------------------------

RED = (215, 45, 40)
IMAGE_HEIGHT, IMAGE_WIDTH = 96, 128  # not square: the backbone squashes, the masks must follow


@dataclass
class RedTree:
    root: Path
    #: Sample id -> the defect's box (top, left, bottom, right), for every anomalous image.
    defects: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    normals: list[str] = field(default_factory=list)


def grey_picture(rng: np.random.Generator) -> np.ndarray:
    grey = rng.normal(120, 18, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 1))
    return grey + rng.normal(0, 4, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3))


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def write_red_defect_tree(
    root: Path,
    *,
    categories: Sequence[str] = ("bottle", "tile"),
    train: int = 5,
    test_normal: int = 4,
    anomalies: int = 6,
    seed: int = 0,
) -> RedTree:
    """Grey textured images (all distinct), the anomalous ones with a red rectangle covering
    5.5–9% of the image and its exact mask, in MVTec AD's layout (`<cat>/test/paint/000.png`
    and `<cat>/ground_truth/paint/000_mask.png`)."""
    tree = RedTree(root)
    rng = np.random.default_rng(seed)
    (root / "license.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "license.txt").write_text("CC0-1.0\n")
    for category in categories:
        base = root / category
        for split, count in (("train", train), ("test", test_normal)):
            for index in range(count):
                save_png(base / split / "good" / f"{index:03d}.png", grey_picture(rng))
                tree.normals.append(f"mvtec_ad/{category}/{split}/good/{index:03d}")
        for index in range(anomalies):
            picture = grey_picture(rng)
            height, width = int(rng.integers(24, 29)), int(rng.integers(28, 38))
            top = int(rng.integers(0, IMAGE_HEIGHT - height))
            left = int(rng.integers(0, IMAGE_WIDTH - width))
            mask = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
            mask[top : top + height, left : left + width] = 255
            picture[mask > 0] = RED
            save_png(base / "test" / "paint" / f"{index:03d}.png", picture)
            save_png(base / "ground_truth" / "paint" / f"{index:03d}_mask.png", mask)
            sample_id = f"mvtec_ad/{category}/test/paint/{index:03d}"
            tree.defects[sample_id] = (top, left, top + height, left + width)
    return tree


def build_folder(tree_root: Path, out: Path) -> Path:
    """The tree built by adinstruct's pipeline (listing, annotation, images placed, validated)."""
    from adinstruct.builder.pipeline import BuildConfig, SourceSpec, build

    build(BuildConfig(sources=[SourceSpec(name="mvtec", root=tree_root)], out=out, workers=1))
    return out
