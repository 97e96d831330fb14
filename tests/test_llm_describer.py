"""The `openai` describer end to end: the real Engine and openai client against the stand-in."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from llm_standin import REFUSAL_TEXT, StandinServer, fault, last_user_text
from PIL import Image

from adinstruct.builder.annotate import AnnotateStage
from adinstruct.builder.describe.cache import AnswerCache
from adinstruct.builder.describe.engine import Engine, EngineConfig
from adinstruct.builder.describe.llm import OpenAIDescriber, pick_references
from adinstruct.builder.describe.pricing import PriceTable
from adinstruct.builder.describe.prompt import PromptConfig
from adinstruct.schemas import Description, MaskRef, QuarantineEntry, Sample

SOURCE = "mvtec_ad"
MODEL = "gpt-4o-mini"
SIZE = 60


# -- building the world ---------------------------------------------------------------------


def write_png(root: Path, relative: str, array: np.ndarray) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_sample(root: Path, category: str, index: int, label: str) -> Sample:
    """Write one image (and, for an anomaly, its mask) and return the annotated sample."""
    folder = "crack" if label == "anomaly" else "good"
    image = f"{category}/test/{folder}/{index:03d}.png"
    pixels = np.random.default_rng(index).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    write_png(root, image, pixels)
    masks = []
    if label == "anomaly":
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[4:15, 4:15] = 255  # top left
        mask_path = f"{category}/ground_truth/crack/{index:03d}_mask.png"
        write_png(root, mask_path, mask)
        masks = [MaskRef(path=mask_path, defect_type="crack")]
    sample = Sample(
        id=f"{SOURCE}/{image[:-4]}", source=SOURCE, category=category, split="test",
        label=label, defect_types=["crack"] if label == "anomaly" else [], image_paths=[image],
        masks=masks,
    )  # fmt: skip
    annotated = AnnotateStage({SOURCE: str(root)}).process(sample)
    assert isinstance(annotated, Sample), annotated
    return annotated


def wording_with_faults(folder: Path, faults: dict[str, str]) -> Path:
    """The shipped user prompt, plus a stand-in fault marker for the named categories."""
    shipped = resources.files("adinstruct.templates").joinpath("describe_user.j2").read_text()
    hooks = "".join(
        f'{{% if category == "{category}" %}}\n{marker}\n{{% endif %}}\n'
        for category, marker in faults.items()
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "describe_user.j2").write_text(shipped + hooks)
    return folder


def grounded(anomaly: bool) -> str:
    if anomaly:
        return Description(
            anomaly_present=True, defect_type="crack", location="top left",
            appearance="A thin dark crack runs across the surface.",
            likely_cause="Mechanical stress during handling.",
            effect="The crack weakens the part.", prevention="Handle parts with padded grippers.",
        ).model_dump_json()  # fmt: skip
    return Description(
        anomaly_present=False,
        object_description="A textured flat part; no anomaly is visible.",
    ).model_dump_json()


def is_anomaly_prompt(body: dict) -> bool:
    return "Label: anomaly" in last_user_text(body)


def truthful(body: dict) -> str:
    return grounded(is_anomaly_prompt(body))


def contrary_first(times: int) -> Callable[[dict], str]:
    """Contradict the label the first `times` times each prompt is seen, then tell the truth."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(body: dict) -> str:
        with lock:
            seen[last_user_text(body)] += 1
            count = seen[last_user_text(body)]
        anomaly = is_anomaly_prompt(body)
        return grounded(anomaly if count > times else not anomaly)

    return respond


@pytest.fixture
def root(tmp_path) -> Path:
    return (tmp_path / "release").resolve()


def describer_for(
    server: StandinServer,
    tmp_path: Path,
    root: Path,
    *,
    templates_folder: Path | None = None,
    references: dict | None = None,
    concurrency: int = 4,
) -> tuple[OpenAIDescriber, Engine]:
    config = EngineConfig(
        api_key="sk-test-describer", base_url=server.base_url, concurrency=concurrency,
        backoff_base_s=0.0, timeout_s=10.0,
    )  # fmt: skip
    cache = AnswerCache(tmp_path / "answers.sqlite")
    engine = Engine(config, cache, PriceTable())
    prompt = PromptConfig(model=MODEL, templates_folder=templates_folder)
    return OpenAIDescriber({SOURCE: str(root)}, prompt, engine, references=references), engine


# -- the tests --------------------------------------------------------------------------------


def test_descriptions_are_parsed_into_samples(tmp_path, root):
    reference = make_sample(root, "bottle", 0, "normal").model_copy(update={"split": "train"})
    samples = [make_sample(root, "bottle", 1, "anomaly"), make_sample(root, "bottle", 2, "normal")]
    with StandinServer(responder=truthful) as server:
        describer, engine = describer_for(
            server, tmp_path, root, references=pick_references([reference, *samples])
        )
        described = list(describer.describe(samples))
        bodies = server.chat_bodies()
    assert [sample.id for sample in described] == [sample.id for sample in samples]
    anomaly, normal = described
    assert isinstance(anomaly, Sample) and isinstance(normal, Sample)
    assert anomaly.description == Description.model_validate_json(grounded(True))
    assert normal.description == Description.model_validate_json(grounded(False))
    assert anomaly.describer == normal.describer == f"openai:{MODEL}"
    # What went over the wire: strict structured output, reference first, then text and images.
    assert len(bodies) == 2
    response_format = bodies[0]["response_format"]
    assert response_format["json_schema"]["name"] == "description"
    assert response_format["json_schema"]["strict"] is True
    (anomaly_body,) = [body for body in bodies if is_anomaly_prompt(body)]
    kinds = [part["type"] for part in anomaly_body["messages"][1]["content"]]
    assert kinds == [
        "image_url",
        "text",
        "image_url",
        "image_url",
    ]  # reference, facts, image, outline
    assert engine.totals.requests == 2


def test_a_contradicting_answer_is_retried_and_the_correct_one_kept(tmp_path, root):
    samples = [make_sample(root, "bottle", 1, "anomaly"), make_sample(root, "bottle", 2, "normal")]
    with StandinServer(responder=contrary_first(times=1)) as server:
        describer, _ = describer_for(server, tmp_path, root)
        described = list(describer.describe(samples))
        bodies = server.chat_bodies()
    assert [type(item) for item in described] == [Sample, Sample]
    assert described[0].description.anomaly_present is True
    assert described[1].description.anomaly_present is False
    sent = Counter(last_user_text(body) for body in bodies)
    assert sorted(sent.values()) == [2, 2]  # each asked twice: once wrong, once right


def test_an_answer_that_never_agrees_becomes_llm_error(tmp_path, root):
    samples = [make_sample(root, "bottle", 1, "anomaly")]
    with StandinServer(responder=contrary_first(times=99)) as server:
        describer, engine = describer_for(server, tmp_path, root)
        (outcome,) = describer.describe(samples)
    assert isinstance(outcome, QuarantineEntry)
    assert (outcome.stage, outcome.code) == ("describe", "llm_error")
    assert "anomaly_present is False but the image is an anomaly" in outcome.reason
    assert outcome.sample_id == samples[0].id
    assert engine.totals.failures == 1


def test_a_refusal_becomes_an_llm_refusal_quarantine_entry(tmp_path, root):
    wording = wording_with_faults(tmp_path / "wording", {"pill": fault("refusal", times="always")})
    samples = [make_sample(root, "bottle", 1, "anomaly"), make_sample(root, "pill", 2, "anomaly")]
    with StandinServer(responder=truthful) as server:
        describer, _ = describer_for(server, tmp_path, root, templates_folder=wording)
        described = list(describer.describe(samples))
    assert isinstance(described[0], Sample)
    refused = described[1]
    assert isinstance(refused, QuarantineEntry)
    assert (refused.stage, refused.code) == ("describe", "llm_refusal")
    assert REFUSAL_TEXT in refused.reason
    assert refused.sample_id == samples[1].id and refused.path == samples[1].image_paths[0]


def test_results_stay_in_input_order(tmp_path, root):
    # Every third sample answers late; a sample whose path escapes the root sits among them.
    wording = wording_with_faults(
        tmp_path / "wording", {"slow": fault("slow", times="always", delay=0.3)}
    )
    samples = [
        make_sample(root, "slow" if index % 3 == 0 else "bottle", index, label)
        for index, label in enumerate(["anomaly", "normal"] * 6)
    ]
    escaping = samples[4].model_copy(update={"id": f"{SOURCE}/escape", "image_paths": ["../x.png"]})
    samples.insert(5, escaping)
    with StandinServer(responder=truthful) as server:
        describer, _ = describer_for(
            server, tmp_path, root, templates_folder=wording, concurrency=8
        )
        described = list(describer.describe(samples))
        arrival = [last_user_text(body) for body in server.chat_bodies()]
    assert [item.id if isinstance(item, Sample) else item.sample_id for item in described] == [
        sample.id for sample in samples
    ]
    assert isinstance(described[5], QuarantineEntry)
    assert described[5].code == "path_outside_root"
    others = [item for index, item in enumerate(described) if index != 5]
    assert all(isinstance(item, Sample) for item in others)
    for item in others:
        assert item.description.anomaly_present == (item.label == "anomaly")
    assert len(arrival) == 12


def test_requests_for_is_what_describe_sends(tmp_path, root):
    samples = [make_sample(root, "bottle", 1, "anomaly"), make_sample(root, "bottle", 2, "normal")]
    escaping = samples[0].model_copy(update={"id": f"{SOURCE}/escape", "image_paths": ["../x.png"]})
    with StandinServer(responder=truthful) as server:
        describer, engine = describer_for(server, tmp_path, root)
        planned = list(describer.requests_for([*samples, escaping]))
        estimate = engine.dry_run(iter(planned))
        assert server.chat_bodies() == []  # a dry run sends nothing
        list(describer.describe([*samples, escaping]))
        bodies = server.chat_bodies()
    assert estimate.requests == estimate.to_send == 2
    assert [request.request_id for request in planned] == [sample.id for sample in samples]
    assert sorted(body["messages"][1]["content"][0]["text"] for body in bodies) == sorted(
        request.messages[1]["content"][0]["text"] for request in planned
    )
