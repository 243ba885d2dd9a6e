"""Compression building blocks on tiny models: the KD loss, Torch-Pruning to a MACs target, pruned-model files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgetl.backbones import create_model
from edgetl.compress.distill import Distiller, kd_loss
from edgetl.compress.prune import (
    PruneError,
    PrunePlan,
    apply_structure,
    count_macs_params,
    prune_to_macs,
    residual_layers,
    structure_of,
)
from edgetl.errors import RecipeError
from edgetl.preprocess import Preprocessing
from edgetl.recipe import parse_recipe


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_kd_loss_matches_a_hand_computed_value():
    student, teacher, label, T, alpha = [1.0, 2.0, 0.5], [3.0, 0.0, 1.0], 0, 2.0, 0.6
    p_teacher, p_student = _softmax(np.array(teacher) / T), _softmax(np.array(student) / T)
    kl = float(np.sum(p_teacher * (np.log(p_teacher) - np.log(p_student))))
    cross_entropy = -math.log(_softmax(np.array(student))[label])
    expected = (1 - alpha) * cross_entropy + alpha * T * T * kl
    got = kd_loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([label]), T, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # alpha 0 is plain cross-entropy; a student equal to its teacher has no KD term
    assert kd_loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([label]), T, 0.0).item() == \
        pytest.approx(cross_entropy, rel=1e-6)
    same = kd_loss(torch.tensor([teacher]), torch.tensor([teacher]), torch.tensor([label]), T, 1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_online_teacher_sees_the_batch_in_its_own_normalisation():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.mean(dim=(2, 3))

    student = Preprocessing(resize=36, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    teacher = Preprocessing(resize=36, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pixels = torch.rand(2, 3, 4, 4)
    as_student = (pixels - torch.tensor(student.mean).view(1, 3, 1, 1)) / torch.tensor(student.std).view(1, 3, 1, 1)
    distiller = Distiller.online(Probe(), student, teacher, temperature=2.0, alpha=0.5)
    distiller.targets(as_student, torch.arange(2))
    assert torch.allclose(seen[0], (pixels - 0.5) / 0.5, atol=1e-5)


def test_precomputed_targets_are_looked_up_by_train_index():
    logits = np.arange(12, dtype=np.float32).reshape(6, 2)
    distiller = Distiller.from_logits(logits, temperature=1.0, alpha=1.0)
    assert distiller.targets(torch.zeros(2, 3, 4, 4), torch.tensor([4, 1])).tolist() == [[8, 9], [2, 3]]


@pytest.mark.parametrize(("backbone", "scope", "importance"), [("mobilenet_v2", "uniform", "magnitude"),
                                                                ("efficientnet_lite0", "global", "taylor")])
def test_pruning_reaches_the_macs_target_and_keeps_the_classifier(backbone, scope, importance):
    torch.manual_seed(0)
    created = create_model(backbone, 3, "none")
    model, example = created.model.eval(), torch.randn(1, 3, 64, 64)
    macs, params = count_macs_params(model, example)

    def gradients(module):
        module(torch.randn(4, 3, 64, 64)).logsumexp(1).mean().backward()

    steps = []
    pruned = prune_to_macs(model, example, created.backbone.head, PrunePlan(0.5, importance, scope, steps=2),
                           gradients, between_steps=lambda m, step: steps.append(step))
    pruned_macs, pruned_params = count_macs_params(pruned, example)
    assert pruned_macs <= 0.5 * macs and pruned_macs > 0.35 * macs  # close to the target, not far below
    assert pruned_params < params
    assert steps == [1]
    assert pruned(example).shape == (1, 3)
    assert pruned.get_submodule(created.backbone.head).out_features == 3
    assert count_macs_params(model, example)[0] == macs  # the input model is left as it was


def test_residual_keep_prunes_only_the_blocks_inner_channels():
    model = create_model("mobilenet_v2", 2, "none").model.eval()
    example = torch.randn(1, 3, 64, 64)
    names = {module: name for name, module in model.named_modules()}
    # MobileNetV2's residual adds join the projection convs of blocks 2-16 with the stage's first projection.
    assert sorted(names[m] for m in residual_layers(model, example)) == sorted(
        f"features.{i}.conv.2" for i in range(2, 17))

    def widths(m):
        return {name: c.out_channels for name, c in m.named_modules() if isinstance(c, torch.nn.Conv2d)}

    before = widths(model)
    kept = widths(prune_to_macs(model, example, "classifier.1", PrunePlan(0.5, residual="keep", steps=1)))
    pruned = widths(prune_to_macs(model, example, "classifier.1", PrunePlan(0.5, residual="prune", steps=1)))
    projections = [f"features.{i}.conv.2" for i in range(2, 17)]
    assert all(kept[n] == before[n] for n in projections)
    assert kept["features.2.conv.0.0"] < before["features.2.conv.0.0"]  # an expansion conv lost channels
    assert any(pruned[n] < before[n] for n in projections)


def test_pruned_structure_rebuilds_an_identical_model():
    created = create_model("mobilenet_v2", 2, "none")
    example = torch.randn(1, 3, 32, 32)
    pruned = prune_to_macs(created.model.eval(), example, created.backbone.head, PrunePlan(0.5, steps=1)).eval()
    structure = structure_of(pruned)
    assert all(isinstance(v, int) for shape in structure.values() for v in shape.values())  # weights_only-safe
    rebuilt = apply_structure(create_model("mobilenet_v2", 2, "none").model, structure).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(rebuilt(example), pruned(example))


def test_an_unreachable_macs_target_is_a_clear_error():
    created = create_model("mobilenet_v2", 2, "none")
    with pytest.raises(PruneError, match="max_layer_ratio"):
        prune_to_macs(created.model.eval(), torch.randn(1, 3, 32, 32), created.backbone.head,
                      PrunePlan(0.02, steps=1, max_layer_ratio=0.3))


@pytest.mark.parametrize(("extra", "message"), [
    ({"distill": {"teacher": {"backbone": "efficientnet_lite0", "train": {"epoch": 2}}}},
     "distill.teacher.train.epoch: unknown key; did you mean 'epochs'"),
    ({"distill": {"teacher": {"backbone": "efficientnet_lite0", "checkpoint": "m.pt"}}}, "exactly one of"),
    ({"prune": {"target_macs": 0.5, "recover": {"epoch": 2}}}, "prune.recover.epoch: unknown key; did you mean"),
    ({"prune": {"target_macs": 1.5}}, "prune.target_macs"),
    ({"quantize": {"mode": "qat"}, "export": {"precisions": ["fp32"]}}, "no `int8`"),
    ({"quantize": {"teacher": "float"}}, "quantize.teacher applies to quantization-aware training only"),
    ({"quantize": {"mode": "qat", "distill": False, "alpha": 0.5}, "export": {"precisions": ["int8"]}},
     "quantize.temperature/alpha set with quantize.distill false"),
])
def test_compression_recipe_errors_name_the_field(extra, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        parse_recipe({"name": "x", "data": {"path": "."}, **extra}, "r.yaml")


def test_recipe_paths_expand_torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    recipe = parse_recipe({"name": "x", "data": {"path": "."}, "model": {"weights": "$TORCH_HOME/w.pth"}}, "r.yaml")
    assert recipe.resolve_path(recipe.model.weights) == tmp_path / "w.pth"


def test_mixup_kd_targets_are_the_mixed_teacher_distributions():
    # precomputed logits: the target of λ·x_i + (1 − λ)·x_j is λ·p_i + (1 − λ)·p_j at the KD temperature
    teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    student = torch.tensor([[0.5, 0.1], [0.2, 0.3], [-1.0, 1.0]])
    labels, indices, perm, lam, t = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1]), 0.7, 2.0
    loss = Distiller.from_logits(teacher.numpy(), t, alpha=1.0).loss(student, student, indices, labels, 0.0,
                                                                      (lam, perm))
    p = lam * torch.softmax(teacher / t, 1) + (1 - lam) * torch.softmax(teacher[perm] / t, 1)
    q = torch.log_softmax(student / t, 1)
    expected = t ** 2 * (p * (p.log() - q)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the hard part follows both labels by λ and 1 − λ
    hard = Distiller.from_logits(teacher.numpy(), t, alpha=0.0).loss(student, student, indices, labels, 0.0,
                                                                     (lam, perm))
    ce = torch.nn.functional.cross_entropy
    assert hard.item() == pytest.approx(lam * ce(student, labels).item() + (1 - lam) * ce(student, labels[perm]).item())


def test_similarity_kd_compares_how_images_relate_not_feature_widths():
    from edgetl.compress.distill import similarity_loss

    teacher = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
    narrower = teacher @ q[:, :16] @ q[:, :16].T @ q  # another basis ...
    assert similarity_loss(teacher @ q, teacher).item() == pytest.approx(0.0, abs=1e-10)  # same relations: 0
    assert similarity_loss(torch.cat([teacher, teacher], 1), teacher).item() == pytest.approx(0.0, abs=1e-10)
    assert similarity_loss(narrower, teacher).item() > 1e-4  # ... that lost half the directions: relations differ
    # the hand-computed value for two images
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g_s = torch.tensor([[1.0, 1.0], [1.0, 2.0]]) / torch.tensor([[2 ** 0.5], [5 ** 0.5]])
    g_t = torch.eye(2)
    assert similarity_loss(s, t).item() == pytest.approx(((g_s - g_t) ** 2).sum().item() / 4, rel=1e-6)


def test_qat_fake_quant_model_is_the_int8_model_it_exports(tmp_path):
    """The fake-quantized model QAT trains and evaluates computes what its converted int8 graph and the ONNX file
    compute (ranges set by calibration and frozen, weight scales by the same formula convert uses), and evaluating
    it moves no quantization range."""
    import onnxruntime as ort

    from edgetl.compress.qat import calibrate, convert, export_onnx, prepare_qat

    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 2, "none").model.train()
    with torch.no_grad():  # batch norm statistics of real activations, so that folding them matters
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    data = torch.randn(64, 3, 32, 32)
    prepared = prepare_qat(model.eval(), data[:2])
    assert calibrate(prepared, [data[:16], data[16:32]]) > 10
    prepared.eval()
    trained_weights: list[torch.Tensor] = []  # what each weight fake-quantizer hands its conv/linear
    for module in prepared.modules():
        if getattr(module, "is_per_channel", False):
            module.register_forward_hook(lambda m, i, out: trained_weights.append(out.detach().clone()))
    held_out = data[32:]
    with torch.no_grad():
        fake_quant = prepared(held_out)
        prepared(8 * held_out)  # far outside the calibrated ranges: a live observer would widen them
        torch.testing.assert_close(prepared(held_out), fake_quant, rtol=0, atol=0)
        converted = convert(prepared)
        int8 = converted(held_out)
    exported_weights: list[torch.Tensor] = []

    class Weights(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if "dequantize_per_channel" in str(node.target):
                exported_weights.append(out)
            return out

    with torch.no_grad():
        Weights(converted).run(held_out[:2])
    # The same weights (torch's fused observer/fake-quant op, used before, computed weight scales with another
    # formula than convert: one int8 step apart in whole channels). Only a value that lands exactly on a rounding
    # tie may come out one step apart (1 of 153,600 with this stack's wheels); a formula change moves thousands.
    n = len(exported_weights)
    assert n > 10 and len(trained_weights) == 3 * n
    total = mismatched = 0
    for trained, exported in zip(trained_weights[:n], exported_weights, strict=True):
        assert exported.shape == trained.shape
        differ = exported != trained
        total, mismatched = total + trained.numel(), mismatched + int(differ.sum())
        if differ.any():
            step = trained.abs().amax(dim=tuple(range(1, trained.dim())), keepdim=True) / 63  # 7-bit weights
            assert bool(((exported - trained).abs() <= 1.01 * step)[differ].all())  # one step at most
    assert total > 100_000 and mismatched <= total // 10_000, (mismatched, total)
    spread = float(fake_quant.max() - fake_quant.min())
    assert spread > 0
    assert float((int8 - fake_quant).abs().max()) < 0.05 * spread
    export_onnx(converted, held_out.numpy(), tmp_path / "qat.onnx")
    session = ort.InferenceSession(str(tmp_path / "qat.onnx"), providers=["CPUExecutionProvider"])
    onnx_int8 = session.run(None, {"input": held_out.numpy()})[0]
    assert float(np.abs(onnx_int8 - fake_quant.numpy()).max()) < 0.1 * spread


def test_qat_skips_only_the_conv_bn_passes_of_kinds_the_graph_lacks(monkeypatch):
    """torchao fuses/folds conv + batch norm for four kinds of convolution, at ~20 s a kind here; the kinds a graph
    has no node of are skipped (an equivalence measured on EfficientNet-Lite0 and MobileNetV3-Small: the same graph
    code and bit-identical outputs, 40 s → 9.5 s convert). A generic aten.convolution, of no known kind, runs all."""
    import torch.nn.functional as F
    from torchao.quantization.pt2e import qat_utils

    from edgetl.compress.qat import _conv_bn_patterns_of_this_graph

    ran: list = []
    for name in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper"):
        monkeypatch.setattr(qat_utils, name, lambda m, conv_fn, *a, name=name, **k: ran.append((name, conv_fn)) or m)
    fake = qat_utils._fold_conv_bn_qat_helper

    class TwoKinds(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.up = torch.nn.Conv2d(3, 4, 3), torch.nn.ConvTranspose1d(4, 2, 3)

        def forward(self, x):
            return self.up(self.conv(x).mean(dim=3))

    def generic(x, w):
        return torch.ops.aten.convolution(x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)

    kinds = (F.conv1d, F.conv2d, F.conv_transpose1d, F.conv_transpose2d)
    graphs = {"two kinds": torch.export.export(TwoKinds(), (torch.randn(1, 3, 8, 8),)).module(),
              "generic": torch.fx.symbolic_trace(generic)}
    for label, expected in (("two kinds", [F.conv2d, F.conv_transpose1d]), ("generic", list(kinds))):
        ran.clear()
        with _conv_bn_patterns_of_this_graph():
            for helper in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper"):
                for conv_fn in kinds:
                    assert getattr(qat_utils, helper)(graphs[label], conv_fn, (), is_cuda=False) is graphs[label]
        assert ran == [(h, f) for h in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper") for f in expected], label
    assert qat_utils._fold_conv_bn_qat_helper is fake  # put back afterwards
