"""Prompt rendering for the `openai` describer: messages, images, facts, outline, key, schema."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from adinstruct.builder.annotate import AnnotateStage
from adinstruct.builder.describe.overlay import draw_outline, outline_ring
from adinstruct.builder.describe.prompt import (
    PromptConfig,
    PromptInputError,
    build_request,
    description_schema,
)
from adinstruct.builder.errors import PathEscapeError
from adinstruct.schemas import Description, MaskRef, Sample

SIZE = 90  # divisible by 3: grid cells are 30 px bands
ANOMALY_IMAGE = "bottle/test/broken_large/000.png"
ANOMALY_MASK = "bottle/ground_truth/broken_large/000_mask.png"
NORMAL_IMAGE = "bottle/train/good/000.png"


# -- building the world ---------------------------------------------------------------------


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def two_regions() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[6:21, 6:24] = True  # top left
    mask[40:52, 38:58] = True  # center
    return mask


def save(root: Path, relative: str, array: np.ndarray, **options) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def annotate(root: Path, sample: Sample) -> Sample:
    annotated = AnnotateStage({sample.source: str(root)}).process(sample)
    assert isinstance(annotated, Sample), annotated
    return annotated


def anomaly_sample(root: Path, image: str = ANOMALY_IMAGE) -> Sample:
    return annotate(
        root,
        Sample(
            id="mvtec_ad/" + image.rsplit(".", 1)[0], source="mvtec_ad", category="bottle",
            split="test", label="anomaly", defect_types=["broken_large"], image_paths=[image],
            masks=[MaskRef(path=ANOMALY_MASK, defect_type="broken_large")],
        ),
    )  # fmt: skip


def normal_sample(root: Path) -> Sample:
    return annotate(
        root,
        Sample(
            id="mvtec_ad/bottle/train/good/000", source="mvtec_ad", category="bottle",
            split="train", label="normal", image_paths=[NORMAL_IMAGE],
        ),
    )  # fmt: skip


@pytest.fixture
def root(tmp_path) -> Path:
    release = (tmp_path / "release").resolve()
    save(release, ANOMALY_IMAGE, pixels(1))
    save(release, ANOMALY_MASK, two_regions().astype(np.uint8) * 255)
    save(release, NORMAL_IMAGE, pixels(2))
    return release


def bare(**options) -> PromptConfig:
    """No outline and no reference: the user message is the text and the image alone."""
    return PromptConfig(model="gpt-4o-mini", outline_mask=False, reference_image=False, **options)


def user_parts(request) -> tuple[str, list[dict]]:
    content = request.messages[1]["content"]
    texts = [part["text"] for part in content if part["type"] == "text"]
    images = [part["image_url"] for part in content if part["type"] == "image_url"]
    assert len(texts) == 1
    return texts[0], images


def decoded(url: str) -> tuple[str, bytes]:
    header, payload = url.split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(payload)


def as_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# -- messages and images ----------------------------------------------------------------------


def test_the_request_has_a_system_and_a_user_message(root):
    sample = anomaly_sample(root)
    request = build_request(sample, root, bare(temperature=0.0, seed=7), reference=None)
    assert [message["role"] for message in request.messages] == ["system", "user"]
    assert "ground truth" in request.messages[0]["content"]
    assert request.request_id == sample.id
    assert request.model == "gpt-4o-mini"
    assert (request.temperature, request.seed) == (0.0, 7)
    assert request.response_schema is not None and request.response_schema.name == "description"


def test_the_image_travels_as_the_files_own_bytes(root):
    request = build_request(anomaly_sample(root), root, bare(), reference=None)
    _, images = user_parts(request)
    mime, data = decoded(images[0]["url"])
    assert mime == "image/png"
    assert data == (root / ANOMALY_IMAGE).read_bytes()
    assert np.array_equal(as_array(data), pixels(1))


def test_a_jpeg_stays_a_jpeg_and_a_bmp_is_re_encoded_losslessly(root):
    jpeg_name, bmp_name = "bottle/test/broken_large/001.jpg", "bottle/test/broken_large/002.bmp"
    save(root, jpeg_name, pixels(1), quality=90)
    save(root, bmp_name, pixels(1))
    jpeg = build_request(anomaly_sample(root, jpeg_name), root, bare(), None)
    mime, data = decoded(user_parts(jpeg)[1][0]["url"])
    assert (mime, data) == ("image/jpeg", (root / jpeg_name).read_bytes())
    bmp = build_request(anomaly_sample(root, bmp_name), root, bare(), None)
    mime, data = decoded(user_parts(bmp)[1][0]["url"])
    assert mime == "image/png"
    assert np.array_equal(as_array(data), pixels(1))


@pytest.mark.parametrize("detail", ["low", "high", "auto"])
def test_every_image_carries_the_configured_detail(root, detail):
    config = PromptConfig(model="m", detail=detail)
    request = build_request(anomaly_sample(root), root, config, (normal_sample(root), root))
    _, images = user_parts(request)
    assert len(images) == 3  # reference, image, outline
    assert {image["detail"] for image in images} == {detail}


def test_the_reference_comes_first_and_shows_the_normal_image(root):
    request = build_request(
        anomaly_sample(root), root, PromptConfig(model="m"), (normal_sample(root), root)
    )
    content = request.messages[1]["content"]
    assert [part["type"] for part in content] == ["image_url", "text", "image_url", "image_url"]
    _, reference = decoded(content[0]["image_url"]["url"])
    assert np.array_equal(as_array(reference), pixels(2))
    assert "defect-free bottle" in content[1]["text"]
    unused = build_request(anomaly_sample(root), root, bare(), (normal_sample(root), root))
    assert len(user_parts(unused)[1]) == 1


# -- facts ------------------------------------------------------------------------------------


def test_the_annotation_facts_appear_in_the_text(root):
    sample = anomaly_sample(root)
    text, _ = user_parts(build_request(sample, root, bare(), reference=None))
    annotation = sample.annotation
    assert annotation is not None and annotation.region_count == 2
    assert annotation.grid_cells[:2] == ["top left", "center"]
    assert "Location on the 3×3 grid: top left and center" in text
    assert "Defect regions: 2" in text
    assert '"broken_large"' in text
    assert f"{annotation.area_fraction * 100:.2f}% of the image" in text
    assert "90 × 90 pixels" in text
    assert "Label: anomaly" in text


def test_a_normal_prompt_asks_for_the_object_and_states_no_defect(root):
    config = PromptConfig(model="m")  # outline asked for, but a normal image has no mask
    text, images = user_parts(build_request(normal_sample(root), root, config, reference=None))
    assert len(images) == 1
    assert "Describe the object" in text and "no anomaly is visible" in text
    assert "Label: normal" in text
    for defect_fact in ("Defect type", "Defect regions", "Location", "Defective area", "grid"):
        assert defect_fact not in text


# -- the outline ------------------------------------------------------------------------------


def test_the_outline_changes_exactly_the_ring_around_the_mask():
    original, mask = pixels(3), two_regions()
    outline = draw_outline(original, mask, width=2)
    drawn = as_array(outline.png)
    changed = (drawn != original).any(axis=2)
    # An independent ring: pixels outside the mask within 2 px (3×3 dilation, twice).
    expected = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=2) & ~mask
    assert np.array_equal(outline_ring(mask, 2), expected)
    # Random pixels may already hold the colour; none can change outside the ring.
    assert not (changed & ~expected).any()
    assert changed[expected].mean() > 0.95
    assert np.array_equal(drawn[mask], original[mask])  # every defect pixel still visible
    far = ~ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=4)
    assert np.array_equal(drawn[far], original[far])
    assert draw_outline(original, mask, width=2).png == outline.png  # deterministic bytes


def test_the_outline_picks_a_colour_that_stands_out():
    magenta_scene = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    magenta_scene[...] = (250, 10, 250)
    assert draw_outline(magenta_scene, two_regions()).colour != "magenta"


def test_the_request_sends_the_outlined_copy_and_names_its_colour(root):
    request = build_request(anomaly_sample(root), root, PromptConfig(model="m"), reference=None)
    text, images = user_parts(request)
    assert len(images) == 2
    mime, data = decoded(images[1]["url"])
    assert mime == "image/png"
    expected = draw_outline(pixels(1), two_regions())
    assert data == expected.png
    assert f"outlined in {expected.colour}" in text


# -- the cache key ----------------------------------------------------------------------------


def test_identical_inputs_give_identical_keys(root):
    config = PromptConfig(model="m")
    first = build_request(anomaly_sample(root), root, config, (normal_sample(root), root))
    second = build_request(anomaly_sample(root), root, config, (normal_sample(root), root))
    assert first.cache_key() == second.cache_key()


def test_model_detail_template_and_pixels_shape_the_key(root, tmp_path):
    sample = anomaly_sample(root)
    base = build_request(sample, root, PromptConfig(model="m"), None).cache_key()
    assert build_request(sample, root, PromptConfig(model="m2"), None).cache_key() != base
    low = PromptConfig(model="m", detail="low")
    assert build_request(sample, root, low, None).cache_key() != base

    shipped = Path(__file__).parents[1] / "templates" / "describe_system.j2"
    folder = tmp_path / "wording"
    folder.mkdir()
    (folder / "describe_system.j2").write_text(shipped.read_text() + "\nBe brief.\n")
    reworded = PromptConfig(model="m", templates_folder=folder)
    assert build_request(sample, root, reworded, None).cache_key() != base

    changed = pixels(1)
    changed[80, 80, 0] ^= 1
    save(root, ANOMALY_IMAGE, changed)
    repainted = anomaly_sample(root)  # annotated again: the facts follow the new pixels
    assert build_request(repainted, root, PromptConfig(model="m"), None).cache_key() != base


# -- the response schema ----------------------------------------------------------------------


def assert_strict(node: object, where: str = "$") -> None:
    """OpenAI strict structured outputs: every object closed, every property required."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            assert_strict(item, f"{where}[{index}]")
        return
    if not isinstance(node, dict):
        return
    assert "default" not in node, f"{where} has a default"
    if node.get("type") == "object" or "properties" in node:
        assert node.get("additionalProperties") is False, f"{where} is open"
        assert sorted(node.get("required", [])) == sorted(node["properties"]), where
    for key, value in node.items():
        assert_strict(value, f"{where}.{key}")


def test_the_response_schema_is_strict_valid():
    schema = description_schema().json_schema
    assert_strict(schema)
    assert set(schema["properties"]) == set(Description.model_fields)
    optional = [name for name, field in Description.model_fields.items() if not field.is_required()]
    for name in optional:
        assert {"type": "null"} in schema["properties"][name]["anyOf"], name
    jsonschema.Draft202012Validator.check_schema(schema)
    answer = Description(anomaly_present=False, object_description="A bottle.").model_dump()
    jsonschema.validate(answer, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**answer, "confidence": 0.9}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"anomaly_present": True}, schema)


# -- templates and paths ----------------------------------------------------------------------


def test_a_user_templates_folder_overrides_the_wording(root, tmp_path):
    folder = tmp_path / "wording"
    folder.mkdir()
    (folder / "describe_user.j2").write_text(
        "Inspect this {{ category }}; label {{ label }}; cells {{ grid_cells | join('/') }}."
    )
    config = PromptConfig(model="m", outline_mask=False, templates_folder=folder)
    request = build_request(anomaly_sample(root), root, config, reference=None)
    text, _ = user_parts(request)
    assert text == "Inspect this bottle; label anomaly; cells top left/center."
    # The system prompt, not overridden, still comes from the shipped file.
    assert "ground truth" in request.messages[0]["content"]


def test_a_path_escaping_the_root_is_refused(root):
    sample = anomaly_sample(root)
    save(root.parent, "outside.png", pixels(1))
    escaping = sample.model_copy(update={"image_paths": ["../outside.png"]})
    with pytest.raises(PathEscapeError):
        build_request(escaping, root, bare(), reference=None)


def test_an_image_changed_since_annotation_is_refused(root):
    sample = anomaly_sample(root)
    save(root, ANOMALY_IMAGE, pixels(9))
    with pytest.raises(PromptInputError) as raised:
        build_request(sample, root, bare(), reference=None)
    assert raised.value.code == "image_changed"


# -- 3D parts: views, then highlight views that only the describer sees ----------------------


@pytest.fixture(scope="module")
def three_d_world(tmp_path_factory):
    """A Real3D-AD and an MVTec 3D-AD tree, every sample annotated (rendered) once."""
    import trees_3d

    from adinstruct.builder.annotate.renders import RenderFolders
    from adinstruct.builder.sources.mvtec_3d import MVTec3DAD
    from adinstruct.builder.sources.real3d import Real3DAD

    tmp_path = tmp_path_factory.mktemp("three_d")
    folders = RenderFolders(tmp_path / "renders")
    real3d = Real3DAD(trees_3d.write_real3d(tmp_path / "real3d", points=20_000).root)
    mvtec3d = MVTec3DAD(trees_3d.write_mvtec_3d(tmp_path / "mvtec3d").root)
    samples = {}
    for builder in (real3d, mvtec3d):
        stage = AnnotateStage({builder.name: str(builder.root)}, renders=str(folders.root))
        for item in builder.iter_samples():
            result = stage.process(item)
            assert isinstance(result, Sample), result
            samples[result.id] = (result, builder.root)
    return folders, samples


def image_urls(request) -> list[str]:
    return [p["image_url"]["url"] for p in request.messages[1]["content"] if p["type"] != "text"]


def user_text(request) -> str:
    return next(p["text"] for p in request.messages[1]["content"] if p["type"] == "text")


def test_a_3d_request_shows_the_views_then_the_highlight_views(three_d_world):
    folders, samples = three_d_world
    config = PromptConfig(model="m")
    anomaly, root = samples["real3d_ad/shell/test/4_bulge"]
    reference = samples["real3d_ad/shell/train/1_prototype"]
    request = build_request(anomaly, root, config, reference, folders)
    urls = image_urls(request)
    views = [folders.view_file("real3d_ad", path) for path in anomaly.render_paths]
    highlights = folders.highlight_files(anomaly)
    assert len(urls) == 1 + 4 + 4
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in [*views, *highlights]]
    assert [url.split(",", 1)[1] for url in urls[1:]] == encoded  # in this order, as files
    reference_view = folders.view_file("real3d_ad", reference[0].render_paths[0])
    assert urls[0].endswith(base64.b64encode(reference_view.read_bytes()).decode())
    system, text = request.messages[0]["content"], user_text(request)
    assert system.startswith("You are an experienced visual quality inspector of 3D-scanned")
    assert "View 1 of 4 of the part to describe, rendered from its point cloud." in text
    assert "View 4 again, with the points of the annotated defect painted red." in text
    ordinal = ["first", "second", "third", "fourth"][anomaly.annotation.view]
    assert f"Location on the 3×3 grid of the {ordinal} view: " in text
    assert "outline" not in text  # a mask measured on a view is no outline of the first image
    # The normal reference and a normal sample get no highlight view.
    normal, normal_root = samples["real3d_ad/shell/test/3_good"]
    plain = build_request(normal, normal_root, config, None, folders)
    assert len(image_urls(plain)) == 4 and "painted" not in user_text(plain)


def test_an_mvtec_3d_ad_request_shows_the_photo_depth_views_outline_and_highlights(
    three_d_world,
):
    folders, samples = three_d_world
    anomaly, root = samples["mvtec_3d_ad/bagel/test/crack/rgb/000"]
    request = build_request(anomaly, root, PromptConfig(model="m"), None, folders)
    text = user_text(request)
    assert len(image_urls(request)) == 1 + 1 + 4 + 1 + 4  # rgb, depth, views, outline, highlights
    assert "1. The colour photograph of the part to describe." in text
    assert "2. Its depth image, aligned pixel for pixel with the photograph" in text
    assert "7. The photograph with the annotated defect region outlined in" in text
    assert "Location on the 3×3 grid of the colour image: " in text
    assert (
        "- Pictures: a colour photograph and its depth image, 48 × 48 pixels, then 4 views" in text
    )
    with pytest.raises(Exception, match="render folder"):
        build_request(anomaly, root, PromptConfig(model="m"), None, None)
