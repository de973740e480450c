"""export_onnx + check_onnx_parity: any module returning (logits, taps...) or a StudentOutput."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline.students.output import StudentOutput
from pipeline.teacher.export import OnnxExportError, OnnxParityError, check_onnx_parity, export_onnx
from pipeline.teacher.session import open_teacher


class TwoTaps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        conv = torch.relu(self.bn(self.conv(x)))
        embed = conv.flatten(1)
        return self.fc(embed), embed, conv


class AsStudent(TwoTaps):
    def forward(self, x):
        logits, embed, conv = super().forward(x)
        return StudentOutput(logits, {"conv": conv, "embed": embed})


@pytest.fixture
def batches():
    rng = np.random.default_rng(0)
    return [rng.random((b, 1, 4, 4), dtype=np.float32) for b in (1, 7, 33)]


def test_export_gives_one_file_with_named_outputs_and_a_dynamic_batch(tmp_path, batches):
    torch.manual_seed(0)
    module = TwoTaps().eval()
    path = export_onnx(module, torch.rand(2, 1, 4, 4), tmp_path / "m.onnx", ["logits", "embed", "conv"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no .onnx.data, no scratch
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["logits", "embed", "conv"]
    assert [i.name for i in model.graph.input] == ["input"]
    teacher = open_teacher(path, provider="cpu")  # the exported file is a valid teacher (chains)
    assert teacher.run(batches[1])["conv"].shape == (7, 4, 4, 4)
    report = check_onnx_parity(module, path, batches)
    assert report["passed"] and report["batch_sizes"] == [1, 7, 33]
    assert set(report["outputs"]) == {"logits", "embed", "conv"}
    assert all(o["max_abs_diff"] < 1e-5 for o in report["outputs"].values())


def test_a_student_output_is_exported_with_taps_in_the_named_order(tmp_path, batches):
    torch.manual_seed(0)
    module = AsStudent().eval()
    path = export_onnx(module, torch.rand(2, 1, 4, 4), tmp_path / "s.onnx", ["logits", "embed", "conv"])
    outputs = open_teacher(path, provider="cpu").run(batches[0])
    expected = module(torch.from_numpy(batches[0]))
    np.testing.assert_allclose(outputs["embed"], expected.features["embed"].detach().numpy(), atol=1e-5)
    assert check_onnx_parity(module, path, batches)["passed"]


def test_wrong_number_of_output_names_is_refused(tmp_path):
    with pytest.raises(OnnxExportError, match="returns 3 outputs but 2 names"):
        export_onnx(TwoTaps(), torch.rand(2, 1, 4, 4), tmp_path / "m.onnx", ["logits", "embed"])


def test_parity_failure_names_the_worst_output(tmp_path, batches):
    torch.manual_seed(0)
    module = TwoTaps().eval()
    path = export_onnx(module, torch.rand(2, 1, 4, 4), tmp_path / "m.onnx", ["logits", "embed", "conv"])
    with torch.no_grad():
        module.fc.bias += 1.0  # torch now differs from the exported file
    with pytest.raises(OnnxParityError, match="output 'logits'"):
        check_onnx_parity(module, path, batches)
    report = check_onnx_parity(module, path, batches, raise_on_mismatch=False)
    assert not report["passed"] and report["outputs"]["logits"]["max_abs_diff"] == pytest.approx(
        1.0, abs=1e-5
    )
