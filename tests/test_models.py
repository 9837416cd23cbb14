"""The model: positions, the BatchFormerV2 branch, every variant, weights, parameter counts."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import mlic
from mlic.config import BatchFormerVariant, HeadName, ModelConfig, load_config
from mlic.config_rules import MODEL_RELATIONS, RULES, training_batch_minimum
from mlic.errors import CheckpointError, ConfigError, MlicError
from mlic.losses import AsymmetricLoss
from mlic.models import MultiLabelClassifier, build_model, build_model_from_config
from mlic.models.heads import QueryHead
from mlic.models.position import PositionEmbeddingSine
from mlic.models.transformer import EncoderLayer, TransformerEncoder, batch_attention

K = 5  # classes of the tiny models
TINY = {"d_model": 64, "nhead": 4, "dim_feedforward": 128}


def tiny(backbone: str, head: str, **kw) -> MultiLabelClassifier:
    torch.manual_seed(0)
    return build_model(backbone, head, K, **{**TINY, **kw})


def images(b: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """Training mode, but batch norm uses running statistics: isolates the head's coupling."""
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    return model


# --------------------------------------------------------------------------- positions


def slow_sine(h: int, w: int, f: int, temperature=10000.0, scale=2 * math.pi, eps=1e-6):
    out = torch.empty(h * w, 2 * f, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            for axis, (i, n) in enumerate(((y, h), (x, w))):
                coord = (i + 1) / (n + eps) * scale
                for c in range(f):
                    angle = coord / temperature ** (2 * (c // 2) / f)
                    out[y * w + x, axis * f + c] = (
                        math.sin(angle) if c % 2 == 0 else math.cos(angle)
                    )
    return out


@pytest.mark.parametrize("h,w", [(14, 14), (18, 18), (2, 2), (3, 7), (5, 1)])
def test_position_embedding_any_size(h, w):
    f = 16
    pos = PositionEmbeddingSine(f)(h, w)
    assert pos.shape == (h * w, 2 * f)
    torch.testing.assert_close(pos.double(), slow_sine(h, w, f), atol=1e-5, rtol=0)
    grid = pos.reshape(h, w, 2 * f)
    # Row channels depend on the row only, column channels on the column only.
    assert torch.equal(grid[:, :, :f], grid[:, :1, :f].expand(h, w, f))
    assert torch.equal(grid[:, :, f:], grid[:1, :, f:].expand(h, w, f))


def test_position_embedding_tells_tokens_apart_at_paper_size():
    pos = PositionEmbeddingSine(1024)(14, 14)  # d_model 2048
    assert pos.shape == (196, 2048)
    distances = torch.cdist(pos, pos) + torch.eye(196) * 1e3
    assert distances.min() > 0.1


# --------------------------------------------------------------------------- BatchFormerV2


def test_batch_attention_mixes_samples_at_the_same_position_only():
    torch.manual_seed(0)
    layer = EncoderLayer(16, 4, 32, dropout=0.0).eval()
    tokens = torch.randn(3, 5, 16)  # [B, L, d]
    out = batch_attention(layer, tokens)
    changed = tokens.clone()
    changed[2, 4] += 1.0  # sample 2, position 4
    diff = (batch_attention(layer, changed) - out).abs().sum(-1)  # [B, L]
    assert torch.all(diff[:, 4] > 0)  # every sample's token at position 4 sees it
    assert torch.all(diff[:, :4] == 0)  # other positions do not
    # Equivariant to permuting the batch.
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(batch_attention(layer, tokens[perm]), out[perm])


@pytest.mark.parametrize(
    "head,batchformer", [("dual", "shared"), ("dual", "separate"), ("transformer", "separate")]
)
def test_only_the_dual_head_couples_samples_and_only_in_training(head, batchformer):
    model = freeze_batch_norm(tiny("resnet14t", head, dropout=0.0, batchformer=batchformer))
    x = images(4)
    changed = x.clone()
    changed[3] = images(1, seed=9)[0]  # sample j = 3 changes
    with torch.no_grad():
        before, after = model(x), model(changed)
        diff = (after - before).abs().amax(-1)
        assert diff[3] > 0
        # Stream 1 (rows 0..B-1) never sees the other samples.
        assert torch.all(diff[:3] < 1e-6)
        if head == "dual":
            assert before.shape == (8, K) and model.num_streams == 2
            assert torch.all(diff[4:7] > 1e-4)  # stream 2 of samples 0..2 sees sample 3
        else:
            assert before.shape == (4, K) and model.num_streams == 1
        model.eval()
        eval_diff = (model(changed) - model(x)).abs().amax(-1)
    assert torch.all(eval_diff[:3] < 1e-6) and eval_diff[3] > 0


@pytest.mark.parametrize("batchformer", ["shared", "separate"])
def test_dual_equals_transformer_in_eval_and_in_its_first_stream(batchformer):
    dual = tiny("resnest14d", "dual", dropout=0.0, batchformer=batchformer)
    single = tiny("resnest14d", "transformer", dropout=0.0)
    single.load_state_dict(dual.deployed_state_dict())  # strict: the same deployed network
    if batchformer == "shared":  # the paper's reading adds no parameter at all
        assert dual.state_dict().keys() == single.state_dict().keys()
    x = images(3)
    with torch.no_grad():
        dual.eval(), single.eval()
        torch.testing.assert_close(dual(x), single(x), rtol=0, atol=1e-6)
        freeze_batch_norm(dual), freeze_batch_norm(single)
        torch.testing.assert_close(dual(x)[:3], single(x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- every variant

VARIANTS = [  # model.batchformer applies to the dual head only: the default elsewhere
    ("resnet", "transformer", "separate"),
    ("resnest", "transformer", "separate"),
    ("resnet", "dual", "shared"),
    ("resnest", "dual", "shared"),
    ("resnest", "dual", "separate"),
    ("resnet", "gap", "separate"),
]


@pytest.mark.parametrize("family,head,batchformer", VARIANTS)
def test_embedded_size_trains_every_parameter(family, head, batchformer):
    backbone = {"resnet": "resnet14t", "resnest": "resnest14d"}[family]
    model = tiny(backbone, head, batchformer=batchformer).train()
    x, targets = images(4), (torch.rand(4, K) < 0.4).float()
    logits = model(x)
    assert logits.shape == (4 * model.num_streams, K)
    AsymmetricLoss()(logits, targets.repeat(model.num_streams, 1)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    # Head parameters (incl. the separate BatchFormerV2 layer) all learn. In the backbone, timm
    # zero-initialises each residual block's last BN scale, which zeroes the gradient of the
    # layers before it at step 0; only the presence of a gradient is checked there.
    zero = [n for n, p in model.head.named_parameters() if not torch.any(p.grad != 0)]
    assert not zero, f"head parameters with an all-zero gradient: {zero[:5]}"
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, K) and model.num_streams == 1


def head_formula(d: int, ff: int, enc: int, dec: int, k: int) -> int:
    """Q2L head parameters without input projection, from the layer definitions."""
    attention = 4 * d * d + 4 * d  # q, k, v, out projections with biases
    ffn = d * ff + ff + ff * d + d
    layer = attention + ffn + 2 * 2 * d  # + two LayerNorms
    return (enc + dec) * layer + 2 * d + k * d + (k * d + k)  # dec. norm, queries, classifier


@pytest.mark.parametrize("backbone", ["resnet101", "resnest101e"])
@pytest.mark.parametrize(
    "head,batchformer",
    [("gap", "separate"), ("transformer", "separate"), ("dual", "shared"), ("dual", "separate")],
)
def test_paper_size_builds_with_expected_parameter_counts(backbone, head, batchformer):
    with torch.device("meta"):
        model = build_model(backbone, head, 80, batchformer=batchformer)
    counts = model.parameter_counts()
    if head == "gap":
        assert counts["head"] == 2048 * 80 + 80
    else:
        expected = head_formula(2048, 8192, 1, 2, 80)
        assert counts["head"] == expected
        assert abs(expected / 1e6 - 151) < 0.03 * 151  # Q2L's head: about 151 M
        assert isinstance(model.head.input_proj, nn.Identity)  # 2048 channels = d_model
    if backbone == "resnest101e":
        assert round(counts["backbone"] / 1e6, 1) == 46.2  # ResNeSt-101e without classifier
    branch = 6 * 2048 * 2048 + 10 * 2048 if batchformer == "separate" and head == "dual" else 0
    assert counts["batchformer"] == branch
    assert counts["total"] == counts["deployed"] + branch
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert model.deployed_parameter_count() == counts["backbone"] + counts["head"]


# --------------------------------------------------------------------------- batch of one


def test_training_batch_of_one():
    one = images(1)
    assert tiny("resnet14t", "dual").train().min_training_batch == 2
    assert tiny("resnest14d", "gap").train().min_training_batch == 2
    assert tiny("resnet14t", "transformer").train().min_training_batch == 1
    with pytest.raises(MlicError, match="at least 2 images"):
        tiny("resnet14t", "dual").train()(one)
    with pytest.raises(MlicError, match="split attention"):
        tiny("resnest14d", "transformer").train()(one)
    assert tiny("resnet14t", "transformer").train()(one).shape == (1, K)  # 2x2 map: fine
    with torch.no_grad():
        assert tiny("resnest14d", "dual").eval()(one).shape == (1, K)
        assert freeze_batch_norm(tiny("resnest14d", "gap"))(one).shape == (1, K)


# --------------------------------------------------------------------------- precision, layout


def test_channels_last_and_bf16_autocast():
    model = tiny("resnest14d", "dual").eval()
    x = images(2)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        last = model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(last, reference, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.1
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images(2).contiguous(memory_format=torch.channels_last))
    AsymmetricLoss()(logits, torch.ones(4, K)).backward()
    assert torch.isfinite(model.head.query_embed.weight.grad).all()


# --------------------------------------------------------------------------- cross-attention


def test_cross_attention_maps():
    model = tiny("resnet14t", "transformer").train()
    maps = model.cross_attention(images(2, size=96))
    assert maps.shape == (2, K, 3, 3)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(2, K))
    assert model.training  # mode restored
    with pytest.raises(MlicError, match="gap head"):
        tiny("resnet14t", "gap").cross_attention(images(1))


# --------------------------------------------------------------------------- weights


def test_local_weight_file_is_loaded(tmp_path):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("resnet10t")  # with its 1000-class classifier, as published
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet10t", "transformer", K, pretrained_file=str(path), **TINY)
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    assert model.head.input_proj.in_channels == 512  # projection to d_model 64


def test_weight_file_errors(tmp_path):
    import timm

    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth.*not found"):
        build_model("resnet10t", "gap", K, pretrained_file=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: cannot read"):
        build_model("resnet10t", "gap", K, pretrained_file=str(garbage))
    other = tmp_path / "resnet14t.pth"
    torch.save(timm.create_model("resnet14t").state_dict(), other)
    with pytest.raises(CheckpointError, match="resnet14t.pth") as info:
        build_model("resnet10t", "gap", K, pretrained_file=str(other))
    assert "\n" not in str(info.value)


def test_no_network_and_no_file_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MlicError, match="pretrained_file=PATH") as info:
        build_model("resnet10t", "gap", K, pretrained=True)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- configuration


def test_build_from_config_and_arch_round_trip():
    cfg = load_config("embedded").model
    model = build_model_from_config(cfg, num_classes=K)
    assert model.arch["backbone"] == cfg.backbone and model.arch["head"] == cfg.head
    assert model.arch["batchformer"] == cfg.batchformer
    rebuilt = build_model(**model.arch)
    assert rebuilt.arch == model.arch
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    import json

    assert json.loads(json.dumps(model.arch)) == model.arch


def test_bad_arguments_name_the_key():
    with pytest.raises(ConfigError, match="model.backbone='resnet_nope'"):
        build_model("resnet_nope", "gap", K)
    with pytest.raises(ConfigError, match="model.backbone_kwargs"):
        build_model("resnet10t", "gap", K, backbone_kwargs={"no_such_option": 1})
    with pytest.raises(ConfigError, match="num_classes=0"):
        build_model("resnet10t", "gap", 0)


# --------------------------------------------------------------------------- one set of rules


def _range_cases() -> list[tuple[dict, str]]:
    """A value just outside each end of every `model.*` range in the rule table."""
    cases = []
    for key, rule in RULES.items():
        if not key.startswith("model."):
            continue
        name = key.removeprefix("model.")
        if rule.low is not None:
            cases.append(({name: rule.low if rule.low_open else rule.low - 1}, key))
        if rule.high is not None:
            cases.append(({name: rule.high if rule.high_open else rule.high + 1}, key))
    return cases


# (model section values, the key the error names, the relation that breaks or None)
RELATION_CASES = [
    ({"backbone_kwargs": {"channels": [10**9]}}, "model.backbone_kwargs", "_backbone_kwargs_sizes"),
    ({"head": "dual", "num_encoder_layers": 0}, "model.num_encoder_layers",
     "_branch_follows_encoder_layer_0"),
    ({"head": "transformer", "d_model": 30, "nhead": 4}, "model.d_model", "_d_model_splits"),
    ({"head": "transformer", "d_model": 63, "nhead": 1}, "model.d_model", "_d_model_splits"),
    ({"head": "dual", "batchformer": "separate", "d_model": 66, "nhead": 2}, "model.d_model",
     "_d_model_splits"),
    ({"head": "transformer", "batchformer": "shared"}, "model.batchformer",
     "_batchformer_needs_dual"),
    ({"head": "gap", "batchformer": "shared"}, "model.batchformer", "_batchformer_needs_dual"),
]  # fmt: skip
CHOICE_AND_TYPE_CASES = [
    ({"head": "mlp"}, "model.head"),
    ({"batchformer": "both"}, "model.batchformer"),
    ({"d_model": 64.5}, "model.d_model"),
    ({"dropout": "lots"}, "model.dropout"),
    ({"pretrained": "yes"}, "model.pretrained"),
]
MODEL_CASES = [
    *[(values, key, None) for values, key in [*CHOICE_AND_TYPE_CASES, *_range_cases()]],
    *RELATION_CASES,
]


@pytest.mark.parametrize(("values", "key", "relation"), MODEL_CASES)
def test_a_config_and_a_direct_build_model_call_give_the_same_one_line_error(values, key, relation):
    preset = load_config("embedded")
    model = {**dataclasses.asdict(preset.model), "pretrained": False, **values}
    with pytest.raises(ConfigError) as from_config:
        load_config("embedded", {f"model.{k}": v for k, v in model.items()})
    with pytest.raises(ConfigError) as from_build:
        build_model(num_classes=K, **model)
    message = str(from_build.value)
    assert message.startswith(key) and "\n" not in message
    assert str(from_config.value) == f"preset embedded: {message}"
    if relation is not None:  # the named relation is the one that refused it
        check = {f.__name__: f for f in MODEL_RELATIONS}[relation]
        assert check(ModelConfig(**model)) == message


def test_every_model_rule_has_a_case():
    assert {r for *_, r in RELATION_CASES} == {f.__name__ for f in MODEL_RELATIONS}
    ranged = {key for _, key in _range_cases()}
    assert ranged == {k for k in RULES if k.startswith("model.")}
    choices = {key for _, key in CHOICE_AND_TYPE_CASES}
    literal_keys = {
        f"model.{name}"
        for name, hint in typing.get_type_hints(ModelConfig).items()
        if typing.get_origin(hint) is typing.Literal
    }
    assert literal_keys <= choices


def test_model_choices_and_bounds_are_defined_once():
    """The choices are the config's Literal types, the bounds and relations mlic.config_rules':
    the model code neither repeats a list of choices nor checks a model.* value itself."""
    hints = typing.get_type_hints(build_model)
    assert hints["head"] is HeadName and hints["batchformer"] is BatchFormerVariant
    for module_class in (QueryHead, TransformerEncoder):
        hint = typing.get_type_hints(module_class.__init__)["batchformer"]
        assert hint == BatchFormerVariant | None
    quoted = r"""['"]({})['"]"""
    repeated_choices = [
        re.compile(rf"{quoted.format('|'.join(choices))}\s*,\s*{quoted.format('|'.join(choices))}")
        for choices in (typing.get_args(HeadName), typing.get_args(BatchFormerVariant))
    ]
    # An error text naming a key whose rule is in the table, a relation or a Literal.
    ruled = [k.removeprefix("model.") for k in RULES if k.startswith("model.")]
    model_hints = typing.get_type_hints(ModelConfig)
    ruled += [n for n, h in model_hints.items() if typing.get_origin(h) is typing.Literal]
    model_key_error = re.compile(rf"""["']model\.({"|".join(ruled)})[= ]""")
    root = Path(mlic.__file__).parent
    for path in sorted(root.rglob("*.py")):
        if path.name in ("config.py", "config_rules.py"):
            continue
        text = path.read_text()
        assert "Literal[" not in text or path.parent.name != "models", path
        for pattern in repeated_choices:
            assert not pattern.search(text), f"{path}: a list of model choices"
    for path in sorted((root / "models").glob("*.py")):
        text = path.read_text()
        assert not model_key_error.search(text), f"{path} checks a model.* value itself"
        assert "raise ValueError" not in text or path.name == "position.py", path


def test_build_model_defaults_are_the_configuration_defaults():
    defaults = ModelConfig()
    for name, parameter in inspect.signature(build_model).parameters.items():
        if parameter.default is inspect.Parameter.empty or name == "pretrained":
            continue  # required, or off for a direct call (the config downloads weights)
        want = getattr(defaults, name)  # None stands for the empty "" / {} of the config
        assert parameter.default == want or (parameter.default is None and not want), name


def test_a_transformer_head_without_encoder_layers_trains_and_is_a_valid_config():
    # The disagreement between the rule table (>= 1) and build_model (0 allowed for the
    # non-dual heads) is settled by the model: the decoder attends to the projected tokens.
    cfg = load_config("embedded", ["model.head=transformer", "model.num_encoder_layers=0"])
    model = build_model_from_config(replace(cfg.model, pretrained=False), K).train()
    assert len(model.head.encoder.layers) == 0
    logits = model(images(3))
    AsymmetricLoss()(logits, (torch.rand(3, K) < 0.4).float()).backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in model.head.parameters())


def test_the_batch_rule_of_the_config_and_the_model_is_one_function():
    need, why = training_batch_minimum("dual")
    assert need == 2 and training_batch_minimum("transformer") == (1, "")
    for overrides in (["train.batch_size=1"], ["train.batch_size=4", "train.accumulation_steps=4"]):
        with pytest.raises(ConfigError, match=re.escape(why)) as info:
            load_config("embedded", ["model.head=dual", *overrides])
        assert "\n" not in str(info.value)
    with pytest.raises(MlicError, match=re.escape(why)):
        tiny("resnet14t", "dual").train()(images(1))
    pooled_why = training_batch_minimum("gap", pooled_batch_norm=True)[1]
    model = tiny("resnest14d", "gap").train()
    assert model.min_training_batch == 2
    with pytest.raises(MlicError, match=re.escape(pooled_why)):
        model(images(1))
