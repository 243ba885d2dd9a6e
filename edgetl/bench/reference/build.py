"""Regenerate the machine-state reference models (needs torch and litert-torch; not imported by edgetl):

    python -m edgetl.bench.reference.build

A fixed network of MobileNetV2's own blocks (the first 11 of torchvision's `mobilenet_v2(width_mult=0.35)`, then
global average pooling) with seeded random weights, at 1×3×160×160: the ops edge vision models spend their time in,
about 20 M MACs, small enough to time for a tenth of a second beside every model. Its values do not matter, only
that it stays the same file: baselines record its sha256.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
SIZE = 160


def network():
    import torch
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.mobilenet_v2(weights=None, width_mult=0.35).features[:11]
    return torch.nn.Sequential(features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def main() -> None:
    import litert_torch
    import torch

    net = network()
    example = torch.randn(1, 3, SIZE, SIZE)
    torch.onnx.export(net, example, HERE / "reference.onnx", input_names=["input"], output_names=["features"],
                      opset_version=17, dynamo=False)
    nhwc = litert_torch.to_channel_last_io(net, args=[0]).eval()
    litert_torch.convert(nhwc, (example.permute(0, 2, 3, 1).contiguous(),)).export(str(HERE / "reference.tflite"))
    for path in sorted(HERE.glob("reference.*")):
        print(path, path.stat().st_size)


if __name__ == "__main__":
    main()
