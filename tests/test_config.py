"""Configuration: presets load, overrides are typed, mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlic.config import (
    Config,
    ModelConfig,
    from_dict,
    load_config,
    preset_names,
    preset_summaries,
)
from mlic.errors import ConfigError


def test_every_preset_loads_and_round_trips_through_yaml():
    assert {"embedded", "paper-coco-448", "paper-coco-576", "paper-voc-448"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        again = from_dict(yaml.safe_load(cfg.to_yaml()))
        assert again == cfg, name
        assert preset_summaries()[name], f"preset {name} has no description"


def test_paper_presets_follow_the_paper():
    for name, size in [("paper-coco-448", 448), ("paper-coco-576", 576), ("paper-voc-448", 448)]:
        cfg = load_config(name)
        assert cfg.data.image_size == size
        assert cfg.model.backbone == "resnest101e" and cfg.model.head == "dual"
        assert cfg.model.d_model == 2048 and cfg.train.epochs == 25
        assert cfg.data.mean == [0.0, 0.0, 0.0] and cfg.data.std == [1.0, 1.0, 1.0]
        assert cfg.data.randaugment and cfg.data.cutmix_prob > 0
        assert cfg.train.ema_decay == pytest.approx(0.9997)
        # the paper's "initial learning rate 1e-6" is OneCycle's starting point
        assert cfg.train.lr / cfg.train.div_factor == pytest.approx(1e-6)
    assert load_config("paper-voc-448").data.split("val") == "test"


def test_paper_presets_follow_query2label_where_the_paper_is_silent():
    # Query2Label's published command: AdamW, weight decay 1e-2 on every parameter.
    for name in ("paper-coco-448", "paper-coco-576", "paper-voc-448"):
        t = load_config(name).train
        assert t.weight_decay == pytest.approx(1e-2) and t.weight_decay_exempt == "none"
    # the exemptions stay available; the dataclass default keeps the previous behaviour
    assert Config().train.weight_decay_exempt == "norm_bias_queries"
    cfg = load_config("paper-coco-448", ["train.weight_decay_exempt=norm_bias"])
    assert cfg.train.weight_decay_exempt == "norm_bias"


def test_every_dual_head_preset_uses_the_official_batchformer_layer():
    duals = [n for n in preset_names() if load_config(n).model.head == "dual"]
    assert {"embedded", "paper-coco-448", "paper-coco-576", "paper-voc-448"} <= set(duals)
    for name in duals:
        assert load_config(name).model.batchformer == "separate", name
    assert Config().model.batchformer == "separate"
    assert load_config("embedded", ["model.batchformer=shared"]).model.batchformer == "shared"


def test_a_batchformer_choice_for_a_head_without_the_branch_is_refused():
    # Not silently ignored: only the dual head has a BatchFormerV2 branch to choose.
    for head in ("gap", "transformer"):
        with pytest.raises(ConfigError, match=f"model.batchformer='shared' .* model.head='{head}'"):
            load_config("embedded", [f"model.head={head}", "model.batchformer=shared"])
        with pytest.raises(ConfigError, match="dual head only"):  # built without from_dict
            Config(model=ModelConfig(head=head, batchformer="shared"))
        assert load_config("embedded", [f"model.head={head}"]).model.batchformer == "separate"


def test_every_committed_run_record_is_a_valid_configuration():
    # `mlic reproduce` and the report read each record's config.yaml through load_config.
    records = sorted(
        (Path(__file__).resolve().parents[1] / "results" / "runs").glob("*/config.yaml")
    )
    assert records
    for path in records:
        cfg = load_config(path=path)
        assert cfg.model.head == "dual" or cfg.model.batchformer == ModelConfig().batchformer


def test_overrides_are_parsed_by_type():
    cfg = load_config(
        "embedded",
        [
            "train.epochs=3",
            "model.backbone=resnet101",
            "data.mean=[0.5, 0.5, 0.5]",
            "train.lr=2e-4",
            "data.randaugment=true",
        ],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.backbone == "resnet101"
    assert cfg.data.mean == [0.5, 0.5, 0.5]
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.data.randaugment is True


def test_papermill_style_values_are_converted():
    # papermill hands tuples over as lists or strings; ints may arrive as floats
    cfg = load_config("embedded", {"data.mean": (0.1, 0.2, 0.3), "train.epochs": 2.0})
    assert cfg.data.mean == [0.1, 0.2, 0.3] and cfg.train.epochs == 2


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.epoch=3", "train.epoch"),
        ("trian.epochs=3", "trian"),
        ("train.epochs=three", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("model.head=mlp", "model.head"),
        ("data.randaugment=maybe", "data.randaugment"),
        ("train.lr=fast", "train.lr"),
        ("train.weight_decay_exempt=bias", "train.weight_decay_exempt"),
        ("train.weight_decay=-0.01", "train.weight_decay"),
        ("model.batchformer=both", "model.batchformer"),
        ("noequals", "noequals"),
    ],
)
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(ConfigError) as info:
        load_config("embedded", [override])
    message = str(info.value)
    assert named in message and "\n" not in message


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="d_model"):
        load_config("embedded", ["model.d_model=130", "model.nhead=4"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config("embedded", ["train.batch_size=1"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no-such-preset")


def test_default_config_is_valid_and_resolves_the_embedded_root():
    cfg = Config()
    assert cfg.data.is_embedded
    assert str(cfg.data.resolved_root()).endswith("embedded/coco")
