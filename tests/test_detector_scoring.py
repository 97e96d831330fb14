"""Zero-shot scoring (WinCLIP, ALFA): a hand-built backbone proves it localises; real models run it.

`PlantedDefectBackbone` implements the Backbone interface with plain tensors: a patch token,
a window embedding and the CLS embedding each point toward the "anomalous" text direction in
proportion to the defect pixels they cover, which it reads from the pixels itself (red means
defect). So every step between the embeddings and the map is the scorer's: prompt averaging,
softmax orientation, window placement, harmonic aggregation, upsampling to the image's own
size. A map shifted by a patch, transposed, or scoring the wrong class loses its AUROC.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.stats import rankdata

torch = pytest.importorskip("torch")

from detector_models import (  # noqa: E402
    ANOMALOUS,
    ANOMALOUS_WORDS,
    DIM,
    NORMAL,
    OTHER,
    PATCH,
    SIDE,
    PlantedDefectBackbone,
)
from llm_standin import StandinServer, last_user_text  # noqa: E402
from PIL import Image  # noqa: E402

from adinstruct.builder.describe.cache import AnswerCache  # noqa: E402
from adinstruct.builder.describe.engine import Engine, EngineConfig  # noqa: E402
from adinstruct.builder.describe.pricing import PriceTable  # noqa: E402
from adinstruct.validators.detector.backbones import load_backbone  # noqa: E402
from adinstruct.validators.detector.prompts import (  # noqa: E402
    ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
    PromptError,
    PromptSet,
    alfa_prompt_sets,
    alfa_prompts,
    winclip_prompts,
)
from adinstruct.validators.detector.scoring import (  # noqa: E402
    TextEmbeddings,
    ZeroShotScorer,
    contextual_classes,
    ensemble_classes,
    harmonic_aggregation,
    upsample,
)

KEY = "sk-test-detector-prompts"
HEIGHT, WIDTH = 96, 128  # not the backbone's square input: maps must come back at this size


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney: the chance a positive outscores a negative, ties counting one half."""
    labels, scores = np.asarray(labels, bool).ravel(), np.asarray(scores, float).ravel()
    ranks = rankdata(scores)
    positives, negatives = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def planted_images(count: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Grey textured images, every second one with a red rectangle: (images, masks)."""
    rng = np.random.default_rng(seed)
    pictures, masks = [], []
    for index in range(count):
        grey = rng.normal(120, 18, size=(HEIGHT, WIDTH, 1))
        picture = grey + rng.normal(0, 4, size=(HEIGHT, WIDTH, 3))
        mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
        if index % 2 == 1:
            # Wider than tall, anywhere: a transposed or shifted map misses it.
            height, width = rng.integers(14, 24), rng.integers(22, 36)
            top, left = rng.integers(0, HEIGHT - height), rng.integers(0, WIDTH - width)
            mask[top : top + height, left : left + width] = True
            picture[mask] = (215, 45, 40)
        pictures.append(np.clip(picture, 0, 255).astype(np.uint8))
        masks.append(mask)
    return pictures, masks


# -- the prompt lists -------------------------------------------------------------------------


def test_winclip_prompts_are_states_times_templates():
    prompts = winclip_prompts("metal_nut")
    assert len(TEMPLATES) == len(set(TEMPLATES)) == 22
    assert len(prompts.normal) == len(NORMAL_STATES) * 22 == 154
    assert len(prompts.anomalous) == len(ANOMALOUS_STATES) * 22 == 88
    assert prompts.normal[0] == "a cropped photo of the metal nut."
    assert "a photo of a metal nut with defect for anomaly detection." in prompts.anomalous
    assert "a bright photo of a flawless metal nut." in prompts.normal
    assert (prompts.weighting, prompts.source) == ("ensemble", "winclip")
    assert not any(ANOMALOUS_WORDS.search(text) for text in prompts.normal)
    assert all(ANOMALOUS_WORDS.search(text) for text in prompts.anomalous)


# -- the arithmetic ---------------------------------------------------------------------------


def test_harmonic_aggregation_takes_each_patch_from_the_windows_covering_it():
    # A 3 × 3 grid has 2 × 2 windows of 2 × 2 patches; scores 0.1, 0.2 / 0.4, 0.8.
    scores = torch.tensor([[[0.1, 0.2], [0.4, 0.8]]])
    patches = harmonic_aggregation(scores, 2)
    assert patches.shape == (1, 3, 3)
    assert patches[0, 0, 0] == pytest.approx(0.1)  # only window (0, 0) covers the corner
    assert patches[0, 2, 2] == pytest.approx(0.8)
    assert patches[0, 0, 1] == pytest.approx(2 / (1 / 0.1 + 1 / 0.2))
    assert patches[0, 1, 0] == pytest.approx(2 / (1 / 0.1 + 1 / 0.4))
    assert patches[0, 1, 1] == pytest.approx(4 / (1 / 0.1 + 1 / 0.2 + 1 / 0.4 + 1 / 0.8))
    # One window that looks normal pulls every patch it covers down: below the mean.
    assert patches[0, 1, 1] < scores.mean()


def test_contextual_weighting_follows_the_prompt_that_fits_the_image():
    eye = torch.eye(DIM)
    text = TextEmbeddings(normal=eye[[NORMAL]], anomalous=eye[[ANOMALOUS, OTHER]])
    fits_anomalous = torch.nn.functional.normalize(eye[NORMAL] + eye[ANOMALOUS], dim=0)
    classes = contextual_classes(fits_anomalous[None], text)
    assert classes.shape == (1, 2, DIM)
    assert classes[0, 1, ANOMALOUS] > 0.99  # the misprint prompt, which does not fit, fades
    assert ensemble_classes(text)[1, ANOMALOUS] == pytest.approx(2**-0.5, abs=1e-6)


# -- localisation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    return planted_images(12)


def test_winclip_maps_put_planted_defects_above_the_rest(planted):
    pictures, masks = planted
    scores = ZeroShotScorer(PlantedDefectBackbone()).score(pictures, winclip_prompts("tile"))
    assert [m.shape for m in scores.maps] == [(HEIGHT, WIDTH)] * len(pictures)
    assert all(m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 for m in scores.maps)
    defective = [index for index, mask in enumerate(masks) if mask.any()]
    pixel_auroc = auroc(
        np.concatenate([masks[i].ravel() for i in defective]),
        np.concatenate([scores.maps[i].ravel() for i in defective]),
    )
    assert pixel_auroc > 0.98, pixel_auroc
    for index in defective:  # each map peaks on its defect, to within a patch
        peak_row, peak_col = np.unravel_index(scores.maps[index].argmax(), (HEIGHT, WIDTH))
        rows, cols = np.nonzero(masks[index])
        patch_rows, patch_cols = HEIGHT / (SIDE // PATCH), WIDTH / (SIDE // PATCH)
        assert rows.min() - patch_rows <= peak_row <= rows.max() + patch_rows
        assert cols.min() - patch_cols <= peak_col <= cols.max() + patch_cols
    labels = np.array([mask.any() for mask in masks])
    assert auroc(labels, scores.image_scores) == 1.0
    # The scorer itself can fail this test: the same map read transposed-and-resized misses.
    transposed = [
        np.asarray(Image.fromarray(scores.maps[i].T).resize((WIDTH, HEIGHT))) for i in defective
    ]
    missed = auroc(
        np.concatenate([masks[i].ravel() for i in defective]),
        np.concatenate([m.ravel() for m in transposed]),
    )
    assert missed < pixel_auroc - 0.1


def test_every_window_size_localises_on_its_own(planted):
    """The 1 × 1 map dominates the average; a misplaced window map must not hide behind it."""
    pictures, masks = planted
    defective = [index for index, mask in enumerate(masks) if mask.any()]
    backbone = PlantedDefectBackbone()
    scorer = ZeroShotScorer(backbone)
    encoding = backbone.encode_images([pictures[i] for i in defective], window_sizes=(2, 3))
    classes = ensemble_classes(scorer.text_embeddings(winclip_prompts("tile")))
    scale_maps = scorer.scale_maps(encoding, classes)
    assert sorted(scale_maps) == [1, 2, 3]
    truth = np.concatenate([masks[i].ravel() for i in defective])
    for size, patch_map in scale_maps.items():
        maps = upsample(patch_map, encoding.sizes)
        # Measured: 0.99, 0.98, 0.97; windows shifted by one patch give 0.92 and 0.85.
        assert auroc(truth, np.concatenate([m.ravel() for m in maps])) > 0.96, size


def test_image_scores_alone_skip_the_windows(planted):
    pictures, _ = planted
    scorer = ZeroShotScorer(PlantedDefectBackbone())
    prompts = winclip_prompts("tile")
    without = scorer.score(pictures, prompts, maps=False)
    assert without.maps == []
    np.testing.assert_allclose(without.image_scores, scorer.score(pictures, prompts).image_scores)
    assert scorer.backbone.text_calls == 1  # one prompt set, encoded once


ALFA_PROMPTS = {
    "normal": ["a photo of a flawless tile", "a photo of a clean, even tile surface"],
    "anomalous": ["a photo of a tile with a crack", "a photo of a tile with a glaze misprint"],
}


def test_contextual_prompts_raise_defective_scores_and_still_localise(planted):
    pictures, masks = planted
    scorer = ZeroShotScorer(PlantedDefectBackbone())
    contextual = PromptSet("tile", tuple(ALFA_PROMPTS["normal"]),
                           tuple(ALFA_PROMPTS["anomalous"]), "contextual", "llm")  # fmt: skip
    ensemble = PromptSet("tile", contextual.normal, contextual.anomalous, "ensemble", "llm")
    adapted, averaged = scorer.score(pictures, contextual), scorer.score(pictures, ensemble)
    labels = np.array([mask.any() for mask in masks])
    # The misprint prompt does not fit a cracked tile: averaging it in dilutes the anomalous
    # class, weighting it by fit does not.
    assert (adapted.image_scores[labels] > averaged.image_scores[labels]).all()
    assert auroc(labels, adapted.image_scores) == 1.0
    defective = np.flatnonzero(labels)
    pixel_auroc = auroc(
        np.concatenate([masks[i].ravel() for i in defective]),
        np.concatenate([adapted.maps[i].ravel() for i in defective]),
    )
    assert pixel_auroc > 0.98, pixel_auroc


# -- ALFA prompts from an LLM, through the real engine and the stand-in server ----------------


def prompt_responder(body: dict) -> str:
    category = re.search(r"Object category: ([\w ]+)\.", last_user_text(body)).group(1)
    return json.dumps({key: [text.replace("tile", category) for text in texts]
                       for key, texts in ALFA_PROMPTS.items()})  # fmt: skip


def make_engine(server: StandinServer, cache_path, **config) -> Engine:
    settings = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, **config}
    engine_config = EngineConfig(api_key=KEY, base_url=server.base_url, **settings)
    return Engine(engine_config, AnswerCache(cache_path), PriceTable())


def test_alfa_prompts_are_asked_once_per_category_and_cached(tmp_path, planted):
    cache = tmp_path / "llm.sqlite"
    with StandinServer(responder=prompt_responder) as server:
        engine = make_engine(server, cache)
        tile = alfa_prompts("tile", engine)
        assert (tile.weighting, tile.source) == ("contextual", "llm")
        assert tile.normal == tuple(ALFA_PROMPTS["normal"])
        assert tile.anomalous == tuple(ALFA_PROMPTS["anomalous"])
        sets = alfa_prompt_sets(["tile", "wood_plank", "tile"], engine)
        assert sets["wood_plank"].anomalous[0] == "a photo of a wood plank with a crack"
        assert len(server.chat_bodies()) == 2  # tile once, wood_plank once
        body = server.chat_bodies()[0]
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
        assert body["temperature"] == 0.0
        # A rerun (a new engine over the same cache file) sends nothing.
        rerun = make_engine(server, cache)
        assert alfa_prompts("tile", rerun) == tile
        assert alfa_prompt_sets(["wood_plank"], rerun)["wood_plank"] == sets["wood_plank"]
        assert len(server.chat_bodies()) == 2
        assert rerun.totals.cache_hits == 2 and rerun.totals.requests == 0
    # The prompts score like any prompt set.
    pictures, masks = planted
    scores = ZeroShotScorer(PlantedDefectBackbone()).score(pictures, tile)
    assert auroc([m.any() for m in masks], scores.image_scores) == 1.0


def test_an_llm_answer_without_prompts_is_asked_again_then_fails_loudly(tmp_path):
    empty = json.dumps({"normal": [], "anomalous": ["  "]})
    with StandinServer(responder=lambda body: empty) as server:
        engine = make_engine(server, tmp_path / "llm.sqlite", answer_retries=1)
        with pytest.raises(PromptError, match=r"category 'tile'.*'normal' holds no non-empty"):
            alfa_prompts("tile", engine)
        assert len(server.chat_bodies()) == 2


def test_without_an_llm_alfa_prompts_are_the_static_ensemble():
    assert alfa_prompts("tile") == winclip_prompts("tile")


# -- a real model end to end ------------------------------------------------------------------


def test_scoring_runs_on_a_real_open_clip_model(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    backbone = load_backbone(f"open_clip:tiny@local-dir:{folder}", batch_size=4)
    pictures, _ = planted_images(5)
    scorer = ZeroShotScorer(backbone)
    scores = scorer.score(pictures, winclip_prompts("tile"))
    assert scores.image_scores.shape == (5,)
    assert ((scores.image_scores > 0) & (scores.image_scores < 1)).all()
    assert [m.shape for m in scores.maps] == [(HEIGHT, WIDTH)] * 5
    # Random weights localise nothing, but the maps must vary and repeat exactly.
    assert scores.maps[0].std() > 0
    again = scorer.score(pictures, winclip_prompts("tile"))
    np.testing.assert_array_equal(again.maps[3], scores.maps[3])
