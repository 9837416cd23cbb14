"""`mlic export`: ONNX Runtime and TorchScript give PyTorch's scores, the batch size is dynamic,
the spec beside the model is complete, and a wrong input is refused in one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlic.cli import main
from mlic.export import ExportedModel, ExportError, deployed_network, export_run, spec_path
from mlic.inference import load_trained
from mlic.models import build_model

# float32 through two runtimes: the measured difference is ~1e-7; allow 1e-5 absolute.
ATOL = 1e-5


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    onnx_path, _ = export_run(tiny_run, fmt="onnx", out=out / "model.onnx")
    ts_path, _ = export_run(tiny_run, fmt="torchscript", out=out / "model.torchscript.pt")
    return onnx_path, ts_path


def _pytorch_scores(trained, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(trained.model(images)).numpy()


@pytest.mark.parametrize("which", [0, 1], ids=["onnx", "torchscript"])
def test_exported_scores_equal_pytorch(tiny_run, exported, which):
    trained = load_trained(tiny_run, device="cpu")
    model = ExportedModel(exported[which])
    assert model.class_names == trained.class_names
    for batch in (1, 3):  # the batch size is dynamic
        images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        got = model.scores(images)
        assert got.shape == (batch, len(trained.class_names))
        np.testing.assert_allclose(got, _pytorch_scores(trained, images), rtol=0, atol=ATOL)


def test_spec_says_how_to_feed_the_model(tiny_run, exported):
    spec = json.loads(spec_path(exported[0]).read_text())
    trained = load_trained(tiny_run, device="cpu")
    assert spec["input"]["shape"] == ["batch", 3, 32, 32]
    assert spec["input"]["channel_order"] == "RGB" and spec["input"]["dtype"] == "float32"
    assert spec["input"]["mean"] == trained.cfg.data.mean
    assert spec["class_names"] == trained.class_names
    assert "not a softmax" in spec["output"]["meaning"]
    assert set(spec["tuned_thresholds"]["thresholds"]) == set(trained.class_names)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_wrong_input_is_refused_with_a_clear_message(exported):
    import onnxruntime as ort

    onnx_path, ts_path = exported
    wrong = np.zeros((1, 3, 48, 48), dtype=np.float32)
    for path in (onnx_path, ts_path):
        with pytest.raises(ExportError) as info:
            ExportedModel(path).scores(wrong)
        message = str(info.value)
        assert "\n" not in message
        assert "expects images of shape ['N', 3, 32, 32]" in message and "[1, 3, 48, 48]" in message
    with pytest.raises(ExportError, match="float32"):
        ExportedModel(onnx_path).scores(wrong[:, :, :32, :32].astype(np.float64))
    # Without mlic's check, the files refuse it themselves - an exception, not a crash:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with pytest.raises(
        Exception, match=r"(?s)Got invalid dimensions for input: images.*Expected: 32"
    ):
        session.run(None, {"images": wrong})
    scripted = torch.jit.load(str(ts_path))
    with pytest.raises(Exception, match=r"expected float32 images \[N, 3, 32, 32\]"):
        scripted(torch.from_numpy(wrong))


def test_deployed_network_has_no_batchformer_layer():
    model = build_model(
        "resnet10t", "dual", 5, d_model=32, nhead=4, dim_feedforward=64, batchformer="separate"
    ).eval()
    net = deployed_network(model)
    assert sum(p.numel() for p in net.parameters()) == model.deployed_parameter_count()
    assert model.parameter_counts()["batchformer"] > 0
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(images), model(images))


def test_cli_export_and_its_bad_inputs(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    cases = [
        ([str(tmp_path / "norun")], "no such checkpoint"),
        ([str(tiny_run), "--image-size", "16"], "stride 32"),
        ([str(tiny_run), "--out", str(tmp_path)], "is a folder"),
    ]
    for args, needle in cases:
        code = main(["export", *args, *([] if "--out" in args else ["--out", str(out)])])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("mlic: error:") and needle in err[0], err
        assert not out.exists() and not list(tmp_path.glob(".m.onnx*"))
    assert main(["export", str(tiny_run), "--format", "torchscript", "--image-size", "64",
                 "--out", str(tmp_path / "m64.pt")]) == 0  # fmt: skip
    spec = json.loads((tmp_path / "m64.pt.json").read_text())
    assert spec["input"]["shape"] == ["batch", 3, 64, 64]
    assert (
        ExportedModel(tmp_path / "m64.pt").scores(np.zeros((2, 3, 64, 64), np.float32)).shape[0]
        == 2
    )
