"""Detector backbones: tiny random CLIPs from open_clip and transformers, saved and loaded back.

Nothing is downloaded: each test run builds its models with a fixed seed, saves them the way
real weights are shipped (an open_clip state-dict .pt, an open_clip local-dir folder, a
transformers save_pretrained folder) and loads them through the spec strings.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from detector_models import TINY_ARCH, TINY_OPEN_CLIP_CONFIG  # noqa: E402
from PIL import Image  # noqa: E402

from adinstruct.builder.errors import ConfigError  # noqa: E402
from adinstruct.validators.detector.backbones import (  # noqa: E402
    Backbone,
    ImageEncoding,
    load_backbone,
    pick_device,
    window_indices,
)

ARCH = TINY_ARCH
OPEN_CLIP_CONFIG = TINY_OPEN_CLIP_CONFIG
GRID = (4, 4)
TEXTS = [
    "a photo of a flawless bottle.",
    "a photo of a damaged bottle.",
    "a cropped photo of the screw.",
]


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Random uint8 RGB images of a size the models must resize (not their 64 × 64)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8) for _ in range(count)]


def allclose(a, b) -> bool:
    # Batched and single matmuls take different kernels on CPU: equal to rounding, not bits.
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def assert_same_encoding(a: ImageEncoding, b: ImageEncoding) -> None:
    assert allclose(a.cls, b.cls)
    assert allclose(a.patches, b.patches)
    assert a.windows.keys() == b.windows.keys()
    for size in a.windows:
        assert allclose(a.windows[size], b.windows[size])


# -- the models, built once per run ---------------------------------------------------------


@pytest.fixture(scope="module")
def open_clip_saved(tmp_path_factory):
    """(original model, spec of the .pt file, spec of the local-dir folder)."""
    root = tmp_path_factory.mktemp("open_clip")
    config_file = root / f"{ARCH}.json"
    config_file.write_text(json.dumps(OPEN_CLIP_CONFIG))
    # How a user brings a custom architecture to a .pt file: register its config.
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH).eval()
    weights = root / "tiny.pt"
    torch.save(model.state_dict(), weights)
    folder = root / "tiny-dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": OPEN_CLIP_CONFIG, "preprocess_cfg": {}})
    )
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model, f"open_clip:{ARCH}@{weights}", f"open_clip:{ARCH}@local-dir:{folder}"


def clip_byte_vocabulary() -> dict[str, int]:
    """CLIP's byte-level BPE alphabet without merges: every text tokenizes, per character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = (byte for byte in range(256) if byte not in printable)
    alphabet = [chr(code) for code in printable] + [chr(256 + n) for n, _ in enumerate(extra)]
    vocabulary = {char: index for index, char in enumerate(alphabet)}
    vocabulary |= {f"{char}</w>": len(alphabet) + index for index, char in enumerate(alphabet)}
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return vocabulary


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """(original CLIPModel, its CLIPProcessor, spec of the save_pretrained folder)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=clip_byte_vocabulary(), merges=[])
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77, **special},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
        ),
        tokenizer=tokenizer,
    )
    folder = tmp_path_factory.mktemp("hf") / "tiny-clip"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, f"hf:{folder}"


@pytest.fixture(scope="module")
def specs(open_clip_saved, hf_saved) -> dict[str, str]:
    return {"open_clip .pt": open_clip_saved[1], "open_clip local-dir": open_clip_saved[2],
            "transformers": hf_saved[2]}  # fmt: skip


@pytest.fixture(scope="module")
def loaded(specs) -> dict[str, Backbone]:
    return {kind: load_backbone(spec, batch_size=2) for kind, spec in specs.items()}


KINDS = ["open_clip .pt", "open_clip local-dir", "transformers"]


# -- shapes, weights, batching, determinism ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_spec_loads_embeddings_of_the_expected_shapes_on_cpu(loaded, kind):
    backbone = loaded[kind]
    encoding = backbone.encode_images(images(3), window_sizes=(2, 3))
    dim = 24 if kind == "transformers" else 32
    assert backbone.grid == GRID
    assert backbone.device == torch.device("cpu")
    assert encoding.cls.shape == (3, dim) and encoding.cls.dtype == torch.float32
    assert encoding.patches.shape == (3, 4, 4, dim)
    assert encoding.windows[2].shape == (3, 3, 3, dim)
    assert encoding.windows[3].shape == (3, 2, 2, dim)
    assert encoding.sizes == [(48, 80)] * 3
    assert backbone.encode_text(TEXTS).shape == (3, dim)
    assert torch.isfinite(encoding.windows[3]).all()


@pytest.mark.parametrize("kind", ["open_clip .pt", "open_clip local-dir"])
def test_open_clip_specs_load_the_saved_weights(open_clip_saved, loaded, kind):
    original = open_clip_saved[0]
    backbone = loaded[kind]
    pictures = [Image.fromarray(image) for image in images(2)]
    pixels = torch.stack([backbone.preprocess(picture) for picture in pictures])
    tokens = open_clip.get_tokenizer(ARCH)(TEXTS)
    with torch.no_grad():
        expected_images = original.encode_image(pixels)
        expected_texts = original.encode_text(tokens)
    # A randomly initialised model (open_clip's fallback when it finds no weights) differs.
    assert allclose(backbone.encode_images(pictures).cls, expected_images)
    assert allclose(backbone.encode_text(TEXTS), expected_texts)


def test_transformers_spec_loads_the_saved_weights(hf_saved, loaded):
    original, processor, _ = hf_saved
    backbone = loaded["transformers"]
    pictures = [Image.fromarray(image) for image in images(2)]
    pixels = processor.image_processor(
        images=pictures, do_center_crop=False, size={"height": 64, "width": 64},
        return_tensors="pt",
    )["pixel_values"]  # fmt: skip
    tokens = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected_images = original.get_image_features(pixel_values=pixels)
        expected_texts = original.get_text_features(**tokens)
    expected_images = getattr(expected_images, "pooler_output", expected_images)
    expected_texts = getattr(expected_texts, "pooler_output", expected_texts)
    assert allclose(backbone.encode_images(pictures).cls, expected_images)
    assert allclose(backbone.encode_text(TEXTS), expected_texts)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_of_five_in_batches_of_two_equals_one_by_one(loaded, kind):
    backbone = loaded[kind]
    assert backbone.batch_size == 2
    pictures = images(5, seed=1)
    batched = backbone.encode_images(pictures, window_sizes=(2, 3))
    for index, picture in enumerate(pictures):
        alone = backbone.encode_images([picture], window_sizes=(2, 3))
        assert allclose(batched.cls[index], alone.cls[0])
        assert allclose(batched.patches[index], alone.patches[0])
        for size in (2, 3):
            assert allclose(batched.windows[size][index], alone.windows[size][0])
    # The images differ, so equal rows would mean every image got the same embedding.
    assert not allclose(batched.cls[0], batched.cls[1])


@pytest.mark.parametrize("kind", KINDS)
def test_encoding_is_deterministic_and_reads_pil_and_arrays_alike(loaded, kind):
    backbone = loaded[kind]
    arrays = images(2, seed=2)
    first = backbone.encode_images(arrays, window_sizes=(2,))
    again = backbone.encode_images(arrays, window_sizes=(2,))
    assert torch.equal(first.cls, again.cls) and torch.equal(first.windows[2], again.windows[2])
    from_pil = backbone.encode_images([Image.fromarray(a) for a in arrays], window_sizes=(2,))
    assert_same_encoding(first, from_pil)
    grey = backbone.encode_images([arrays[0][..., 0]])  # H × W uint8 reads as grey RGB
    assert grey.cls.shape == first.cls[:1].shape


def test_device_is_cpu_in_float32_here():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert pick_device() == (torch.device("cpu"), torch.float32)


# -- windows ----------------------------------------------------------------------------------


def test_window_indices_list_each_window_row_major_after_the_class_token():
    index = window_indices((3, 4), 2)
    assert index.shape == (2 * 3, 1 + 4)
    assert index[0].tolist() == [0, 1, 2, 5, 6]  # patches (0,0) (0,1) (1,0) (1,1), +1 each
    assert index[2].tolist() == [0, 3, 4, 7, 8]  # top-left (0, 2)
    assert index[3].tolist() == [0, 5, 6, 9, 10]  # top-left (1, 0)
    with pytest.raises(ConfigError, match="does not fit"):
        window_indices((3, 4), 4)


@pytest.mark.parametrize("kind", ["open_clip .pt", "transformers"])
def test_a_window_over_the_whole_grid_is_the_image_itself(loaded, kind):
    """One pass of all tokens through the window path must give the ordinary CLS embedding."""
    backbone = loaded[kind]
    encoding = backbone.encode_images(images(2, seed=3), window_sizes=(4,))
    assert allclose(encoding.windows[4][:, 0, 0], encoding.cls)


def masked_window_embedding(backbone, stem, patches: list[int]) -> torch.Tensor:
    """The window's CLS from the full sequence, with an attention mask that hides the rest."""
    visible = torch.zeros(stem.shape[1], dtype=torch.bool)
    visible[[0, *(1 + patch for patch in patches)]] = True
    mask = torch.zeros(stem.shape[1], stem.shape[1])
    # Window tokens (and the class token) see only each other; the other tokens' rows do not
    # matter, since nothing in the window can read them.
    rows, hidden = visible.nonzero().flatten(), (~visible).nonzero().flatten()
    mask[rows[:, None], hidden[None, :]] = float("-inf")
    out = backbone.model.visual.transformer(stem, attn_mask=mask)
    return backbone._head(out[:, 0])


def test_window_embeddings_equal_the_full_image_with_a_block_attention_mask(loaded):
    backbone = loaded["open_clip .pt"]
    pictures = [Image.fromarray(image) for image in images(2, seed=4)]
    with torch.no_grad():
        stem = backbone._stem(backbone._pixels(pictures))
        windows = backbone.window_embeddings(stem, 3)  # (2, 2, 2, D)
        top_right = masked_window_embedding(backbone, stem, [1, 2, 3, 5, 6, 7, 9, 10, 11])
    assert allclose(windows[:, 0, 1], top_right)
    assert not allclose(windows[:, 0, 0], top_right)


def legacy_blocks(backbone, sequences):
    """How WinCLIP ports written for open_clip < 2.26 ran the windows: permuted to (L, N, D)."""
    return backbone.model.visual.transformer(sequences.permute(1, 0, 2)).permute(1, 0, 2)


def test_windows_attend_only_within_themselves_in_the_batch_first_layout(loaded):
    backbone = loaded["open_clip .pt"]
    pictures = [Image.fromarray(image) for image in images(2, seed=5)]
    with torch.no_grad():
        stem = backbone._stem(backbone._pixels(pictures))
        sequences = backbone.window_sequences(stem, 2)  # 2 images × 9 windows
        pair = sequences[[0, 13]]  # window (0, 0) of image 0 and (1, 1) of image 1
        together = backbone._blocks(pair)
        alone = torch.cat([backbone._blocks(pair[[i]]) for i in (0, 1)])
        legacy_together = legacy_blocks(backbone, pair)
        legacy_alone = torch.cat([legacy_blocks(backbone, pair[[i]]) for i in (0, 1)])
    # Every token of a window, class token included, is the same in a batch as alone.
    assert allclose(together, alone)
    assert not allclose(together[0, 0], together[1, 0])
    # The transposed layout makes position p of one window attend to position p of the
    # others: the patch tokens depend on the batch-mates...
    assert not allclose(legacy_together[:, 1:], legacy_alone[:, 1:])
    # ...and a class token sees only class tokens, which are alike in every window: each
    # window gets the same embedding, so the window maps come out flat.
    assert allclose(legacy_together[0, 0], legacy_together[1, 0])
    # Through the public API: an image's windows do not depend on its batch-mates.
    both = backbone.encode_images(pictures, window_sizes=(2,))
    first = backbone.encode_images(pictures[:1], window_sizes=(2,))
    assert allclose(both.windows[2][0], first.windows[2][0])
    assert both.windows[2][0].flatten(0, 1).std(dim=0).mean() > 1e-3  # windows differ


def test_a_sequence_first_transformer_gives_the_same_windows(open_clip_saved, specs):
    """open_clip's Transformer can run its blocks in (L, N, D); its interface stays (N, L, D)."""
    from open_clip.transformer import Transformer

    backbone = load_backbone(specs["open_clip .pt"])
    expected = backbone.encode_images(images(2, seed=6), window_sizes=(2, 3))
    batch_first = backbone.model.visual.transformer
    vision = OPEN_CLIP_CONFIG["vision_cfg"]
    heads = vision["width"] // vision["head_width"]
    sequence_first = Transformer(vision["width"], vision["layers"], heads, batch_first=False)
    sequence_first.load_state_dict(batch_first.state_dict())
    backbone.model.visual.transformer = sequence_first.eval()
    assert backbone.model.visual.transformer.resblocks[0].attn.batch_first is False
    assert_same_encoding(backbone.encode_images(images(2, seed=6), window_sizes=(2, 3)), expected)


# -- specs that name no weights on disk -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("open_clip:ViT-B-16-plus-240@laion400m_e31", "'laion400m_e31' is a download tag"),
        ("open_clip:ViT-B-16@/no/such/weights.pt", "is not a file"),
        ("open_clip:ViT-B-16@local-dir:/no/such/folder", "is not a folder"),
        ("open_clip:ViT-B-16", "names no weights"),
        ("open_clip:hf-hub:timm/ViT-B-16-SigLIP@x", "names a hub model"),
        ("hf:openai/clip-vit-base-patch32", "is not a folder"),
        ("clip:ViT-B/16", "is not one of"),
    ],
)
def test_a_spec_without_weights_on_disk_is_one_clear_line(spec, why):
    with pytest.raises(ConfigError) as raised:
        load_backbone(spec)
    message = str(raised.value)
    assert why in message and "\n" not in message
    assert "on disk" in message or "is not one of" in message
    assert "local-dir:" in message and "hf:/path/to/folder" in message


def test_folders_missing_their_weights_are_refused(tmp_path, open_clip_saved):
    no_weights = tmp_path / "config-only"
    no_weights.mkdir()
    (no_weights / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CONFIG}))
    with pytest.raises(ConfigError, match="has no weights file"):
        load_backbone(f"open_clip:{ARCH}@local-dir:{no_weights}")
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        load_backbone(f"hf:{tmp_path}")
    with pytest.raises(ConfigError, match="has no architecture 'No-Such-ViT'"):
        load_backbone(f"open_clip:No-Such-ViT@{open_clip_saved[1].split('@', 1)[1]}")


def test_weights_that_do_not_fit_are_a_config_error(tmp_path, open_clip_saved):
    wrong = tmp_path / "wrong.pt"
    torch.save({"not": torch.zeros(1)}, wrong)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    for weights in (wrong, junk):
        with pytest.raises(ConfigError, match=f"cannot load {ARCH} from") as raised:
            load_backbone(f"open_clip:{ARCH}@{weights}")
        assert "\n" not in str(raised.value)


def test_prompts_import_without_torch():
    """Only backbones.py and scoring.py may pull torch in; the prompt lists must not."""
    code = (
        "import sys; import adinstruct.validators.detector.prompts; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
