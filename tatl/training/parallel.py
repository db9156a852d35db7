"""The networks' side of torchrun: DistributedDataParallel wrapping, SyncBatchNorm, parameters DDP must not wait for.

The process group, ranks and collectives are in tatl.distributed (a leaf every layer may use); what needs the
networks is here.
"""

from __future__ import annotations

import torch
from torch import nn

from tatl.distributed import is_distributed
from tatl.models.multihead import MultiHeadSegmenter, TrainingForward


def use_sync_batchnorm(model: MultiHeadSegmenter) -> None:
    """Replace every BatchNorm of `model` (timm's BatchNorm + activation layers too) by its synchronised twin, in
    place: the same parameters and buffers under the same names, statistics computed over all ranks' slices in
    training (CUDA only; outside torchrun or in eval mode it is plain BatchNorm)."""
    from timm.layers import convert_sync_batchnorm

    model.encoder = convert_sync_batchnorm(model.encoder)
    for name in list(model.heads):
        model.heads[name] = convert_sync_batchnorm(model.heads[name])


def training_forward(model: MultiHeadSegmenter, names: list[str], train_encoder: bool,
                     device: torch.device) -> nn.Module:
    """TrainingForward, wrapped in DistributedDataParallel under torchrun (gradients averaged over ranks): whole with
    a trainable encoder, head by head with a frozen one (the engine runs one backward per head then).

    A trainable encoder must not hold parameters its forward never uses: call freeze_unused_parameters first (as
    engine.fit does), or DDP stops at the second step waiting for their gradients."""
    step_model = TrainingForward(model, names, train_encoder)
    if train_encoder:
        return data_parallel(step_model, device)
    for name in names:
        step_model.heads[name] = data_parallel(step_model.heads[name], device)
    return step_model


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` wrapped in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
    if not is_distributed():
        return module
    device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None  # this rank's GPU (setup)
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def freeze_unused_parameters(model: MultiHeadSegmenter, example: torch.Tensor) -> list[str]:
    """Stop asking for gradients of encoder parameters the forward never reaches (smp's efficientnet-b0 keeps a
    head conv it never calls): DDP waits forever for gradients that never come. Returns their names.

    Found with one eval-mode pass on one image (eval: the BatchNorm statistics do not move) and kept out of the
    run's random stream."""
    trainable = [(name, p) for name, p in model.encoder.named_parameters() if p.requires_grad]
    if not trainable:
        return []
    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        model.eval()
        output = sum(logits.float().sum() for logits in model(example[:1]).values())
        grads = torch.autograd.grad(output, [p for _, p in trainable], allow_unused=True)
    model.train(was_training)
    unused = [(name, p) for (name, p), grad in zip(trainable, grads, strict=True) if grad is None]
    for _, parameter in unused:
        parameter.requires_grad_(False)
    return [name for name, _ in unused]
