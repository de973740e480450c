"""export_onnx + check_onnx_parity: any module returning (logits, taps...) or a StudentOutput."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline.students.output import StudentOutput
from pipeline.teacher.export import (
    OnnxExportError,
    OnnxParityError,
    check_onnx_parity,
    compare_outputs,
    export_onnx,
    parity_batches,
)
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
    for stats in report["outputs"].values():  # the figures parity.json records, per output
        assert stats["passed"] and stats["max_abs_diff"] <= stats["tolerance"]
        assert stats["tolerance"] == pytest.approx(report["atol"] + report["rtol"] * stats["scale"])
        assert stats["relative_error"] < report["rtol"]


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
    with pytest.raises(OnnxParityError, match="output 'logits'.*tolerance"):
        check_onnx_parity(module, path, batches)
    report = check_onnx_parity(module, path, batches, raise_on_mismatch=False)
    assert not report["passed"] and report["outputs"]["logits"]["max_abs_diff"] == pytest.approx(
        1.0, rel=1e-4
    )
    assert report["outputs"]["embed"]["passed"] and not report["outputs"]["logits"]["passed"]


# --- the tolerance: scaled to each output, and still catching real mistakes --------------------------


def test_float32_noise_on_a_large_unnormalised_output_passes_where_an_elementwise_rule_fails():
    rng = np.random.default_rng(0)
    torch_side = (rng.random((64, 128)) * 300.0).astype(np.float32)  # an `embed` tap in the hundreds
    torch_side[:, :8] = 0.0  # with ReLU zeros
    noise = rng.standard_normal(torch_side.shape) * 3e-5  # 1e-7 of the scale: float32 summation noise
    onnx_side = (torch_side + noise).astype(np.float32)
    assert not np.allclose(onnx_side, torch_side, rtol=1e-4, atol=1e-5)  # the old elementwise rule
    stats = compare_outputs([torch_side], [onnx_side], rtol=1e-4, atol=1e-5)
    assert stats["passed"] and stats["scale"] == pytest.approx(float(np.abs(torch_side).max()))
    assert stats["relative_error"] < 1e-6


def test_an_error_confined_to_one_element_fails():
    torch_side = np.linspace(-5, 5, 640, dtype=np.float32).reshape(64, 10)
    onnx_side = torch_side.copy()
    onnx_side[3, 4] += 0.01  # 0.2% of the scale, in one element of 640
    stats = compare_outputs([torch_side], [onnx_side], rtol=1e-4, atol=1e-5)
    assert not stats["passed"] and stats["relative_error"] == pytest.approx(0.002, rel=1e-3)


def test_nan_in_an_onnx_output_fails():
    torch_side = np.ones((4, 3), np.float32)
    onnx_side = torch_side.copy()
    onnx_side[1, 1] = np.nan
    assert not compare_outputs([torch_side], [onnx_side], rtol=1e-4, atol=1e-5)["passed"]


def test_parity_batches_are_rows_of_the_data_in_the_sizes_asked():
    rows = np.arange(50 * 4, dtype=np.float32).reshape(50, 1, 2, 2)
    batches = parity_batches(rows, (1, 7, 64), seed=3)
    assert [b.shape for b in batches] == [(1, 1, 2, 2), (7, 1, 2, 2), (64, 1, 2, 2)]
    known = {r.tobytes() for r in rows}
    assert all(r.tobytes() in known for b in batches for r in b)
    assert len({r.tobytes() for r in batches[1]}) == 7  # distinct rows while the batch fits
    assert all(np.array_equal(a, b) for a, b in zip(batches, parity_batches(rows, (1, 7, 64), seed=3)))
    with pytest.raises(OnnxParityError, match="no input rows"):
        parity_batches(rows[:0], (1,))


class ForcedDropout(nn.Module):
    """A model whose dropout stays on in eval mode (F.dropout(training=True)): a layer left in
    train mode, exported as it is."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 5)

    def forward(self, x):
        hidden = nn.functional.dropout(torch.relu(self.fc1(x.flatten(1))), p=0.5, training=True)
        return self.fc2(hidden), hidden


def _digit_like_batches(seed=0):
    """Inputs shaped and scaled like the prepared digits (0..16 pixel values)."""
    rng = np.random.default_rng(seed)
    return parity_batches((rng.integers(0, 17, (200, 1, 4, 4))).astype(np.float32), (1, 7, 64), seed)


def test_a_dropout_layer_left_in_train_mode_fails_parity(tmp_path):
    torch.manual_seed(0)
    module = ForcedDropout()
    path = export_onnx(module, torch.rand(2, 1, 4, 4), tmp_path / "m.onnx", ["logits", "embed"])
    with pytest.raises(OnnxParityError, match="train mode"):
        check_onnx_parity(module, path, _digit_like_batches())


class ForcedBatchNorm(TwoTaps):
    """Batch norm called with batch statistics whatever the mode (training=True hard-coded)."""

    def forward(self, x):
        bn = self.bn
        conv = nn.functional.batch_norm(
            self.conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, training=True
        )
        embed = torch.relu(conv).flatten(1)
        return self.fc(embed), embed, conv


def test_a_batch_norm_left_in_train_mode_fails_parity(tmp_path):
    torch.manual_seed(0)
    trained = TwoTaps().eval()  # the model as trained: batch norm on its running statistics
    exported = ForcedBatchNorm().eval()
    exported.load_state_dict(trained.state_dict())  # the same weights, exported with batch statistics
    path = export_onnx(exported, torch.rand(2, 1, 4, 4), tmp_path / "m.onnx", ["logits", "embed", "conv"])
    with pytest.raises(OnnxParityError):
        check_onnx_parity(trained, path, _digit_like_batches())


def test_a_wrong_op_in_the_exported_graph_fails_parity(tmp_path):
    torch.manual_seed(0)
    module = TwoTaps().eval()
    path = export_onnx(module, torch.rand(2, 1, 4, 4), tmp_path / "m.onnx", ["logits", "embed", "conv"])
    model = onnx.load(str(path))
    relu = next(node for node in model.graph.node if node.op_type == "Relu")
    relu.op_type = "LeakyRelu"  # a subtly wrong op: negative inputs leak 1%
    relu.attribute.append(onnx.helper.make_attribute("alpha", 0.01))
    onnx.save(model, str(path))
    report = check_onnx_parity(module, path, _digit_like_batches(), raise_on_mismatch=False)
    assert not report["passed"]
    assert not report["outputs"]["conv"]["passed"] and report["outputs"]["conv"]["relative_error"] > 1e-3
