"""The LLaVA and Hugging Face exports of real built folders, read back with the real tools.

The demo is built once by the installed `build-dataset demo`; the Hugging Face export is read
back with `datasets.load_dataset` and compared field by field and byte by byte with the
folder's own files, which the test parses itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml
from built_folders import run_demo
from datasets import Image, List
from huggingface_hub import DatasetCard, DatasetCardData

from adinstruct.builder.demo import generate_demo_tree
from adinstruct.builder.export import ExportError
from adinstruct.builder.export.hf import export_hf
from adinstruct.builder.export.llava import export_llava
from adinstruct.builder.images import Placement
from adinstruct.builder.pipeline import BuildConfig, SourceSpec, build
from adinstruct.data_cards.card import (
    HUB_LICENSES,
    ExportedConfig,
    ExportedSplit,
    card_license,
    render_card,
    size_category,
)
from adinstruct.data_cards.catalog import LICENSE_RESTRICTIVENESS, source_card
from adinstruct.schemas import Manifest, SourceInfo

CONFIGS = ["instruct", "detection", "reasoning", "mmad", "samples"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return run_demo(tmp_path_factory.mktemp("built") / "demo")


@pytest.fixture(scope="module")
def samples_only(tmp_path_factory) -> Path:
    """A folder built without recipes: samples.jsonl, images and masks, no instruct/."""
    base = tmp_path_factory.mktemp("samples-only")
    release = base / "release" / "demo"
    generate_demo_tree(release, seed=0)
    out = base / "built"
    build(BuildConfig(sources=[SourceSpec(name="demo", root=release)], out=out, workers=1))
    assert not (out / "instruct").exists() and not (out / "benchmark").exists()
    return out


@pytest.fixture(scope="module")
def hf(demo, tmp_path_factory):
    to = tmp_path_factory.mktemp("exports") / "hf"
    return export_hf(demo, to), to


def copy_folder(folder: Path, to: Path) -> Path:
    """The built folder without the demo's synthetic releases (never part of an export)."""
    shutil.copytree(
        folder, to, ignore=lambda where, names: ["source"] if where == str(folder) else []
    )
    return to


def load(to: Path, config: str, cache: Path) -> datasets.DatasetDict:
    return datasets.load_dataset(str(to), config, cache_dir=str(cache))


def stored_files(dataset: datasets.Dataset, column: str) -> list:
    """The column's embedded files as stored: {"bytes", "path"} (or lists of them), undecoded."""
    feature = dataset.features[column]
    undecoded = List(Image(decode=False)) if isinstance(feature, List) else Image(decode=False)
    return dataset.cast_column(column, undecoded)[column]


def file_cell(folder: Path, path: str | None) -> dict | None:
    """What an embedded file must hold: the path as the record names it, the file's bytes."""
    return None if path is None else {"path": path, "bytes": (folder / path).read_bytes()}


def card_header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# --------------------------------------------------------------------------------------
# LLaVA
# --------------------------------------------------------------------------------------


def test_llava_export_keeps_the_records_and_every_image_resolves(demo, tmp_path):
    to = tmp_path / "llava"
    summary = export_llava(demo, to)

    source_records = demo / "instruct" / "anomaly_instruct.json"
    assert (to / "anomaly_instruct.json").read_bytes() == source_records.read_bytes()
    records = json.loads((to / "anomaly_instruct.json").read_text())
    assert records == json.loads(source_records.read_text()) and len(records) == 120
    for record in records:
        assert (to / "images" / record["image"]).read_bytes() == (
            demo / "images" / record["image"]
        ).read_bytes()
        if record["metadata"]["mask"] is not None:
            mask = record["metadata"]["mask"]
            assert (to / mask).read_bytes() == (demo / mask).read_bytes()

    # The mixture file as the trainer opens it: json_path from its working directory.
    mixture = yaml.safe_load((to / "datasets.yaml").read_text())
    assert mixture == {
        "datasets": [{"json_path": str(to.resolve() / "anomaly_instruct.json"),
                      "sampling_strategy": "all"}]
    }  # fmt: skip
    assert json.loads(Path(mixture["datasets"][0]["json_path"]).read_text()) == records

    for name in ("test_data.json", "visa_dr.json", "mmad.json"):
        assert (to / "benchmark" / name).read_bytes() == (demo / "benchmark" / name).read_bytes()
    benchmark_images = [
        item["image"] for item in json.loads((to / "benchmark/test_data.json").read_text())
    ]
    mmad = json.loads((to / "benchmark" / "mmad.json").read_text())
    for key, item in mmad.items():
        benchmark_images += [key, *item["similar_templates"], *item["random_templates"]]
        if item["mask_path"] is not None:
            assert (to / item["mask_path"]).is_file()
    assert all((to / "images" / image).is_file() for image in benchmark_images)

    placed = {p.relative_to(to / "images").as_posix() for p in (to / "images").rglob("*.png")}
    assert placed == {r["image"] for r in records} | set(benchmark_images)
    assert summary.images == len(placed)
    assert {f.path: f.records for f in summary.files} == {
        "anomaly_instruct.json": 120, "datasets.yaml": 1, "benchmark/test_data.json": 18,
        "benchmark/visa_dr.json": 12, "benchmark/mmad.json": 18,
    }  # fmt: skip
    assert not (to / "source").exists() and not (to / "samples.jsonl").exists()


def test_llava_hardlink_placement_links_the_folder_files(demo, tmp_path):
    to = tmp_path / "linked"
    export_llava(demo, to, placement=Placement.hardlink)
    record = json.loads((to / "anomaly_instruct.json").read_text())[0]
    exported, original = to / "images" / record["image"], demo / "images" / record["image"]
    assert exported.stat().st_ino == original.stat().st_ino


def test_llava_multi_view_record_keeps_its_views_in_order(demo, tmp_path):
    folder = copy_folder(demo, tmp_path / "multi")
    path = folder / "instruct" / "anomaly_instruct.json"
    records = json.loads(path.read_text())
    views = ["demo/capsule/train/good/001.png", "demo/capsule/train/good/000.png"]
    records[0]["image"] = views
    records[0]["conversations"][0]["value"] = "<image>\n" + records[0]["conversations"][0]["value"]
    path.write_text(json.dumps(records, indent=2))

    llava = tmp_path / "llava"
    export_llava(folder, llava)
    assert json.loads((llava / "anomaly_instruct.json").read_text())[0]["image"] == views
    assert all((llava / "images" / view).is_file() for view in views)

    to = tmp_path / "hf"
    export_hf(folder, to)
    train = load(to, "instruct", tmp_path / "cache")["train"]
    assert isinstance(train.features["image"], List)
    images = stored_files(train, "image")
    assert images[0] == [file_cell(folder / "images", view) for view in views]
    # Every other row holds its one image as a one-element list.
    assert images[1] == [file_cell(folder / "images", records[1]["image"])]


# --------------------------------------------------------------------------------------
# Hugging Face: every config read back field for field, byte for byte
# --------------------------------------------------------------------------------------


def test_hf_instruct_config_matches_the_records(demo, hf, tmp_path):
    summary, to = hf
    records = json.loads((demo / "instruct" / "anomaly_instruct.json").read_text())
    train = load(to, "instruct", tmp_path)["train"]
    assert train.num_rows == len(records)
    rows = train.remove_columns(["image", "mask"])
    images, masks = stored_files(train, "image"), stored_files(train, "mask")
    for row, image, mask, record in zip(rows, images, masks, records, strict=True):
        assert row == {key: value for key, value in record.items() if key != "image"}
        assert image == file_cell(demo / "images", record["image"])
        assert mask == file_cell(demo, record["metadata"]["mask"])
    # Decoded, the stored bytes are the image the annotation measured.
    assert train[0]["image"].size == (256, 256)
    # One image a row in every config of the demo; a mask wherever a record names one.
    assert summary.images == sum(f.records for f in summary.files if f.path.startswith("data/"))
    mmad = json.loads((demo / "benchmark" / "mmad.json").read_text()).values()
    samples = [json.loads(line) for line in (demo / "samples.jsonl").open()]
    assert summary.masks == (
        sum(r["metadata"]["mask"] is not None for r in records)
        + sum(item["mask_path"] is not None for item in mmad)
        + sum(len(sample["masks"]) for sample in samples)
    )


def test_hf_benchmark_configs_match_the_benchmark_files(demo, hf, tmp_path):
    _, to = hf
    detection = json.loads((demo / "benchmark" / "test_data.json").read_text())
    test = load(to, "detection", tmp_path / "d")["test"]
    assert test.remove_columns("image").to_list() == [{"anomaly": d["anomaly"]} for d in detection]
    assert stored_files(test, "image") == [
        file_cell(demo / "images", d["image"]) for d in detection
    ]

    reasoning = json.loads((demo / "benchmark" / "visa_dr.json").read_text())
    test = load(to, "reasoning", tmp_path / "r")["test"]
    assert test.remove_columns("image").to_list() == [
        {"questions": item["questions"], "answers": item["answers"]} for item in reasoning
    ]
    assert stored_files(test, "image") == [
        file_cell(demo / "images", r["image"]) for r in reasoning
    ]

    mmad = json.loads((demo / "benchmark" / "mmad.json").read_text())
    test = load(to, "mmad", tmp_path / "m")["test"]
    rows = test.remove_columns(["image", "mask"]).to_list()
    assert [row["key"] for row in rows] == list(mmad)
    for row, image, mask in zip(rows, stored_files(test, "image"), stored_files(test, "mask"),
                                strict=True):  # fmt: skip
        item = mmad[row["key"]]
        for question in row["conversation"]:
            question["Options"] = json.loads(question["Options"])
        assert {key: value for key, value in row.items() if key != "key"} == item
        assert [list(q["Options"]) for q in row["conversation"]] == [
            list(q["Options"]) for q in item["conversation"]
        ]  # letters in the file's order
        assert image == file_cell(demo / "images", row["key"])
        assert mask == file_cell(demo, item["mask_path"])


def test_hf_samples_config_splits_as_released_and_matches_samples_jsonl(demo, hf, tmp_path):
    _, to = hf
    samples = [json.loads(line) for line in (demo / "samples.jsonl").open()]
    loaded = load(to, "samples", tmp_path)
    assert set(loaded) == {sample["split"] for sample in samples} == {"train", "test"}
    for split, dataset in loaded.items():
        expected = [sample for sample in samples if sample["split"] == split]
        images, masks = stored_files(dataset, "image"), stored_files(dataset, "mask")
        rows = dataset.remove_columns(["image", "mask"])
        for row, image, mask, sample in zip(rows, images, masks, expected, strict=True):
            row["extra"] = json.loads(row["extra"])
            for ref in row["masks"]:
                ref["value_names"] = ref["value_names"] and json.loads(ref["value_names"])
            assert row == sample
            source = sample["source"]
            assert image == file_cell(demo / "images", f"{source}/{sample['image_paths'][0]}")
            assert mask == (
                file_cell(demo, f"masks/{source}/{sample['masks'][0]['path']}")
                if sample["masks"] else None
            )  # fmt: skip


def test_hf_shards_when_asked_and_loads_back_the_same(demo, hf, tmp_path):
    _, whole = hf
    to = tmp_path / "sharded"
    summary = export_hf(demo, to, max_shard_records=7)
    shards = sorted((to / "data" / "instruct").glob("train-*.parquet"))
    assert [p.name for p in shards] == [f"train-{i:05d}-of-00018.parquet" for i in range(18)]
    written = {f.path: f.records for f in summary.files}
    assert [written[f"data/instruct/{p.name}"] for p in shards] == [7] * 17 + [1]

    for config in CONFIGS:
        sharded, single = load(to, config, tmp_path / "a"), load(whole, config, tmp_path / "b")
        assert list(sharded) == list(single)
        for split in single:
            assert sharded[split].num_rows == single[split].num_rows
            for column in ("image", "mask"):
                if column in single[split].features:
                    assert stored_files(sharded[split], column) == stored_files(
                        single[split], column
                    )
            others = [c for c in single[split].column_names if c not in ("image", "mask")]
            assert sharded[split].select_columns(others).to_list() == (
                single[split].select_columns(others).to_list()
            )

    # Exported again into the same folder, the old shards go: the glob finds only the new one.
    export_hf(demo, to)
    assert [p.name for p in (to / "data" / "instruct").iterdir()] == [
        "train-00000-of-00001.parquet"
    ]
    assert load(to, "instruct", tmp_path / "c")["train"].num_rows == 120
    assert not [p for p in to.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_hf_export_is_byte_for_byte_deterministic(demo, hf, tmp_path):
    _, first = hf
    # From a copy elsewhere: no absolute path of the folder reaches the files.
    second = tmp_path / "again"
    export_hf(copy_folder(demo, tmp_path / "copy"), second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(files) == 8  # six shards, the card and the manifest's shareable copy
    shared = json.loads((first / "manifest.json").read_text(encoding="utf-8"))
    # Provenance without the builder's disk: no absolute path, no command line.
    assert shared["command"] == [] and "/" not in json.dumps(shared["config"]["sources"])
    assert all("/" not in source["root"] for source in shared["sources"])
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


# --------------------------------------------------------------------------------------
# The dataset card
# --------------------------------------------------------------------------------------


def test_card_header_parses_and_lists_exactly_the_configs_written(demo, hf):
    _, to = hf
    text = (to / "README.md").read_text()
    header = card_header(text)
    written = sorted(p.name for p in (to / "data").iterdir())
    assert [c["config_name"] for c in header["configs"]] == CONFIGS and sorted(CONFIGS) == written
    assert [c.get("default", False) for c in header["configs"]] == [True] + [False] * 4
    assert header["configs"][-1]["data_files"] == [
        {"split": "train", "path": "data/samples/train-*"},
        {"split": "test", "path": "data/samples/test-*"},
    ]
    assert header["license"] == "cc0-1.0"  # both demo sources are CC0
    assert header["size_categories"] == ["n<1K"]  # 258 rows in all
    assert header["source_datasets"] == ["extended|demo", "extended|demo_holdout"]

    card = DatasetCard(text)
    assert isinstance(card.data, DatasetCardData)
    assert card.data.license == "cc0-1.0" and card.data.pretty_name == header["pretty_name"]
    assert DatasetCardData(**header).to_dict()["configs"] == header["configs"]
    # And as `datasets` reads it: the same configs, nothing inferred besides.
    configs = datasets.utils.metadata.MetadataConfigs.from_dataset_card_data(card.data)
    assert list(configs) == CONFIGS

    manifest = Manifest.model_validate_json((demo / "manifest.json").read_text())
    body = text.split("---\n", 2)[2]
    for digest in manifest.config["instruct"]["compose"]["banks"].values():
        assert digest in body
    for key in ("xu2025towards", "li2024llavaonevision", "jiang2025mmad", "gu2024anomalygpt"):
        assert f"{{{key}," in body
    assert "Held-out sources" in body and "demo_holdout" in body
    assert "found 0 errors and 1 warnings over 259 records" in body
    assert str(demo) not in text  # the machine's paths stay out of a published card


def test_card_carries_the_most_restrictive_source_licence(samples_only, tmp_path):
    folder = copy_folder(samples_only, tmp_path / "planted")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sources"].append(
        {**manifest["sources"][0], "name": "mvtec_ad", "license": "CC-BY-NC-SA-4.0",
         "license_url": "https://creativecommons.org/licenses/by-nc-sa/4.0/"}
    )  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    to = tmp_path / "hf"
    export_hf(folder, to)
    text = (to / "README.md").read_text()
    assert card_header(text)["license"] == "cc-by-nc-sa-4.0"
    assert DatasetCard(text).data.license == "cc-by-nc-sa-4.0"
    assert (
        "(CC-BY-NC-SA-4.0), the most restrictive licence of its sources: it follows `mvtec_ad`."
        in text
    )
    assert "@inproceedings{bergmann2019mvtec," in text
    assert "| `demo` | adinstruct synthetic demo | 60 |" in text


samples_config = ExportedConfig(
    name="samples", splits=[ExportedSplit(name="test", rows=3, path="data/samples/test-*")]
)


def source(name: str, license_id: str) -> SourceInfo:
    return SourceInfo(name=name, root="/r", layout="l", license=license_id)


def test_card_licence_combines_terms_and_maps_every_catalog_id_to_the_hub():
    assert set(HUB_LICENSES) == set(LICENSE_RESTRICTIVENESS)

    def licence(*sources: SourceInfo):
        return card_license(Manifest(toolkit_version="0", command=[], sources=list(sources)))

    combined = licence(source("btad", "CC-BY-SA-4.0"), source("noncommercial", "CC-BY-NC-4.0"))
    assert (combined.hub, combined.governing) == ("cc-by-nc-sa-4.0", ["btad", "noncommercial"])
    # The catalog's stricter reading wins over an older manifest's.
    assert licence(source("mvtec_ad", "CC-BY-4.0")).hub == "cc-by-nc-sa-4.0"
    assert licence(source("demo", "CC0-1.0"), source("folder", "unknown")).hub == "unknown"
    assert licence(source("demo", "CC0-1.0"), source("bmad_brain", "other")).governing == [
        "bmad_brain"
    ]
    # Bespoke terms: the Hub's "other", with a name and the terms' link, as it asks.
    bespoke = Manifest(toolkit_version="0", command=[], sources=[source("bmad_brain", "other")])
    header = card_header(render_card(bespoke, [samples_config]))
    assert (header["license"], header["license_name"]) == ("other", "source-terms")
    assert header["license_link"] == source_card("bmad_brain").license_url
    assert DatasetCardData(**header).license == "other"
    assert [size_category(n) for n in (0, 999, 1000, 20_000, 125_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------
# What exists is what is exported; nothing is read or written outside
# --------------------------------------------------------------------------------------


def test_a_folder_with_only_samples_exports_a_samples_config_only(samples_only, tmp_path):
    to = tmp_path / "hf"
    summary = export_hf(samples_only, to)
    assert [p.name for p in (to / "data").iterdir()] == ["samples"]
    header = card_header((to / "README.md").read_text())
    assert header["configs"] == [
        {"config_name": "samples", "default": True, "data_files": [
            {"split": "train", "path": "data/samples/train-*"},
            {"split": "test", "path": "data/samples/test-*"},
        ]},
    ]  # fmt: skip
    loaded = load(to, "samples", tmp_path / "cache")
    assert sum(d.num_rows for d in loaded.values()) == 60 == summary.images
    with pytest.raises(ExportError, match="--recipe anomaly-instruct"):
        export_llava(samples_only, tmp_path / "llava")


def plant_instruct_image(folder: Path, image: str) -> str:
    """Point the third instruction record at `image`; returns the record's id."""
    path = folder / "instruct" / "anomaly_instruct.json"
    records = json.loads(path.read_text())
    records[2]["image"] = image
    path.write_text(json.dumps(records, indent=2))
    return records[2]["id"]


@pytest.mark.parametrize("export", [export_hf, export_llava], ids=["hf", "llava"])
@pytest.mark.parametrize("planted", ["../../etc/passwd", "/etc/passwd", "link"])
def test_an_export_never_reads_outside_the_folder(demo, tmp_path, export, planted):
    folder = copy_folder(demo, tmp_path / "built")
    if planted == "link":  # inside images/ by name, outside by where it leads
        (folder / "images" / "demo" / "link.png").symlink_to("/etc/hostname")
        planted = "demo/link.png"
    record_id = plant_instruct_image(folder, planted)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    to = tmp_path / "out" / "export"
    with pytest.raises(ExportError) as raised:
        export(folder, to)
    message = str(raised.value)
    assert "instruct/anomaly_instruct.json record 3" in message and record_id in message
    assert repr(planted) in message and "is not inside" in message
    assert not (tmp_path / "out").exists()  # checked before anything was written
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_a_missing_image_or_an_invalid_record_is_named(demo, tmp_path):
    folder = copy_folder(demo, tmp_path / "built")
    record_id = plant_instruct_image(folder, "demo/capsule/train/good/999.png")
    with pytest.raises(
        ExportError, match=rf"record 3 \('{record_id}'\): image .*999.png.* missing"
    ):
        export_hf(folder, tmp_path / "hf")
    path = folder / "instruct" / "anomaly_instruct.json"
    records = json.loads(path.read_text())
    del records[2]["image"]
    path.write_text(json.dumps(records))
    with pytest.raises(
        ExportError, match=r"record 3 .*does not fit its schema: image: Field required"
    ):
        export_llava(folder, tmp_path / "llava")


def test_an_export_refuses_to_write_over_the_folder(demo):
    for target in (demo, demo.parent):
        with pytest.raises(ExportError, match="must not be the built folder or hold it"):
            export_hf(demo, target)
