"""CLIP backbones on disk for the reference detector: CLS, patch-token and window embeddings.

Every backbone gives, for a batch of images, the pooled and projected CLS embedding, the
vision tower's patch tokens projected into the joint space (B × h × w × D), and for WinCLIP
the embedding of every k × k window of patches (stride 1), each window encoded as its own
image: the class token and the window's patch tokens go through the transformer as one short
sequence, so they attend only to each other. That is the block-diagonal attention mask of
WinCLIP, without spending attention on the tokens it would mask out (a 240-pixel ViT-B/16 has
226 tokens; a 3 × 3 window needs 10). tests/test_detector_backbones.py checks the two agree.

Sequences enter the transformer batch-first (N, L, D). open_clip's `Transformer` takes that
layout from 2.26 on, whatever layout its blocks run in internally; code written for the older
sequence-first interface permutes to (L, N, D) first, which now makes the transformer attend
across windows at the same position instead of within a window, silently: each window's class
token then sees only class tokens, which are alike in every window, so every window gets the
same embedding and the window maps come out flat.

Weights always come from a local path (spec strings, see `load_backbone`): the detector must
never reach for a hub.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from adinstruct.builder.errors import ConfigError

ImageInput = Image.Image | np.ndarray
#: Window sequences per transformer call: bounds activation memory whatever the batch size
#: (a batch of 32 at 240 px makes 11,680 windows).
WINDOW_CHUNK = 2048
#: Texts per text-tower call.
TEXT_CHUNK = 256
#: The weight files open_clip's `local-dir:` loader looks for (factory._find_checkpoint_in_dir).
OPEN_CLIP_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")

SPEC_FORMS = (
    "open_clip:ARCH@/path/to/weights.pt, open_clip:ARCH@local-dir:/path/to/folder "
    "(open_clip_config.json + weights) or hf:/path/to/folder (CLIPModel + CLIPProcessor saved "
    "with save_pretrained)"
)


@dataclass
class ImageEncoding:
    """Float32 CPU embeddings of a batch; none of them is normalised."""

    #: (B, D): the pooled, projected class token.
    cls: torch.Tensor
    #: (B, h, w, D): patch tokens after the final norm and the projection.
    patches: torch.Tensor
    #: k -> (B, h - k + 1, w - k + 1, D): the window whose top-left patch is (i, j) at [:, i, j].
    windows: dict[int, torch.Tensor]
    #: (height, width) of each input image, for maps at the image's own size.
    sizes: list[tuple[int, int]]


class Backbone(ABC):
    """What the scorer needs from a vision-language model, whichever library made it."""

    name: str
    #: Patch grid (h, w) of the vision tower.
    grid: tuple[int, int]
    device: torch.device

    @abstractmethod
    def encode_images(
        self, images: Sequence[ImageInput], *, window_sizes: Sequence[int] = ()
    ) -> ImageEncoding:
        """CLS, patch and (for each size in `window_sizes`) window embeddings of `images`."""

    @abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 CPU text embeddings, not normalised."""


def pick_device(requested: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA in half precision when present, else Apple MPS, else CPU, both in float32.

    MPS stays in float32: its half-precision LayerNorm and softmax lose enough to move
    window scores, and these models are small next to its memory.
    """
    if requested is not None:
        device = torch.device(requested)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    return device, torch.float16 if device.type == "cuda" else torch.float32


def window_indices(grid: tuple[int, int], size: int) -> torch.Tensor:
    """(windows, 1 + size²) token positions: 0 for the class token, 1 + row-major patch index.

    Windows run row-major over their top-left patch, stride 1.
    """
    height, width = grid
    if not 1 <= size <= min(height, width):
        raise ConfigError(f"a window of {size}×{size} patches does not fit a {height}×{width} grid")
    rows = torch.arange(height - size + 1).view(-1, 1, 1, 1)
    cols = torch.arange(width - size + 1).view(1, -1, 1, 1)
    offset_rows = torch.arange(size).view(1, 1, -1, 1)
    offset_cols = torch.arange(size).view(1, 1, 1, -1)
    patches = (rows + offset_rows) * width + (cols + offset_cols)  # (nh, nw, size, size)
    patches = patches.reshape(-1, size * size) + 1
    return torch.cat([torch.zeros(len(patches), 1, dtype=torch.long), patches], dim=1)


def to_rgb(image: ImageInput) -> Image.Image:
    """A PIL RGB image from PIL or a uint8 array (H × W, H × W × 3 or H × W × 4)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(
            f"an image array must be uint8 H×W or H×W×C, not {array.dtype} {array.shape}"
        )
    return Image.fromarray(array).convert("RGB")


class VisionTransformerBackbone(Backbone):
    """The loop shared by every ViT backbone; a library fills in four hooks.

    `_stem` gives the tokens that enter the transformer (class token first, positional
    embeddings added, pre-norm applied: everything per token), `_blocks` runs the transformer
    on batch-first sequences, `_head` maps tokens to the joint space (final norm and
    projection, per token), and `_pixels` preprocesses images.
    """

    def __init__(
        self, *, name: str, grid: tuple[int, int], device: torch.device, batch_size: int
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        self.name = name
        self.grid = grid
        self.device = device
        self.batch_size = batch_size
        self._window_indices: dict[int, torch.Tensor] = {}

    @abstractmethod
    def _pixels(self, images: list[Image.Image]) -> torch.Tensor: ...

    @abstractmethod
    def _stem(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _blocks(self, sequences: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _head(self, tokens: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _text_batch(self, texts: list[str]) -> torch.Tensor: ...

    def encode_images(
        self, images: Sequence[ImageInput], *, window_sizes: Sequence[int] = ()
    ) -> ImageEncoding:
        rgb = [to_rgb(image) for image in images]
        if not rgb:
            raise ValueError("encode_images needs at least one image")
        parts: list[ImageEncoding] = []
        with torch.inference_mode():
            for start in range(0, len(rgb), self.batch_size):
                parts.append(self._encode_batch(rgb[start : start + self.batch_size], window_sizes))
        return ImageEncoding(
            cls=torch.cat([part.cls for part in parts]),
            patches=torch.cat([part.patches for part in parts]),
            windows={k: torch.cat([part.windows[k] for part in parts]) for k in window_sizes},
            sizes=[(image.height, image.width) for image in rgb],
        )

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            raise ValueError("encode_text needs at least one text")
        with torch.inference_mode():
            chunks = [
                self._text_batch(texts[start : start + TEXT_CHUNK]).float().cpu()
                for start in range(0, len(texts), TEXT_CHUNK)
            ]
        return torch.cat(chunks)

    def _encode_batch(
        self, images: list[Image.Image], window_sizes: Sequence[int]
    ) -> ImageEncoding:
        height, width = self.grid
        stem = self._stem(self._pixels(images))
        if stem.shape[1] != 1 + height * width:
            raise ConfigError(
                f"{self.name} gives {stem.shape[1]} tokens, not 1 + {height}×{width}: "
                "WinCLIP needs a class token and one token per patch"
            )
        tokens = self._head(self._blocks(stem)).float().cpu()
        windows = {size: self.window_embeddings(stem, size) for size in window_sizes}
        return ImageEncoding(
            cls=tokens[:, 0],
            patches=tokens[:, 1:].reshape(len(images), height, width, -1),
            windows=windows,
            sizes=[],
        )

    def window_sequences(self, stem: torch.Tensor, size: int) -> torch.Tensor:
        """(B × windows, 1 + size², width): each window's class and patch tokens, batch-first."""
        if size not in self._window_indices:
            self._window_indices[size] = window_indices(self.grid, size).to(stem.device)
        index = self._window_indices[size]
        # stem[:, index] is (B, windows, 1 + size², width): image-major, so the flat batch
        # keeps each image's windows together and row-major.
        return stem[:, index].flatten(0, 1)

    def window_embeddings(self, stem: torch.Tensor, size: int) -> torch.Tensor:
        """(B, h - size + 1, w - size + 1, D): the class token of each window's own pass."""
        height, width = self.grid
        sequences = self.window_sequences(stem, size)
        pooled = [
            self._head(self._blocks(sequences[start : start + WINDOW_CHUNK])[:, 0])
            for start in range(0, len(sequences), WINDOW_CHUNK)
        ]
        embeddings = torch.cat(pooled).float().cpu()
        return embeddings.reshape(len(stem), height - size + 1, width - size + 1, -1)


# -- open_clip ------------------------------------------------------------------------------


class OpenClipBackbone(VisionTransformerBackbone):
    """An open_clip CLIP whose image tower is a class-token `VisionTransformer`."""

    def __init__(
        self,
        model: Any,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        name: str,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        require_class_token_vit(model.visual, name)
        visual = model.visual
        torch_device, dtype = pick_device(device)
        super().__init__(
            name=name, grid=tuple(visual.grid_size), device=torch_device, batch_size=batch_size
        )
        self.model = model.to(device=torch_device, dtype=dtype).eval()
        self.dtype = dtype
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(image) for image in images])
        return pixels.to(device=self.device, dtype=self.dtype)

    def _stem(self, pixels: torch.Tensor) -> torch.Tensor:
        # VisionTransformer.forward up to the transformer, spelled out from the attributes
        # every open_clip release has rather than its private `_embeds`, which not all have.
        visual = self.model.visual
        x = visual.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)  # the identity in eval mode
        return visual.ln_pre(x)

    def _blocks(self, sequences: torch.Tensor) -> torch.Tensor:
        transformer = self.model.visual.transformer
        if hasattr(transformer, "batch_first"):
            # 2.26 and later: the interface is batch-first whatever the blocks run in.
            return transformer(sequences)
        return transformer(sequences.transpose(0, 1)).transpose(0, 1)  # the older (L, N, D)

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        tokens = visual.ln_post(tokens)
        return tokens @ visual.proj if visual.proj is not None else tokens

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def require_class_token_vit(visual: Any, name: str) -> None:
    """WinCLIP reads the class token of a plain ViT; other open_clip towers cannot serve."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"{name}: the image tower is {type(visual).__name__}; WinCLIP needs an open_clip "
            "VisionTransformer (a ViT architecture)"
        )
    if visual.attn_pool is not None or visual.pool_type != "tok":
        pooler = " and an attentional pooler" if visual.attn_pool is not None else ""
        raise ConfigError(
            f"{name}: the image tower pools with {visual.pool_type!r}{pooler}; WinCLIP reads "
            "the class token, so it needs pool_type 'tok' and no attentional pooler"
        )


def load_open_clip(
    arch: str, weights: str, *, device: str | None = None, batch_size: int = 32
) -> OpenClipBackbone:
    """`weights` is a state-dict file for the built-in (or added) config `arch`, or
    "local-dir:/folder" holding open_clip_config.json and its weights; there the folder's
    config decides the architecture and `arch` only names the model in messages."""
    try:
        import open_clip
    except ImportError as error:
        raise ConfigError(
            "the detector needs open_clip: pip install 'adinstruct[detector]'"
        ) from error
    if weights.startswith("local-dir:"):
        folder = Path(weights.removeprefix("local-dir:")).expanduser()
        _require_open_clip_folder(folder, arch)
        model_name, pretrained = f"local-dir:{folder}", None
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            tags = open_clip.list_pretrained_tags_by_model(arch)
            why = (
                f"{weights!r} is a download tag" if weights in tags else f"{weights} is not a file"
            )
            raise _not_on_disk(f"open_clip:{arch}@{weights}", why)
        if arch not in open_clip.list_models():
            raise ConfigError(
                f"open_clip has no architecture {arch!r}: name a built-in one "
                "(open_clip.list_models()), register its config with open_clip.add_model_config, "
                "or pass open_clip:ARCH@local-dir:/folder with an open_clip_config.json"
            )
        model_name, pretrained = arch, str(path)
    try:
        # "squash": the whole image is resized, not centre-cropped, so that a map upsampled
        # to the image's size covers every pixel of its mask.
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, image_resize_mode="squash", pretrained_text=False
        )
    except (RuntimeError, ValueError, KeyError, OSError, pickle.UnpicklingError) as error:
        raise ConfigError(
            f"open_clip cannot load {arch} from {weights}: {first_line(error)}"
        ) from error
    require_class_token_vit(model.visual, f"open_clip:{arch}")
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except (OSError, ValueError) as error:
        # Configs with an hf_tokenizer_name fetch it from the hub, which this cannot reach.
        raise ConfigError(
            f"open_clip cannot build the tokenizer of {arch}: {first_line(error)}; "
            "its files must be on disk too"
        ) from error
    return OpenClipBackbone(
        model, preprocess, tokenizer, name=f"open_clip:{arch}", device=device,
        batch_size=batch_size,
    )  # fmt: skip


def _require_open_clip_folder(folder: Path, arch: str) -> None:
    spec = f"open_clip:{arch}@local-dir:{folder}"
    if not folder.is_dir():
        raise _not_on_disk(spec, f"{folder} is not a folder")
    if not (folder / "open_clip_config.json").is_file():
        raise _not_on_disk(spec, f"{folder} has no open_clip_config.json")
    # Without weights open_clip only warns and builds a randomly initialised model: a
    # detector that scores noise, which must not pass for one that works.
    if not any(path.suffix in OPEN_CLIP_WEIGHT_SUFFIXES for path in folder.iterdir()):
        raise _not_on_disk(
            spec, f"{folder} has no weights file (*.safetensors, *.bin or *.pth) beside its config"
        )


# -- transformers -------------------------------------------------------------------------


class HFClipBackbone(VisionTransformerBackbone):
    """A transformers `CLIPModel` and its `CLIPProcessor`."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        torch_device, dtype = pick_device(device)
        super().__init__(name=name, grid=(side, side), device=torch_device, batch_size=batch_size)
        self.model = model.to(device=torch_device, dtype=dtype).eval()
        self.dtype = dtype
        self.processor = processor
        self.image_size = vision.image_size

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        # Resized whole (no centre crop), as for open_clip: the map must cover the mask.
        inputs = self.processor.image_processor(
            images=images,
            do_center_crop=False,
            size={"height": self.image_size, "width": self.image_size},
            return_tensors="pt",
        )
        return inputs["pixel_values"].to(device=self.device, dtype=self.dtype)

    def _stem(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        return vision.pre_layrnorm(vision.embeddings(pixels))

    def _blocks(self, sequences: torch.Tensor) -> torch.Tensor:
        # transformers' encoders are batch-first in every release.
        return self.model.vision_model.encoder(inputs_embeds=sequences).last_hidden_state

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model.post_layernorm(tokens))

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor.tokenizer(
            texts, padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        features = self.model.get_text_features(**inputs)
        # transformers 5 returns the model output (projected pooler_output); 4.x the tensor.
        return features if isinstance(features, torch.Tensor) else features.pooler_output


def load_hf_clip(folder: str, *, device: str | None = None, batch_size: int = 32) -> HFClipBackbone:
    path = Path(folder).expanduser()
    spec = f"hf:{folder}"
    if not path.is_dir():
        raise _not_on_disk(spec, f"{folder} is not a folder")
    if not (path / "config.json").is_file():
        raise _not_on_disk(
            spec, f"{folder} has no config.json (save the model with save_pretrained)"
        )
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as error:
        raise ConfigError(
            "the detector needs transformers: pip install 'adinstruct[detector]'"
        ) from error
    try:
        # local_files_only: a folder missing a file must fail here, not reach for the hub.
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"transformers cannot load a CLIP from {folder}: {first_line(error)}"
        ) from error
    return HFClipBackbone(model, processor, name=spec, device=device, batch_size=batch_size)


# -- spec strings -----------------------------------------------------------------------------


def load_backbone(spec: str, *, device: str | None = None, batch_size: int = 32) -> Backbone:
    """A backbone from a spec string naming weights on disk (`SPEC_FORMS`)."""
    kind, _, rest = spec.partition(":")
    if kind == "open_clip":
        arch, separator, weights = rest.partition("@")
        if not arch or not separator or not weights:
            raise _not_on_disk(spec, "it names no weights after '@'")
        if weights.startswith("hf-hub:") or arch.startswith("hf-hub:"):
            raise _not_on_disk(spec, "it names a hub model")
        return load_open_clip(arch, weights, device=device, batch_size=batch_size)
    if kind == "hf" and rest:
        return load_hf_clip(rest, device=device, batch_size=batch_size)
    raise ConfigError(f"detector backbone {spec!r} is not one of: {SPEC_FORMS}")


def first_line(error: BaseException) -> str:
    """The first line of a library's message (torch's run to a paragraph), else its repr."""
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _not_on_disk(spec: str, why: str) -> ConfigError:
    return ConfigError(
        f"detector backbone {spec!r}: {why}; the weights must be on disk (this machine downloads "
        f"nothing): pass {SPEC_FORMS}"
    )
