"""MVTec AD: 15 categories in the layout that many later releases copied."""

from __future__ import annotations

from adinstruct.builder.sources.mvtec_layout import MVTecStyle, MVTecStyleBuilder
from adinstruct.schemas.records import Modality

#: The release's single-channel categories.
GREYSCALE_CATEGORIES = frozenset({"grid", "screw", "zipper"})


def mvtec_modality(category: str) -> Modality:
    return "grey" if category in GREYSCALE_CATEGORIES else "rgb"


class MVTecAD(MVTecStyleBuilder):
    name = "mvtec_ad"
    aliases = ("mvtec", "mvtec-ad", "mvtecad")
    layouts = {
        "categories": "<cat>/train/good/*.png, <cat>/test/<defect>/*.png and "
        "<cat>/ground_truth/<defect>/*_mask.png under the root",
        "single-category": "train/good/, test/<defect>/ and ground_truth/<defect>/ directly "
        "under the root (one category)",
    }
    style = MVTecStyle(modality_of=mvtec_modality)


class SyntheticDemo(MVTecStyleBuilder):
    """The built-in synthetic sample (`build-dataset demo`): MVTec's layout, CC0 content."""

    name = "demo"
    aliases = ("synthetic",)
    layouts = {"categories": "a tree written by adinstruct.builder.demo (the MVTec AD layout)"}
    style = MVTecStyle(modality_of=mvtec_modality)


class SyntheticDemoHoldout(MVTecStyleBuilder):
    """The demo's second tree: categories it never trains on, benchmarked zero-shot."""

    name = "demo_holdout"
    aliases = ("synthetic_holdout",)
    layouts = SyntheticDemo.layouts
    style = MVTecStyle(modality_of=mvtec_modality)


class MPDD(MVTecStyleBuilder):
    name = "mpdd"
    aliases = ("mpdd",)
    layouts = MVTecAD.layouts
    style = MVTecStyle()


class BTAD(MVTecStyleBuilder):
    """BTAD: products 01-03, normal `ok`, anomalous `ko`, no defect names; .bmp or .png."""

    name = "btad"
    aliases = ("beantech",)
    layouts = {
        "categories": "<id>/train/ok/*.bmp|png, <id>/test/{ok,ko}/ and "
        "<id>/ground_truth/ko/<stem>.png|bmp under the root",
        "single-category": "train/ok/, test/ko/ and ground_truth/ko/ directly under the root",
    }
    style = MVTecStyle(normal_folders=frozenset({"ok"}), unnamed_defect_folders=frozenset({"ko"}))
