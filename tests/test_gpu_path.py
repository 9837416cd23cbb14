"""The GPU path's options, checked on the CPU: activation checkpointing, gradient
accumulation, the CUDA defaults (resolved for a 'cuda' device that is never run on), and the
fall-back to eager when torch.compile fails."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from mlic.compilation import Compiler, resolve_compile
from mlic.config import load_config, preset_names
from mlic.distributed import DistInfo
from mlic.engine import training_step
from mlic.errors import MlicError
from mlic.fit import fit
from mlic.losses import AsymmetricLoss
from mlic.models import build_model
from mlic.optim import build_ema
from mlic.runtime import Runtime, make_runtime

CPU = Runtime(torch.device("cpu"), DistInfo(), None, False)


def _tiny(head: str = "dual", backbone: str = "resnest14d", dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"channels": [16, 32, 64, 128]} if backbone.startswith("resnest") else {}
    return build_model(backbone, head, 6, d_model=32, dim_feedforward=64, dropout=dropout,
                       backbone_kwargs=kwargs).train()  # fmt: skip


def _batch(n: int = 8, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g), (torch.rand(n, 6, generator=g) < 0.3).float()


def _loss_and_grads(model: nn.Module, images, targets) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(2)  # the same dropout masks for both models
    logits = model(images)
    loss = AsymmetricLoss()(logits, targets.repeat(logits.shape[0] // targets.shape[0], 1))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model: nn.Module, images) -> int:
    """Bytes of the activations autograd keeps for the backward pass."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images)
    return total


@pytest.mark.parametrize("which", ["backbone", "head", "all"])
def test_activation_checkpointing_leaves_loss_and_gradients_unchanged(which):
    """Tolerance: 1e-6 absolute (fp32; on this CPU they came out bit-identical). Dropout is on:
    the recomputation restores the RNG state, so it draws the same masks."""
    plain = _tiny()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(
        backbone=which in ("backbone", "all"), head=which in ("head", "all")
    )
    images, targets = _batch()
    loss_a, grads_a = _loss_and_grads(plain, images, targets)
    loss_b, grads_b = _loss_and_grads(ckpt, images, targets)
    assert torch.allclose(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 50
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=0, atol=1e-6), name
    # ... and it does checkpoint: autograd keeps fewer activations.
    assert _saved_bytes(ckpt, images) < _saved_bytes(plain, images)


def test_checkpointing_is_inactive_in_evaluation():
    model = _tiny()
    model.set_grad_checkpointing(True, True)
    model.eval()
    with torch.no_grad():
        assert model(_batch(3)[0]).shape == (3, 6)


def _step_with(model: nn.Module, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, targets = _batch(12)
    loss = training_step(model, AsymmetricLoss(), optimizer, images, targets, CPU,
                         accumulation_steps=k)  # fmt: skip
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, {
        "grads": grads,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
    }


@pytest.mark.parametrize("k", [2, 3, 5])
def test_accumulation_over_micro_batches_equals_one_big_batch(k):
    """No batch-dependent layer: the Query2Label head without the BatchFormerV2 stream, the
    backbone's BatchNorm in eval mode, no dropout. k=5 splits 12 images unevenly (3,3,2,2,2):
    each micro-batch's loss is weighted by its share of the images. Tolerance 1e-5 relative."""
    big = _tiny(head="transformer", backbone="resnet10t", dropout=0.0)
    big.backbone.eval()
    small = copy.deepcopy(big)
    loss_big, big_state = _step_with(big, 1)
    loss_small, small_state = _step_with(small, k)
    assert torch.allclose(loss_big, loss_small, rtol=1e-5, atol=0)
    for part in ("grads", "params"):
        for name, value in big_state[part].items():
            assert torch.allclose(value, small_state[part][name], rtol=1e-5, atol=1e-7), name
    # The step did move the weights (the comparison is not of two untouched models).
    before = dict(_tiny(head="transformer", backbone="resnet10t", dropout=0.0).named_parameters())
    assert any(not torch.equal(v, before[n]) for n, v in big_state["params"].items())


def test_the_batch_attention_sees_only_the_micro_batch():
    """The dual head is batch-dependent: accumulation changes its gradients (hence the note in
    docs/performance.md and metrics.json's micro_batch_size)."""
    big = _tiny(dropout=0.0)
    big.backbone.eval()
    small = copy.deepcopy(big)
    _, big_state = _step_with(big, 1)
    _, small_state = _step_with(small, 2)
    diffs = [
        (big_state["grads"][n] - small_state["grads"][n]).abs().max() for n in big_state["grads"]
    ]
    assert max(diffs) > 1e-4


def test_cuda_defaults_resolve_without_a_gpu(monkeypatch):
    assert resolve_compile("auto", "cuda") is True and resolve_compile("auto", "cuda:1") is True
    assert resolve_compile("auto", torch.device("cpu")) is False
    assert resolve_compile(False, "cuda") is False and resolve_compile(True, "cpu") is True
    for name in preset_names():
        assert load_config(name).train.compile == "auto", name
    # The engine's runtime for a (fake) CUDA device: bf16, channels_last, compiled. make_runtime
    # sets global CUDA flags (TF32, cudnn.benchmark); they are restored afterwards.
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)  # fmt: skip
    try:
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            rt = make_runtime(load_config("paper-coco-448"))
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = flags  # fmt: skip
    assert rt.device.type == "cuda" and rt.amp_dtype == torch.bfloat16 and rt.channels_last
    assert rt.compiler.enabled and rt.compiler.compiled
    rt = make_runtime(load_config("paper-coco-448", ["train.device=cpu"]))
    assert rt.amp_dtype is None and not rt.channels_last and not rt.compiler.enabled


class _Raises(nn.Module):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def forward(self, *args, **kwargs):
        raise self.exc


def test_a_compile_error_at_torch_compile_falls_back_with_one_warning(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", broken)
    compiler = Compiler(True)
    model = nn.Linear(3, 2)
    wrapped = compiler.wrap(model)
    x = torch.ones(1, 3)
    assert torch.equal(compiler.run(wrapped, lambda m, v: m(v), x), model(x))
    assert not compiler.compiled and "Windows not yet supported" in compiler.fallback_reason
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch.compile failed, running eagerly" in err


def test_a_failure_at_the_first_call_falls_back_and_later_errors_propagate(monkeypatch, capsys):
    monkeypatch.setattr(torch, "compile", lambda m, **kw: _Raises(RuntimeError("triton: no GPU")))
    compiler = Compiler(True)
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    first, second = compiler.wrap(model), compiler.wrap(other)
    assert compiler.wrap(model) is first  # one compiled twin per module
    x = torch.ones(1, 3)
    assert torch.equal(compiler.run(first, lambda m, v: m(v), x), model(x))
    assert compiler.run(second, lambda m, v: m(v), x).shape == (1, 2)  # eager too, no 2nd warning
    assert capsys.readouterr().err.count("torch.compile failed") == 1
    assert compiler.fallback_reason == "RuntimeError: triton: no GPU"


@pytest.mark.parametrize("exc", [MlicError("batch of one"), torch.OutOfMemoryError("OOM")])
def test_user_errors_and_out_of_memory_are_not_taken_for_compile_errors(monkeypatch, exc):
    monkeypatch.setattr(torch, "compile", lambda m, **kw: _Raises(exc))
    compiler = Compiler(True)
    wrapped = compiler.wrap(nn.Linear(3, 2))
    with pytest.raises(type(exc)):
        compiler.run(wrapped, lambda m, v: m(v), torch.ones(1, 3))
    assert compiler.compiled


def test_after_a_compiled_call_succeeded_only_compiler_errors_fall_back(monkeypatch):
    model = nn.Linear(3, 2)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)  # "compiles" to itself
    compiler = Compiler(True)
    wrapped = compiler.wrap(model)
    compiler.run(wrapped, lambda m, v: m(v), torch.ones(1, 3))
    with pytest.raises(ValueError, match="a bug"):  # eager would fail the same way
        compiler.run(wrapped, lambda m, v: (_ for _ in ()).throw(ValueError("a bug")), None)
    assert compiler.compiled
    calls = []

    def recompile_fails(m, v):  # a later recompilation (a new shape) raises Dynamo's error
        calls.append(m)
        if len(calls) == 1:
            raise torch._dynamo.exc.Unsupported("graph break in a recompile")
        return m(v)

    assert compiler.run(wrapped, recompile_fails, torch.ones(1, 3)).shape == (1, 2)
    assert len(calls) == 2 and not compiler.compiled
    assert "Unsupported" in compiler.fallback_reason


def test_fit_falls_back_to_eager_and_records_it(tiny_embedded_root, tmp_path, monkeypatch, capsys):
    """train.compile=true on the CPU with a compiler that fails at the first call: the run trains
    eagerly, warns once, and metrics.json says which path ran and the memory plan."""
    monkeypatch.setattr(torch, "compile", lambda m, **kw: _Raises(RuntimeError("inductor broke")))
    cfg = load_config("embedded", [
        "data.image_size=32", "data.num_workers=0", "data.max_train_images=32",
        "data.max_val_images=16", "model.d_model=32", "model.dim_feedforward=64",
        "train.batch_size=8", "train.eval_batch_size=16", "train.epochs=1",
        f"data.embedded_root={tiny_embedded_root}", "train.compile=true",
        "train.accumulation_steps=2", "train.activation_checkpointing=all",
        "train.log_iteration_loss=true",
    ])  # fmt: skip
    metrics = fit(cfg, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1, err
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == metrics
    assert saved["compiled"] is False and "inductor broke" in saved["compile_fallback_reason"]
    assert saved["accumulation_steps"] == 2 and saved["micro_batch_size"] == 4
    assert saved["effective_batch_size"] == 8 and saved["activation_checkpointing"] == "all"
    # One scheduler step per optimizer step: 32 images / 8 = 4 iterations, not 8 micro-batches.
    iterations = (tmp_path / "run" / "iterations.csv").read_text().strip().splitlines()
    assert len(iterations) == 1 + 4


def test_a_run_without_compilation_records_eager(tiny_embedded_root, tmp_path):
    cfg = load_config("embedded", [
        "data.image_size=32", "data.num_workers=0", "data.max_train_images=16",
        "data.max_val_images=16", "model.d_model=32", "model.dim_feedforward=64",
        "train.batch_size=8", "train.eval_batch_size=16", "train.epochs=1",
        f"data.embedded_root={tiny_embedded_root}",
    ])  # fmt: skip
    metrics = fit(cfg, tmp_path / "run", progress=False)  # train.compile=auto on the CPU: eager
    assert metrics["compiled"] is False and metrics["compile_fallback_reason"] == ""
    assert metrics["micro_batch_size"] == metrics["effective_batch_size"] == 8


def test_the_ema_update_equals_timm_model_ema_v3():
    from timm.utils import ModelEmaV3

    model = _tiny()
    cfg = load_config("embedded", ["train.ema_decay=0.9"])
    ours, timm_ema = build_ema(model, cfg), ModelEmaV3(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(_batch(4)[0])  # BatchNorm statistics and counters move too
        ours.update(model)
        timm_ema.update(model)
    a, b = ours.module.state_dict(), timm_ema.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["backbone.conv1.1.running_mean"], model.state_dict()["backbone.conv1.1.running_mean"]
    )


@pytest.mark.parametrize(("name", "k", "ckpt"), [("paper-coco-448-24gb", 2, "none"),
                                                 ("paper-coco-448-8gb", 4, "all")])  # fmt: skip
def test_the_memory_presets_are_the_paper_preset_in_micro_batches(name, k, ckpt):
    """Only the memory plan differs from paper-coco-448: the optimizer batch, lr and schedule
    are the paper preset's (`extends`), so a later change to it reaches these too."""
    paper, small = load_config("paper-coco-448"), load_config(name)
    assert small.train.accumulation_steps == k and small.train.activation_checkpointing == ckpt
    assert small.model == paper.model and small.data == paper.data and small.loss == paper.loss
    differs = {f for f in vars(paper.train) if getattr(paper.train, f) != getattr(small.train, f)}
    assert differs == {"accumulation_steps", "activation_checkpointing"} - (
        {"activation_checkpointing"} if ckpt == "none" else set()
    )
    assert small.train.batch_size // k >= 2  # each micro-batch can train the dual head


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.compile=maybe", "train.compile"),
        ("train.activation_checkpointing=some", "train.activation_checkpointing"),
        ("train.accumulation_steps=0", "train.accumulation_steps"),
        ("train.accumulation_steps=3", "train.accumulation_steps"),  # 32 images do not split
        ("train.accumulation_steps=32", "train.accumulation_steps"),  # micro-batches of 1: dual
    ],
)
def test_bad_gpu_path_settings_are_one_line_errors_naming_the_key(override, named):
    from mlic.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config("embedded", [override])
    assert named in str(info.value) and "\n" not in str(info.value)
