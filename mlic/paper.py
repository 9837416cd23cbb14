"""The paper's reported numbers (Wang & Zhang 2024, Tables 1-4 and the claims of its text), as data.

Typed in from the paper's text (its tables are plain text in the extraction). Every number
keeps the text as printed (so 87.0 stays 87.0, with its one decimal) and where it comes from.
Nothing else in the project types a paper number: the report, the notebooks and the docs
read them from here. `tests/test_paper.py` checks them against the paper's text and against
each other.

Known problems of the paper's tables, kept as printed and noted where shown:
- Table 4's text extraction lost the ResNeSt check mark of column 2; §2.3's "+1.05" (ResNeSt
  over ResNet, both with the Transformer) = 86.46 - 85.41 restores it.
- §2.3 says the dual branch adds "0.51" with ResNet; Table 4 gives 85.97 - 85.41 = 0.56.
- Table 3's ResNet-101 column averages to 90.905 over the 20 classes, 0.105 above the printed
  mAP 90.8: just outside what rounding explains (0.1). The other columns are within 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "Wang & Zhang (2024), Journal of Test and Measurement Technology 38(1): 48-53"


@dataclass(frozen=True)
class Reported:
    """One number as the paper prints it (in %), with its source in the paper."""

    text: str  # as printed, e.g. "87.0"
    source: str  # e.g. "Table 1, row 本文改进模型 (ours), column mAP/%"

    @property
    def value(self) -> float:
        return float(self.text)

    @property
    def decimals(self) -> int:
        """Decimals as printed: the precision the paper claims (87.0 -> 1, 85.41 -> 2)."""
        return len(self.text.split(".")[1]) if "." in self.text else 0


@dataclass(frozen=True)
class Row:
    """One method of Table 1 or 2 (COCO 2014, mAP at one resolution)."""

    key: str  # stable id; the plan names these (mlic.plan)
    label: str  # English label for our tables
    printed: str  # the row label as printed in the paper
    resolution: int  # input size in px (square)
    map: Reported


def _rows(table: str, resolution: int, rows: list[tuple[str, str, str, str]]) -> tuple[Row, ...]:
    return tuple(
        Row(
            key,
            label,
            printed,
            resolution,
            Reported(text, f"{table} ({resolution}x{resolution}), row {printed}, column mAP/%"),
        )
        for key, label, printed, text in rows
    )


# §2.2, 表1 "各算法结果比较(448×448)". References as numbered in the paper.
TABLE1: tuple[Row, ...] = _rows(
    "Table 1",
    448,
    [
        ("resnet101", "ResNet-101", "ResNet-101", "78.3"),
        ("ml-gcn", "ML-GCN", "ML-GCN", "83.0"),
        ("mcar", "MCAR [15]", "MCAR [15]", "83.8"),
        ("q2l-r101", "Q2L-R101", "Q2L-R101", "84.9"),
        ("asl", "ASL [14]", "ASL [14]", "85.0"),
        ("ours", "Ours (ResNeSt + dual-branch Transformer)", "本文改进模型", "87.0"),
    ],
)

# §2.2, 表2 "各算法结果比较(576×576)".
TABLE2: tuple[Row, ...] = _rows(
    "Table 2",
    576,
    [
        ("ssgrl", "SSGRL", "SSGRL", "83.8"),
        ("c-trans", "C-Trans [16]", "C-Trans [16]", "85.1"),
        ("add-gcn", "ADD-GCN", "ADD-GCN", "85.2"),
        ("q2l-r101", "Q2L-R101", "Q2L-R101", "86.5"),
        ("ours", "Ours (ResNeSt + dual-branch Transformer)", "本文改进模型", "88.4"),
    ],
)

# §2.2, 表3 "各算法在VOC2007数据集上mAP对比": AP per class (rows) and method (columns), in %.
TABLE3_METHODS: tuple[tuple[str, str, str], ...] = (  # (key, English label, label as printed)
    ("resnet101", "ResNet-101", "ResNet-101"),
    ("ml-gcn", "ML-GCN", "ML-GCN"),
    ("ssgrl", "SSGRL", "SSGRL"),
    ("asl-tresnetl", "ASL (TResNetL)", "ASL (TResNetL)"),
    ("ours", "Ours", "本文改进模型"),
)
# The paper's abbreviations, in its order, and the VOC devkit's class names they stand for.
VOC_CLASSES: dict[str, str] = {
    "aero": "aeroplane",
    "bike": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "table": "diningtable",
    "dog": "dog",
    "horse": "horse",
    "mbike": "motorbike",
    "person": "person",
    "plant": "pottedplant",
    "sheep": "sheep",
    "sofa": "sofa",
    "train": "train",
    "tv": "tvmonitor",
}
_TABLE3_TEXT = """
aero    99.1 99.5 99.7 99.9 99.9
bike    97.3 98.5 98.4 98.4 99.1
bird    96.2 98.6 98.0 98.9 99.2
boat    94.7 98.1 97.6 98.7 98.7
bottle  68.3 80.8 85.7 86.8 86.4
bus     92.9 94.6 96.2 98.2 98.8
car     95.9 97.2 98.2 98.7 98.6
cat     94.6 98.2 98.8 98.5 99.1
chair   77.9 82.3 82.0 83.1 84.5
cow     89.9 95.7 98.1 98.3 98.6
table   85.1 86.4 89.7 89.5 89.5
dog     94.7 98.2 98.8 98.8 99.1
horse   96.8 98.4 98.7 99.2 99.2
mbike   94.3 96.7 97.0 98.6 99.1
person  98.1 99.0 99.0 99.3 99.4
plant   80.8 84.7 86.9 89.5 88.2
sheep   93.1 96.7 98.1 99.4 99.7
sofa    79.1 84.3 85.8 86.8 87.0
train   98.2 98.9 99.0 99.6 99.8
tv      91.1 93.7 93.7 95.2 96.0
mAP     90.8 94.0 95.0 95.8 96.0
"""


def _parse_table3() -> dict[str, dict[str, Reported]]:
    table: dict[str, dict[str, Reported]] = {}
    for line in _TABLE3_TEXT.strip().splitlines():
        row, *texts = line.split()
        table[row] = {
            key: Reported(text, f"Table 3 (VOC 2007), row {row}, column {printed}")
            for (key, _, printed), text in zip(TABLE3_METHODS, texts, strict=True)
        }
    return table


# TABLE3[row][method key] with rows = VOC_CLASSES abbreviations, then "mAP".
TABLE3: dict[str, dict[str, Reported]] = _parse_table3()


@dataclass(frozen=True)
class AblationColumn:
    """One column of Table 4 (COCO 2014, 448 px): a backbone x head combination."""

    key: str
    backbone: str  # "resnet" | "resnest"
    head: str  # "transformer" | "dual"
    label: str
    map: Reported


_T4 = "Table 4 (ablation, COCO 2014), row mAP/%, column"
# §2.3, 表4 "消融实验指标对比表".
TABLE4: tuple[AblationColumn, ...] = (
    AblationColumn(
        "resnet-transformer",
        "resnet",
        "transformer",
        "ResNet + Transformer",
        Reported("85.41", f"{_T4} 1 (ResNet ✓, Transformer ✓)"),
    ),
    AblationColumn(
        "resnest-transformer",
        "resnest",
        "transformer",
        "ResNeSt + Transformer",
        Reported(
            "86.46",
            f"{_T4} 2 (Transformer ✓; its ResNeSt ✓ was lost in the text extraction, "
            "restored from §2.3's +1.05)",
        ),
    ),
    AblationColumn(
        "resnet-dual",
        "resnet",
        "dual",
        "ResNet + dual-branch Transformer",
        Reported("85.97", f"{_T4} 3 (ResNet ✓, 双分支 Transformer ✓)"),
    ),
    AblationColumn(
        "resnest-dual",
        "resnest",
        "dual",
        "ResNeSt + dual-branch Transformer (ours)",
        Reported("87.0", f"{_T4} 4 (ResNeSt ✓, 双分支 Transformer ✓)"),
    ),
)


# --------------------------------------------------------------------------- claims in the text


@dataclass(frozen=True)
class Claim:
    """A number the paper's text states, to check the tables against."""

    what: str  # in English
    quote: str  # the paper's words
    value: Reported


def _claim(what: str, where: str, quote: str, text: str) -> Claim:
    return Claim(what, quote, Reported(text, where))


CLAIMS: dict[str, Claim] = {
    "abstract_coco_map": _claim(
        "mAP on COCO (the 576 px result of Table 2)",
        "Abstract",
        "在COCO数据集上的mAP为88.4%",
        "88.4",
    ),
    "abstract_voc_map": _claim(
        "mAP on VOC 2007 (Table 3)", "Abstract", "在VOC2007数据集上的平均精度为96.0%", "96.0"
    ),
    "t1_gain_over_asl": _claim(
        "ours over ASL at 448 px (Table 1)", "§2.2", "相比最高的ASL模型 ... 其mAP值高出2.0%", "2.0"
    ),
    "t2_gain_over_q2l": _claim(
        "ours over Q2L-R101 at 576 px (Table 2)",
        "§2.2",
        "相比最高的Q2L-R101模型, 其mAP值高出1.9%",
        "1.9",
    ),
    "t3_classes_improved": _claim(
        "classes of 20 where ours is best (Table 3)",
        "§2.2",
        "在20个类别中有13个类别都有不同的提升",
        "13",
    ),
    "t3_gain_over_resnet101": _claim(
        "ours over ResNet-101 on VOC", "§2.2", "相比于ResNet-101, ... 提高了5.2%", "5.2"
    ),
    "t3_gain_over_ml-gcn": _claim("ours over ML-GCN on VOC", "§2.2", "ML-GCN ... 2.0%", "2.0"),
    "t3_gain_over_ssgrl": _claim("ours over SSGRL on VOC", "§2.2", "SSGRL ... 1.0%", "1.0"),
    "t3_gain_over_asl-tresnetl": _claim("ours over ASL on VOC", "§2.2", "ASL ... 0.2%", "0.2"),
    "t3_bike_over_asl": _claim(
        "ours over ASL, class bike", "§2.2", "在bike, chair, tv类别上分别提高了0.7%", "0.7"
    ),
    "t3_chair_over_asl": _claim("ours over ASL, class chair", "§2.2", "... 1.4%", "1.4"),
    "t3_tv_over_asl": _claim("ours over ASL, class tv", "§2.2", "... 0.8%", "0.8"),
    "t3_plant_below_asl": _claim(
        "ours below ASL, class plant", "§2.2", "在plant类别上, 比最高的ASL低1.3%", "1.3"
    ),
    "t4_resnest_gain": _claim(
        "ResNeSt over ResNet, both with the Transformer (Table 4 col 2 - col 1)",
        "§2.3",
        "ResNeSt网络可以比ResNet网络提升1.05%左右",
        "1.05",
    ),
    "t4_dual_gain": _claim(
        "dual branch over Transformer, both with ResNet (Table 4 col 3 - col 1)",
        "§2.3",
        "双分支Transformer模块会比Transformer模块提升0.51%左右",
        "0.51",
    ),
    "t4_both_gain": _claim(
        "ResNeSt + dual over ResNet + Transformer (Table 4 col 4 - col 1)",
        "§2.3",
        "会比只使用ResNet和Transformer模块提升1.59%左右",
        "1.59",
    ),
}

# §2: the datasets as the paper describes them.
DATASETS: dict[str, dict[str, float]] = {
    "coco": {"train_images": 82_783, "val_images": 40_504, "classes": 80, "labels_per_image": 2.9},
    "voc": {"train_images": 5_011, "test_images": 4_952, "classes": 20},
}


def table4_discrepancy_note() -> str:
    """The one-line note shown under Table 4: the text's +0.51 against the table's 0.56."""
    by_key = {c.key: c.map for c in TABLE4}
    base, dual = by_key["resnet-transformer"], by_key["resnet-dual"]
    claim = CLAIMS["t4_dual_gain"].value
    return (
        f"Note: the paper's text (§2.3) gives +{claim.text} for the dual branch with ResNet, "
        f"but its Table 4 gives {dual.text} - {base.text} = {dual.value - base.value:.2f}; "
        "the table's numbers are shown."
    )
