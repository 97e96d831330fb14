"""What a defect's name suggests about its cause, effect and prevention, and what a category shows.

These are plausible explanations, not diagnoses: the template describer words each one as a
possibility ("It may have been caused by ..."). A keyword matches the start of a word in the
lower-cased defect name, so "scratch" matches "small scratches" and "crack" matches "small
cracks"; keywords avoid prefixes of unrelated common words ("breakage", not "break", which
would match "breakfast"). Entries are tried in order, so specific ones come first.

No sentence here may use a grid word (top, left, center, ...): they go into answers whose
location claims are checked word by word against the mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class DefectKnowledge:
    topic: str
    keywords: tuple[str, ...]
    #: Completes "It may have been caused by ...".
    cause: str
    #: Completes "It could ...".
    effect: str
    #: Completes "It could be prevented by ...".
    prevention: str


KNOWLEDGE: tuple[DefectKnowledge, ...] = (
    DefectKnowledge(
        "screw thread", ("thread side", "thread top"),
        "damage to the thread during rolling or cutting, or knocks against other screws in bulk "
        "handling",
        "stop the screw from engaging its mating thread and weaken the joint",
        "checking the thread-rolling dies for wear, separating parts in transport and gauging "
        "threads before packing",
    ),
    DefectKnowledge(
        "assembly error", ("misplaced", "wrong", "swap", "flip", "pill type", "mixed"),
        "an assembly or sorting error, such as a part picked, oriented or placed wrongly",
        "make the product work incorrectly or not at all",
        "fixtures that admit only the correct part and orientation, and a vision check of "
        "placement at the assembly station",
    ),
    DefectKnowledge(
        "crack", ("crack", "fissure"),
        "mechanical impact, or stress from uneven cooling or drying during production",
        "grow under load and lead to breakage or leakage",
        "controlled cooling and drying, gentler handling and removing stress concentrations",
    ),
    DefectKnowledge(
        "scratch", ("scratch", "abrasion", "scuff"),
        "abrasive contact with tools, fixtures, conveyors or other parts during handling or "
        "transport",
        "spoil the appearance and open the surface to corrosion or wear",
        "protective packaging, clean and smooth contact surfaces and careful handling",
    ),
    DefectKnowledge(
        "hole", ("hole", "poke", "pit", "puncture", "pore"),
        "a puncture by a sharp object, trapped gas or a local flaw in the material",
        "let moisture, dirt or light through and weaken the material",
        "keeping sharp objects away from the line and checking incoming material",
    ),
    DefectKnowledge(
        "cut", ("cut",),
        "contact with a blade or a sharp edge during processing or handling",
        "expose inner layers and weaken the part",
        "guarding sharp edges, keeping blades well adjusted and handling parts with care",
    ),
    DefectKnowledge(
        "glue", ("glue", "adhesive"),
        "excess or stray adhesive during bonding",
        "spoil the appearance, attract dirt and stick to neighbouring parts",
        "dosing adhesive precisely and cleaning the applicators regularly",
    ),
    DefectKnowledge(
        "print", ("print", "imprint", "label", "logo"),
        "a fault in printing or marking, such as a clogged nozzle, a misaligned stamp or smeared "
        "ink",
        "make the marking hard to read and the product hard to identify",
        "regular cleaning and alignment of the printing equipment and checking each print",
    ),
    DefectKnowledge(
        "colour", ("color", "colour", "discolo", "gray", "grey"),
        "uneven mixing of the material, overheating, or contact with a staining substance",
        "make the product look faulty to customers and may signal a problem with the material",
        "controlling raw-material mixing and process temperature and keeping contact surfaces "
        "clean",
    ),
    DefectKnowledge(
        "burn", ("burn", "scorch"),
        "too much heat during processing, such as overly long roasting or frying, or an "
        "electrical overload on electronics",
        "change the material's properties and make the product unusable",
        "monitoring temperatures and dwell times and protecting circuits against overload",
    ),
    DefectKnowledge(
        "melt", ("melt", "meld"),
        "excessive heat during soldering, moulding or storage",
        "deform the part and damage neighbouring components",
        "controlling process temperatures and keeping parts away from heat sources",
    ),
    DefectKnowledge(
        "contamination",
        ("contamination", "contaminat", "stain", "spot", "dirt", "foreign", "partic", "oil",
         "liquid", "stroke", "residue", "dust", "smudge"),
        "foreign material such as dust, oil, liquid or debris reaching the surface during "
        "production or handling",
        "affect hygiene, appearance or function, and hide other defects",
        "clean production areas, filtered air, covered conveyors and regular cleaning of tools",
    ),
    DefectKnowledge(
        "missing part", ("missing", "chunk", "absent", "underflow", "incomplete"),
        "an incomplete assembly or filling step, or a piece breaking off during handling",
        "leave the product incomplete and unable to work as intended",
        "checking completeness after each assembly step, for example with sensors or a vision "
        "inspection",
    ),
    DefectKnowledge(
        "breakage", ("broken", "breakage", "breaks", "chip", "damage", "fracture", "split"),
        "an impact or excessive force during production, handling or transport",
        "weaken the part, leave sharp fragments and stop it from working",
        "cushioned conveyors and packaging, limited drop heights and careful handling",
    ),
    DefectKnowledge(
        "bend", ("bent", "bend"),
        "mechanical force during insertion, assembly or handling",
        "cause misalignment, poor contact or a failed fit",
        "correct insertion tooling, protective trays and careful handling",
    ),
    DefectKnowledge(
        "deformation",
        ("deform", "misshape", "squeez", "dent", "manipulated", "warp", "shape", "bulge", "sink",
         "protru"),
        "excessive pressure, a worn mould or forming tool, or heat during processing",
        "stop the part from fitting or working and spoil its appearance",
        "calibrated forming pressure, well-maintained moulds and controlled temperatures",
    ),
    DefectKnowledge(
        "sticking", ("stuck", "fused"),
        "pieces touching while still soft or sticky during cooking, drying or cooling",
        "make portions uneven and the product look faulty",
        "spacing pieces on the line and controlling moisture and temperature",
    ),
    DefectKnowledge(
        "fold", ("fold", "wrinkle", "crease"),
        "material bunching up during stretching, laying or winding",
        "weaken the material and spoil its appearance",
        "even tension control and well-aligned rollers",
    ),
    DefectKnowledge(
        "stray thread", ("thread", "yarn", "fibre", "fiber"),
        "a loose or broken thread during weaving, or a stray fibre caught on the surface",
        "spoil the appearance and snag or unravel further",
        "maintaining the looms, controlling yarn tension and removing loose fibres",
    ),
    DefectKnowledge(
        "leak", ("leak", "overflow"),
        "a faulty seal, a crack in the shell or overfilling",
        "lose content, soil nearby products and spoil the dose",
        "checking sealing parameters and filling levels and inspecting the seals",
    ),
    DefectKnowledge(
        "bubble", ("bubble", "void", "blister"),
        "air or gas trapped in the material during mixing, moulding or coating",
        "weaken the material and spoil its appearance",
        "degassing the material and controlling filling speed and pressure",
    ),
    DefectKnowledge(
        "roughness", ("rough",),
        "a worn tool, poor finishing or an uneven coating",
        "spoil the appearance and increase friction and wear",
        "maintaining tools and checking the finishing step",
    ),
    DefectKnowledge(
        "excess material", ("extra", "additional", "excess", "surplus"),
        "surplus material, or a part added by mistake during forming or assembly",
        "stop the product from fitting or working and spoil its appearance",
        "dosing material precisely and counting parts at each step",
    ),
)  # fmt: skip

GENERIC = DefectKnowledge(
    "generic", (),
    "a fault during manufacturing, handling or transport",
    "reduce the quality or reliability of the product",
    "closer process control and an inspection after each production step",
)  # fmt: skip

MEDICAL_MODALITIES = frozenset({"mri", "ct", "oct", "xray", "histopathology"})
#: 3D scans of parts (MVTec 3D-AD's rgb + xyz, Real3D-AD's point clouds), shown as views.
THREE_D_MODALITIES = frozenset({"depth", "point_cloud"})
#: How answers name a view by its place in the record's list of images.
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")

#: Full sentences for medical images: the image cannot tell a cause, so none is suggested.
MEDICAL_CAUSE = (
    "It may reflect a pathological change; its cause cannot be determined from the image alone."
)
MEDICAL_EFFECT = "It may need assessment by a clinician."
MEDICAL_PREVENTION = (
    "How to prevent or follow it up is a clinical question that the image alone cannot answer; "
    "review by a specialist, with the patient's history, may be needed."
)

#: What a normal image of each known category shows (MVTec AD, VisA, MVTec LOCO, MPDD,
#: Real-IAD, the demo); anything else falls back to "a <category>".
CATEGORY_OBJECTS: dict[str, str] = {
    # MVTec AD
    "bottle": "a glass bottle", "cable": "a cable cross-section with insulated wires",
    "capsule": "a pharmaceutical capsule", "carpet": "a carpet texture",
    "grid": "a metal wire grid", "hazelnut": "a hazelnut", "leather": "a leather surface",
    "metal_nut": "a metal nut", "pill": "a pill", "screw": "a metal screw",
    "tile": "a ceramic tile surface", "toothbrush": "a toothbrush head",
    "transistor": "an electronic transistor on a board", "wood": "a wooden surface",
    "zipper": "a zipper",
    # VisA
    "candle": "a set of candles", "capsules": "a group of capsules", "cashew": "a cashew nut",
    "chewinggum": "a piece of chewing gum", "fryum": "a fryum snack",
    "macaroni1": "pieces of macaroni", "macaroni2": "pieces of macaroni",
    "pcb1": "a circuit board with electronic components",
    "pcb2": "a circuit board with electronic components",
    "pcb3": "a circuit board with electronic components",
    "pcb4": "a circuit board with electronic components",
    "pipe_fryum": "a pipe-shaped fryum snack",
    # MVTec LOCO AD
    "breakfast_box": "a breakfast box with fruit and cereal", "juice_bottle": "a juice bottle",
    "pushpins": "a box of pushpins", "screw_bag": "a bag of screws, nuts and washers",
    "splicing_connectors": "splicing connectors joined by a cable",
    # MPDD
    "bracket_black": "a black metal bracket", "bracket_brown": "a brown metal bracket",
    "bracket_white": "a white metal bracket", "connector": "a metal connector",
    "metal_plate": "a metal plate", "tubes": "metal tubes",
    # Real-IAD (a few whose names read badly as they are)
    "audiojack": "an audio jack", "pcb": "a circuit board with electronic components",
    "sim_card_set": "a SIM card set", "terminalblock": "a terminal block",
    "usb": "a USB connector", "usb_adaptor": "a USB adaptor", "vcpill": "a pill",
    # The synthetic demo
    "washer": "a metal washer", "fabric": "a woven fabric",
    # MVTec 3D-AD
    "bagel": "a bagel", "cable_gland": "a cable gland", "carrot": "a carrot",
    "cookie": "a cookie", "dowel": "a wooden dowel", "foam": "a piece of foam",
    "peach": "a peach", "potato": "a potato", "rope": "a piece of rope", "tire": "a tire",
    # Real3D-AD: scans of small figurines and sweets
    "airplane": "a model airplane", "car": "a model car", "candybar": "a candy bar",
    "chicken": "a model chicken", "diamond": "a model diamond", "duck": "a model duck",
    "fish": "a model fish", "gemstone": "a model gemstone", "seahorse": "a model seahorse",
    "shell": "a seashell", "starfish": "a model starfish", "toffees": "a toffee",
}  # fmt: skip

#: How questions name a category ("Is the PCB defective?"), where its folder name reads badly.
CATEGORY_NAMES: dict[str, str] = {
    "pcb1": "PCB", "pcb2": "PCB", "pcb3": "PCB", "pcb4": "PCB", "pcb": "PCB",
    "macaroni1": "macaroni", "macaroni2": "macaroni", "chewinggum": "chewing gum",
    "audiojack": "audio jack", "terminalblock": "terminal block", "usb": "USB connector",
    "usb_adaptor": "USB adaptor", "sim_card_set": "SIM card set", "vcpill": "pill",
    "candybar": "candy bar", "toffees": "toffee",
}  # fmt: skip

MEDICAL_IMAGES = {
    "mri": "an MRI scan", "ct": "a CT scan", "oct": "an OCT scan", "xray": "an X-ray image",
    "histopathology": "a histopathology image",
}  # fmt: skip


@lru_cache(maxsize=4096)
def knowledge_for(defect_name: str) -> DefectKnowledge:
    """The first entry with a keyword starting a word of `defect_name`, else GENERIC."""
    text = " ".join(defect_name.lower().replace("_", " ").replace("-", " ").split())
    for entry in KNOWLEDGE:
        if any(re.search(rf"\b{re.escape(keyword)}", text) for keyword in entry.keywords):
            return entry
    return GENERIC


#: How a question names a medical image ("Is anything abnormal in this MRI scan?").
MEDICAL_SCANS = {
    "mri": "MRI scan", "ct": "CT scan", "oct": "OCT scan", "xray": "X-ray",
    "histopathology": "histopathology image",
}  # fmt: skip

#: Who reads each kind of medical image, and what they write about it.
MEDICAL_READERS = {
    "mri": "radiologist", "ct": "radiologist", "xray": "radiologist", "oct": "ophthalmologist",
    "histopathology": "pathologist",
}  # fmt: skip
MEDICAL_REPORTS = {
    "mri": "radiology report", "ct": "radiology report", "xray": "radiology report",
    "oct": "ophthalmology report", "histopathology": "pathology report",
}  # fmt: skip

#: The effect sentence with the specialist who reads the modality named.
MEDICAL_EFFECT_BY_READER = "It may need assessment by {article} {reader}."
