"""Hardware efficiency of a training step: achieved GFLOP/s of the faithful U and Link networks versus the
machine's own large fp32 matmul.

A training step is what tatl's engine does per batch: forward, loss (Eq. 1), backward, SGD step with momentum,
fp32, channels_last, the paper-faithful EfficientNet-b0 U-Net and Linknet (`build_model(shape,
"paper-efficientnet-b0", None)`), random images and masks (no data loading). FLOPs are counted once with
torch.utils.flop_counter.FlopCounterMode: convolutions and matrix products of forward and backward, 2 per
multiply-add; element-wise work (BatchNorm, activations, the SGD update) is not counted, and the backward of grouped
convolutions uses a corrected formula (conv_backward_flop; torch's own count is printed beside it). The step is
timed (median of repeats after a warm-up) and its GFLOP/s divided by those of an N x N by N x N fp32 torch.mm on the
same machine in the same run, the practical peak of these cores (measured before and after the steps; the better of
the two is the reference). Writes benchmarks/out/flops.json.

    .venv/bin/python benchmarks/bench_flops.py [--size 256] [--batch 8] [--repeats 3] [--matmul 2048]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from common import machine, median_seconds, write_result
from tatl.models.networks import build_model
from tatl.training.losses import TatlLoss


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Gradient of the input and of the weight each cost one forward convolution. torch 2.14's own formula counts
    the weight gradient of a grouped convolution `groups` times over (64x to 1152x for EfficientNet's depthwise
    convolutions), which would report several times the FLOPs a step really does."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flop}


def matmul_gflops(n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    seconds = median_seconds(lambda: torch.mm(a, b, out=out), repeats=max(repeats, 5), warmup=2)
    return 2 * n**3 / seconds / 1e9


def training_step(shape: str, size: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(shape, "paper-efficientnet-b0", None).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = TatlLoss()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size) > 0.7).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as torch_counter:
        step()
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        step()
    step_flops = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    forward_flops = counter.get_total_flops()
    seconds = median_seconds(step, repeats)
    return {"shape": shape, "gflop_per_step": step_flops / 1e9,
            "torch_formula_gflop_per_step": torch_counter.get_total_flops() / 1e9,
            "forward_gflop_per_image": forward_flops / batch / 1e9,
            "seconds_per_step": seconds, "achieved_gflops": step_flops / seconds / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=2048, help="side N of the reference N x N fp32 matmul")
    args = parser.parse_args()
    before = matmul_gflops(args.matmul, args.repeats)
    rows = [training_step(shape, args.size, args.batch, args.repeats) for shape in ("unet", "linknet")]
    after = matmul_gflops(args.matmul, args.repeats)  # other work on the machine shows as a gap between the two
    peak = max(before, after)
    for row in rows:
        row["fraction_of_matmul"] = row["achieved_gflops"] / peak
    print(f"training step, faithful EfficientNet-b0, {args.size} px, batch {args.batch}, fp32 channels_last, SGD; "
          f"{machine()}")
    print(f"reference: {args.matmul}x{args.matmul} fp32 torch.mm, the better of {before:.1f} GFLOP/s before the steps "
          f"and {after:.1f} after: {peak:.1f} GFLOP/s")
    print("| shape | GFLOP per step | (torch's formula) | forward GFLOP per image | s per step | achieved GFLOP/s "
          "| of matmul |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['gflop_per_step']:.1f} | ({r['torch_formula_gflop_per_step']:.1f}) "
              f"| {r['forward_gflop_per_image']:.2f} "
              f"| {r['seconds_per_step']:.3f} | {r['achieved_gflops']:.1f} | {100 * r['fraction_of_matmul']:.1f}% |")
    result = {"rows": rows, "matmul_gflops": peak, "matmul_gflops_before_after": [before, after],
              "matmul_n": args.matmul, "size": args.size, "batch": args.batch, "repeats": args.repeats}
    print(f"wrote {write_result('flops', result)}")


if __name__ == "__main__":
    main()
