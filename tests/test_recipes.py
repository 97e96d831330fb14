"""The two recipes in one build: training records from the held-in sources, the VisA-D&R-style
benchmark from the held-out one, and what the validation at the end of the build does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from built_folders import console_script
from trees import write_visa_benchmark

from adinstruct.builder.compose.benchmark import LETTERS, LetterDealer
from adinstruct.builder.demo import generate_mvtec_tree
from adinstruct.builder.describe.template import humanise
from adinstruct.builder.errors import ConfigError
from adinstruct.builder.instruct import InstructConfig, instruct_config, resolve_holdout
from adinstruct.builder.pipeline import BuildConfig, SourceSpec, build
from adinstruct.schemas import GRID_WORDS, Manifest, Sample
from adinstruct.validators.runner import validate_folder

BOTH = ["anomaly-instruct", "visa-dr"]


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> tuple[Path, Path, object]:
    base = tmp_path_factory.mktemp("releases")
    visa = write_visa_benchmark(base / "visa")
    generate_mvtec_tree(base / "mvtec", n_images=24, image_size=64, categories=2)
    return base / "visa", base / "mvtec", visa


def run(visa: Path, mvtec: Path, out: Path, **instruct) -> Manifest:
    return build(BuildConfig(
        sources=[SourceSpec(name="visa", root=visa), SourceSpec(name="mvtec", root=mvtec)],
        out=out, workers=1, instruct=InstructConfig(**instruct),
    ))  # fmt: skip


@pytest.fixture(scope="module")
def both(releases, tmp_path_factory) -> Path:
    visa, mvtec, _ = releases
    out = tmp_path_factory.mktemp("both")
    run(visa, mvtec, out, recipes=BOTH)
    return out


def load(folder: Path, name: str):
    return json.loads((folder / name).read_text(encoding="utf-8"))


def samples_of(folder: Path) -> dict[str, Sample]:
    lines = (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    return {sample.id: sample for sample in map(Sample.model_validate_json, lines)}


def image_of(record: dict) -> str:
    if "image_paths" in record:  # a sample
        return f"{record['source']}/{record['image_paths'][0]}"
    return record["image"]


def by_image(folder: Path) -> dict[str, Sample]:
    return {f"{s.source}/{s.image_paths[0]}": s for s in samples_of(folder).values()}


# -- the split between training and benchmark ----------------------------------------------


def test_visa_is_held_out_of_training_and_benchmarked_from_its_test_split(both, releases):
    _, _, tree = releases
    records = load(both, "instruct/anomaly_instruct.json")
    assert records and {r["metadata"]["source"] for r in records} == {"mvtec_ad"}
    detection = load(both, "benchmark/test_data.json")
    expected = {sid: facts for sid, facts in tree.samples.items() if facts.split == "test"}
    assert len(detection) == len(expected)
    for item in detection:
        facts = expected[item["image"].rsplit(".", 1)[0]]
        assert item["anomaly"] == (facts.label == "anomaly")
        # test_detection.py takes the class from the path's second component.
        assert item["image"].split("/")[1] == facts.category
        assert (both / "images" / item["image"]).is_file()
    manifest = Manifest.model_validate_json((both / "manifest.json").read_text())
    assert manifest.config["instruct"]["held_out"] == ["visa"]
    outputs = {output.path: output.records for output in manifest.outputs}
    assert outputs["benchmark/test_data.json"] == len(detection)


def test_the_folder_passes_validation_with_zero_shot_and_leakage_checked(both):
    manifest = Manifest.model_validate_json((both / "manifest.json").read_text())
    assert manifest.validation["error_count"] == 0
    assert manifest.validation["quarantined_records"] == 0
    report = validate_folder(both)
    assert report.error_count == 0
    checked = {f.path for f in report.files}
    assert {"benchmark/test_data.json", "benchmark/mmad.json", "benchmark/visa_dr.json"} <= checked


def test_reasoning_items_ask_every_anomaly_the_same_questions_with_grounded_answers(both):
    items = load(both, "benchmark/visa_dr.json")
    samples = by_image(both)
    anomalies = [image for image, s in samples.items() if s.split == "test" and
                 s.label == "anomaly" and s.source == "visa"]  # fmt: skip
    assert sorted(item["image"] for item in items) == sorted(anomalies)
    assert len({tuple(item["questions"]) for item in items}) == 1
    assert items[0]["questions"][0].startswith("Are there any defects for the object")
    for item in items:
        sample = samples[item["image"]]
        assert len(item["answers"]) == len(item["questions"]) == 4
        assert item["answers"][0].startswith("Yes")
        assert humanise(sample.defect_types[0]) in item["answers"][1]
        for word in sample.annotation.grid_cells:
            assert word in item["answers"][1]


def test_mmad_items_state_what_the_masks_and_names_say(both):
    items = load(both, "benchmark/mmad.json")
    samples = by_image(both)
    names = defaultdict(set)
    for s in samples.values():
        if s.source == "visa" and s.label == "anomaly":
            names[s.category].update(humanise(n) for n in s.defect_types)
    assert set(items) == {i["image"] for i in load(both, "benchmark/test_data.json")}
    for image, item in items.items():
        sample = samples[image]
        questions = {q["type"]: q for q in item["conversation"]}
        answer = {kind: q["Options"][q["Answer"]] for kind, q in questions.items()}
        assert answer["Anomaly Detection"] == ("Yes" if sample.label == "anomaly" else "No")
        assert answer["Object Classification"].lower() == sample.category
        if sample.label == "normal":
            assert set(questions) == {"Anomaly Detection", "Object Classification"}
            assert item["mask_path"] is None
            continue
        assert (both / item["mask_path"]).is_file()
        classification = questions["Defect Classification"]
        options = {o.lower() for o in classification["Options"].values()}
        assert answer["Defect Classification"].lower() == humanise(sample.defect_types[0]).lower()
        # Distractors are the category's other defect names, never another category's.
        assert options <= {n.lower() for n in names[sample.category]} and len(options) >= 2
        cells = sample.annotation.grid_cells
        assert answer["Defect Localization"].lower() == cells[0]
        for text in questions["Defect Localization"]["Options"].values():
            assert text.lower() == cells[0] or text.lower() not in cells
            assert text.lower() in GRID_WORDS
        described = answer["Defect Description"].lower()
        assert humanise(sample.defect_types[0]).lower() in described and cells[0] in described
        assert len(set(questions["Defect Description"]["Options"].values())) == len(
            questions["Defect Description"]["Options"]
        )


def test_templates_are_normal_train_images_of_the_category_nearest_first(both):
    items = load(both, "benchmark/mmad.json")
    samples = by_image(both)
    for image, item in items.items():
        query = samples[image]
        assert item["similar_templates"] and item["random_templates"]
        for template in item["similar_templates"] + item["random_templates"]:
            sample = samples[template]  # templates are placed and listed in samples.jsonl
            assert (sample.split, sample.label, sample.category) == (
                "train",
                "normal",
                query.category,
            )
            assert (both / "images" / template).is_file()
        distance = [
            (int(samples[t].annotation.phash, 16) ^ int(query.annotation.phash, 16)).bit_count()
            for t in item["similar_templates"]
        ]
        assert distance == sorted(distance)
        others = [
            (int(s.annotation.phash, 16) ^ int(query.annotation.phash, 16)).bit_count()
            for key, s in samples.items()
            if s.category == query.category and s.split == "train"
            and key not in item["similar_templates"]
        ]  # fmt: skip
        assert not others or max(distance) <= min(others)


def test_answer_letters_are_balanced_per_question_type(both):
    letters: defaultdict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for item in load(both, "benchmark/mmad.json").values():
        for question in item["conversation"]:
            letters[(question["type"], len(question["Options"]))][question["Answer"]] += 1
    assert letters
    for (kind, options), counts in letters.items():
        full = [counts.get(letter, 0) for letter in LETTERS[:options]]
        assert max(full) - min(full) <= 1, (kind, counts)


def test_the_letter_dealer_is_balanced_seeded_and_not_a_fixed_cycle():
    first = [LetterDealer(7).position("x", 4) for _ in range(1)]
    dealer = LetterDealer(7)
    dealt = [dealer.position("Defect Classification", 4) for _ in range(400)]
    assert Counter(dealt) == dict.fromkeys(range(4), 100)
    again = LetterDealer(7)
    assert dealt == [again.position("Defect Classification", 4) for _ in range(400)]
    other = LetterDealer(8)
    assert dealt != [other.position("Defect Classification", 4) for _ in range(400)]
    assert dealt[:4] != dealt[4:8] or dealt[4:8] != dealt[8:12]  # blocks are reshuffled
    assert first[0] in range(4)


def test_the_build_is_deterministic(releases, both, tmp_path):
    visa, mvtec, _ = releases
    run(visa, mvtec, tmp_path, recipes=BOTH)
    for name in ("benchmark/mmad.json", "benchmark/visa_dr.json", "benchmark/test_data.json",
                 "instruct/anomaly_instruct.json", "samples.jsonl"):  # fmt: skip
        assert (tmp_path / name).read_bytes() == (both / name).read_bytes(), name


# -- choosing what is held out -------------------------------------------------------------


def test_visa_is_held_out_by_default_and_none_trains_on_it(releases, tmp_path):
    visa, mvtec, _ = releases
    common = [console_script(), "build", "--source", f"visa={visa}", "--source", f"mvtec={mvtec}",
              "--recipe", "anomaly-instruct", "--workers", "1", "--quiet"]  # fmt: skip
    subprocess.run([*common, "--out", str(tmp_path / "a")], check=True, timeout=300)
    records = load(tmp_path / "a", "instruct/anomaly_instruct.json")
    assert {r["metadata"]["source"] for r in records} == {"mvtec_ad"}
    assert not (tmp_path / "a" / "benchmark").exists()
    # Held out and not benchmarked: not even decoded.
    manifest = Manifest.model_validate_json((tmp_path / "a" / "manifest.json").read_text())
    assert next(s.counts.total for s in manifest.sources if s.name == "visa") == 0
    assert manifest.stages["annotate"]["in"] == len(samples_of(tmp_path / "a"))
    subprocess.run([*common, "--out", str(tmp_path / "b"), "--holdout", "none"], check=True,
                   timeout=300)  # fmt: skip
    records = load(tmp_path / "b", "instruct/anomaly_instruct.json")
    assert {r["metadata"]["source"] for r in records} == {"mvtec_ad", "visa"}


def test_both_recipes_from_the_command_line_write_one_folder(releases, tmp_path):
    visa, mvtec, _ = releases
    result = subprocess.run(
        [console_script(), "build", "--source", f"visa={visa}", "--source", f"mvtec={mvtec}",
         "--recipe", "anomaly-instruct", "--recipe", "visa-dr", "--holdout", "visa",
         "--workers", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "held out of training: visa" in result.stderr
    assert "validation: 0 errors" in result.stderr
    for name in ("instruct/anomaly_instruct.json", "benchmark/test_data.json",
                 "benchmark/visa_dr.json", "benchmark/mmad.json", "validation.json"):  # fmt: skip
        assert (tmp_path / name).is_file()
    check = subprocess.run([console_script(), "validate", str(tmp_path), "--quiet"], timeout=300)
    assert check.returncode == 0


@pytest.mark.parametrize(
    ("recipes", "holdout", "sources", "message"),
    [
        (BOTH, None, ["mvtec_ad"], "pass --holdout NAME"),
        (BOTH, ["btad"], ["mvtec_ad", "visa"], "--holdout btad is not one of"),
        (["anomaly-instruct"], None, ["visa"], "nothing to train on"),
        (["visa-dr"], None, ["visa", "mvtec_ad"], "--source mvtec_ad is neither held out"),
    ],
)
def test_holdout_mistakes_are_explained(recipes, holdout, sources, message):
    config = InstructConfig(recipes=recipes, holdout=holdout)
    with pytest.raises(ConfigError, match=message):
        resolve_holdout(config, sources)


def test_holdout_rules():
    assert resolve_holdout(InstructConfig(recipes=["visa-dr"]), ["mvtec_ad"]) == {"mvtec_ad"}
    assert resolve_holdout(InstructConfig(), ["mvtec_ad", "visa"]) == {"visa"}
    assert resolve_holdout(InstructConfig(holdout=[]), ["mvtec_ad", "visa"]) == frozenset()
    assert instruct_config(BOTH, "template", None, holdout=["none"]).holdout == []
    with pytest.raises(ConfigError, match="--holdout none holds nothing out"):
        instruct_config(BOTH, "template", None, holdout=["none", "visa"])
    with pytest.raises(ConfigError, match="need a --recipe"):
        instruct_config(None, None, None, holdout=["visa"])


def test_a_benchmark_only_build_describes_no_training_sample(releases, tmp_path):
    visa, _, _ = releases
    manifest = build(BuildConfig(
        sources=[SourceSpec(name="visa", root=visa)], out=tmp_path, workers=1,
        instruct=InstructConfig(recipes=["visa-dr"]),
    ))  # fmt: skip
    assert not (tmp_path / "instruct").exists()
    assert manifest.stages["route"]["train"] == 0
    assert manifest.stages["describe"]["in"] == len(load(tmp_path, "benchmark/test_data.json"))
    assert manifest.validation["error_count"] == 0


# -- validation at the end of the build ----------------------------------------------------


def test_a_benchmark_image_copied_into_training_leaves_training_not_the_benchmark(
    releases, tmp_path
):
    visa, mvtec, _ = releases
    leaky = tmp_path / "mvtec"
    shutil.copytree(mvtec, leaky)
    category = sorted(p.name for p in leaky.iterdir() if p.is_dir())[0]
    planted = leaky / category / "train" / "good" / "planted.png"
    # The same picture, re-encoded: the leak must be found from the pixels, not the bytes.
    from PIL import Image

    Image.open(visa / "candle/Data/Images/Anomaly/001.JPG").save(planted)
    out = tmp_path / "out"
    manifest = run(visa, leaky, out, recipes=BOTH)
    moved = [json.loads(line) for line in (out / "quarantine.jsonl").open()]
    leaked = [e for e in moved if e["stage"] == "validate"]
    assert leaked, "the planted leak was not quarantined"
    planted_image = f"mvtec_ad/{category}/train/good/planted.png"
    # Every training record of the planted image goes, its sample too; nothing else moves.
    assert {image_of(e["record"]) for e in leaked} == {planted_image}
    assert {e["path"] for e in leaked} == {"samples.jsonl", "instruct/anomaly_instruct.json"}
    assert {e["code"] for e in leaked} <= {"benchmark_near_duplicate_in_training",
                                           "benchmark_image_in_training",
                                           "follows_quarantined_image"}  # fmt: skip
    records = load(out, "instruct/anomaly_instruct.json")
    assert planted_image not in {r["image"] for r in records}
    assert "visa/candle/Data/Images/Anomaly/001.JPG" in load(out, "benchmark/mmad.json")
    # The manifest describes the files as they are now, and the folder validates clean.
    outputs = {o.path: o for o in manifest.outputs}
    assert outputs["instruct/anomaly_instruct.json"].records == len(records)
    assert outputs["quarantine.jsonl"].records == len(moved)
    assert manifest.stages["validate"]["quarantined"] == len(leaked)
    assert manifest.validation["errors_remaining"] == 0
    assert validate_folder(out).error_count == 0


def test_a_test_image_equal_to_a_template_takes_its_benchmark_items_along(releases, tmp_path):
    visa, mvtec, _ = releases
    copy = tmp_path / "visa"
    shutil.copytree(visa, copy)
    # A test normal that is byte for byte a train normal: the few-shot template would be it.
    test_image = copy / "capsules/Data/Images/Normal/0006.JPG"
    shutil.copyfile(copy / "capsules/Data/Images/Normal/0000.JPG", test_image)
    out = tmp_path / "out"
    manifest = run(copy, mvtec, out, recipes=BOTH)
    moved = [json.loads(line) for line in (out / "quarantine.jsonl").open()]
    image = "visa/capsules/Data/Images/Normal/0006.JPG"
    by_file = {e["path"]: e for e in moved if e["stage"] == "validate"}
    assert by_file["samples.jsonl"]["code"] == "split_leak_exact"
    assert {"benchmark/test_data.json", "benchmark/mmad.json"} <= set(by_file)
    assert image not in {i["image"] for i in load(out, "benchmark/test_data.json")}
    assert image not in load(out, "benchmark/mmad.json")
    assert "visa/capsules/Data/Images/Normal/0006" not in samples_of(out)
    visa_counts = next(s.counts for s in manifest.sources if s.name == "visa")
    assert visa_counts.total == sum(1 for s in samples_of(out).values() if s.source == "visa")
    assert validate_folder(out).error_count == 0


# -- with an LLM describer -----------------------------------------------------------------


def test_an_llm_describes_training_and_benchmark_samples_once_and_templates_never(
    releases, tmp_path
):
    from llm_standin import StandinServer
    from test_build_llm import API_KEY, grounded_responder

    visa, mvtec, tree = releases
    command = [
        console_script(), "build", "--source", f"visa={visa}", "--source", f"mvtec={mvtec}",
        "--recipe", "anomaly-instruct", "--recipe", "visa-dr", "--describer", "openai",
        "--model", "gpt-4o-mini", "--workers", "1", "--quiet", "--out", str(tmp_path),
    ]  # fmt: skip
    visa_test = sum(1 for facts in tree.samples.values() if facts.split == "test")
    mvtec_samples = sum(1 for path in mvtec.rglob("*.png") if "ground_truth" not in path.parts)
    with StandinServer(responder=grounded_responder) as server:
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": server.base_url}
        estimate = subprocess.run([*command, "--dry-run"], env=env, capture_output=True,
                                  text=True, timeout=300)  # fmt: skip
        assert estimate.returncode == 0, estimate.stderr
        assert server.requests == []
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        asked = [r for r in server.requests if r.path == "/v1/chat/completions"]
    # The held-out train images serve as templates only: nobody pays to describe them.
    assert len(asked) == visa_test + mvtec_samples
    assert f"{visa_test + mvtec_samples} requests" in estimate.stdout
    samples = samples_of(tmp_path)
    assert all(s.describer == "openai:gpt-4o-mini" for s in samples.values()
               if s.source == "mvtec_ad" or s.split == "test")  # fmt: skip
    assert all(s.description is None for s in samples.values()
               if s.source == "visa" and s.split == "train")  # fmt: skip
    assert API_KEY not in (tmp_path / "manifest.json").read_text()


def test_a_rebuild_without_the_benchmark_leaves_no_stale_benchmark_behind(releases, tmp_path):
    visa, mvtec, _ = releases
    run(visa, mvtec, tmp_path, recipes=BOTH)
    (tmp_path / "sanity").mkdir()
    (tmp_path / "sanity" / "metrics.json").write_text("{}")  # an old detector run's scores
    manifest = run(visa, mvtec, tmp_path, recipes=["anomaly-instruct"])
    assert not any((tmp_path / "benchmark").glob("*.json"))
    assert not (tmp_path / "sanity").exists()
    assert {o.path for o in manifest.outputs} == {
        "samples.jsonl", "quarantine.jsonl", "instruct/anomaly_instruct.json",
    }  # fmt: skip
    assert validate_folder(tmp_path).error_count == 0
