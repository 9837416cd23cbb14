"""The plan of runs: every cell of the paper's tables is fed, every run is a valid config."""

from __future__ import annotations

import pytest
import timm
import torch

from mlic.config import load_config
from mlic.errors import ConfigError
from mlic.paper import TABLE1, TABLE2, TABLE3_METHODS, TABLE4
from mlic.plan import FAMILIES, SETTINGS, expected_config, runs, setting

NAMES = [
    "coco448-resnet-gap",
    "coco448-resnet-transformer",
    "coco448-resnest-transformer",
    "coco448-resnet-dual",
    "coco448-resnest-dual",
    "coco576-resnet-transformer",
    "coco576-resnest-dual",
    "coco448-resnest-dual-shared",
    "voc448-resnet-gap",
    "voc448-resnest-dual",
]


def fed(family: str, table: str) -> set[str]:
    return {f.cell for r in runs(family) for f in r.feeds if f.table == table}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_runs_and_the_cells_they_feed(family):
    assert [r.name for r in runs(family)] == NAMES
    assert fed(family, "table1") == {"resnet101", "q2l-r101", "ours"}
    assert fed(family, "table2") == {"q2l-r101", "ours"}
    assert fed(family, "table3") == {"resnet101", "ours"}
    # the paper's 2 x 2, and one row beyond it: the other reading of the BatchFormerV2 branch
    assert fed(family, "table4") == {c.key for c in TABLE4} | {"resnest-dual-shared"}
    assert fed(family, "figures") == {"figure5", "figure6"}
    # every fed cell is a row of the paper's table
    assert fed(family, "table1") <= {r.key for r in TABLE1}
    assert fed(family, "table2") <= {r.key for r in TABLE2}
    assert fed(family, "table3") <= {k for k, _, _ in TABLE3_METHODS}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_run_is_a_valid_config_with_the_planned_values(family):
    fam = FAMILIES[family]
    for run in runs(family):
        cfg = load_config(run.preset, run.overrides)
        s = setting(run.name)
        assert cfg.name == run.name
        assert cfg.data.dataset == s.dataset
        assert cfg.data.image_size == fam.image_sizes[s.paper_size]
        assert cfg.model.backbone == fam.backbones[s.backbone]
        assert cfg.model.head == s.head
        # papermill passes only built-in types faithfully
        assert all(type(v) in (int, str) for v in run.overrides.values())
        assert load_config(run.preset, run.override_strings()) == cfg
        for key, value in expected_config(run.setting, family).items():
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value


def test_the_table4_columns_are_the_2x2_of_backbone_and_head():
    for run in runs("paper", only="table4"):
        column = next(f.cell for f in run.feeds if f.table == "table4")
        s = setting(run.name)
        suffix = "-shared" if s.batchformer == "shared" else ""
        assert column == f"{s.backbone}-{s.head}{suffix}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dual_runs_name_their_batchformer_branch(family):
    for run in runs(family):
        cfg = load_config(run.preset, run.overrides)
        if cfg.model.head != "dual":
            assert "model.batchformer" not in run.overrides
            continue
        want = "shared" if run.name == "coco448-resnest-dual-shared" else "separate"
        assert run.overrides["model.batchformer"] == want == cfg.model.batchformer
        assert expected_config(run.setting, family)["model.batchformer"] == want


def test_paper_family_uses_the_paper_presets_and_sizes():
    by_name = {r.name: r for r in runs("paper")}
    assert by_name["coco448-resnest-dual"].preset == "paper-coco-448"
    assert by_name["coco576-resnest-dual"].preset == "paper-coco-576"
    assert by_name["voc448-resnest-dual"].preset == "paper-voc-448"
    assert FAMILIES["paper"].backbones == {"resnet": "resnet101", "resnest": "resnest101e"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_pair_has_equal_depth_and_the_sizes_keep_the_ratio(family):
    fam = FAMILIES[family]
    assert fam.image_sizes[448] * 576 == fam.image_sizes[576] * 448  # 7 : 9
    with torch.device("meta"):  # architecture only: no memory, no weights
        resnet, resnest = (
            timm.create_model(fam.backbones[b], pretrained=False) for b in ("resnet", "resnest")
        )
    blocks = [[len(getattr(m, f"layer{i}")) for i in range(1, 5)] for m in (resnet, resnest)]
    assert blocks[0] == blocks[1]
    assert resnet.num_features == resnest.num_features == 2048


def test_seeds_repeat_every_setting():
    plan = runs("embedded", seeds=3)
    paper_settings = [s for s in SETTINGS if any(f.table != "budget" for f in s.feeds)]
    assert len(plan) == 3 * len(paper_settings)
    assert len({r.name for r in plan}) == len(plan)
    dual = [r for r in plan if r.setting == "coco448-resnest-dual"]
    names = ["coco448-resnest-dual", "coco448-resnest-dual-seed1", "coco448-resnest-dual-seed2"]
    assert [r.name for r in dual] == names  # seed 0 is the one-seed plan's run, not a copy
    for k, run in enumerate(dual):
        assert run.seed == k and run.overrides["train.seed"] == k
        assert load_config(run.preset, run.overrides).train.seed == k
        assert setting(run.name).name == "coco448-resnest-dual"
    assert all(r.seed is None and "train.seed" not in r.overrides for r in runs("embedded"))


@pytest.mark.parametrize("family", ["embedded", "paper"])
def test_the_budget_runs_repeat_two_settings_at_twice_the_epochs(family):
    budget = runs(family, only="budget")
    assert not {r.name for r in budget} & {r.name for r in runs(family)}  # asked for only
    for run in budget:
        base = next(r for r in runs(family) if r.name == run.name.removesuffix("-2x"))
        once, twice = (load_config(r.preset, r.overrides) for r in (base, run))
        assert twice.train.epochs == 2 * once.train.epochs
        twice.train.epochs = once.train.epochs  # and nothing else differs, the name aside
        twice.name = once.name
        assert twice.to_dict() == once.to_dict()
    assert {r.name for r in budget} == {
        "coco448-resnest-dual-2x",
        "coco448-resnet-transformer-2x",
    }


def test_only_filters_by_table():
    assert [r.name for r in runs("embedded", only="figures")] == ["coco448-resnest-dual"]
    assert len(runs("embedded", only="table4")) == 5
    assert {r.name for r in runs("paper", only=["table2", "table3"])} == {
        "coco576-resnet-transformer",
        "coco576-resnest-dual",
        "voc448-resnet-gap",
        "voc448-resnest-dual",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "laptop"}, "unknown plan family 'laptop'"),
        ({"family": "embedded", "only": "table5"}, "unknown table 'table5'"),
        ({"family": "embedded", "seeds": 0}, "seeds=0"),
    ],
)
def test_bad_requests_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        runs(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_run_name():
    with pytest.raises(ConfigError, match="not a run of the plan"):
        setting("coco448-vit-dual")


def test_the_embedded_runs_leave_room_for_attention():
    # Issue 11: at least 4x4 tokens at the size that stands for 448 px, more at the one for 576.
    from mlic.models.backbone import create_backbone

    tokens: dict[int, set[tuple[int, int]]] = {}
    for run in runs("embedded"):
        cfg = load_config(run.preset, run.overrides)
        size = cfg.data.image_size
        with torch.device("meta"):  # shapes only
            net = create_backbone(cfg.model.backbone, backbone_kwargs=cfg.model.backbone_kwargs)
            grid = tuple(net.eval().forward_features(torch.empty(1, 3, size, size)).shape[-2:])
        tokens.setdefault(setting(run.name).paper_size, set()).add(grid)
    assert all(min(g) >= 4 for g in tokens[448]), tokens
    assert min(min(g) for g in tokens[576]) > max(max(g) for g in tokens[448]), tokens
