"""The accelerator-side choices of issue 26 item 4 — mixed precision, the fused optimiser, channels-last
towers — made on this CPU machine with the CUDA side faked: each is taken on CUDA and never on the CPU, whose
results the pipeline's lock records."""

import pytest
import torch

from gcctl.clip.contrastive import ContrastiveOptimiser
from gcctl.runtime import amp_dtype, autocast, device_layout, loss_scaling

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("capability, dtype, scaled", [((9, 0), torch.bfloat16, False), ((8, 0), torch.bfloat16, False),
                                                      ((7, 5), torch.float16, True)])
def test_cuda_autocasts_to_bf16_where_native_and_scales_losses_only_under_float16(monkeypatch, capability, dtype, scaled):
    asked = []

    def device_capability(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", device_capability)
    assert amp_dtype(CUDA) is dtype and loss_scaling(CUDA) is scaled
    assert asked and all(device == CUDA for device in asked)  # the device asked about, not the current one


def test_the_cpu_computes_in_full_precision_unscaled():
    assert amp_dtype(CPU) is None and not loss_scaling(CPU)
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")


def _optimiser(model, device):
    return ContrastiveOptimiser(model, model.parameters(), lr=1e-3, weight_decay=0.1, total_steps=10, warmup=0.1, device=device)


def test_the_optimiser_is_fused_on_cuda_and_the_default_on_the_cpu(monkeypatch, shared_micro):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert _optimiser(shared_micro.model, CUDA).optimizer.defaults["fused"] is True
    cpu = _optimiser(shared_micro.model, CPU)
    assert cpu.optimizer.defaults["fused"] is None and not cpu.scaler.is_enabled()


def test_a_state_saved_without_a_scaler_resumes_where_one_scales(shared_micro):
    saved = _optimiser(shared_micro.model, CPU).state_dict()
    assert saved["scaler"] == {}
    resumed = _optimiser(shared_micro.model, CPU)
    resumed.scaler = torch.amp.GradScaler("cpu", enabled=True)  # a float16 GPU resuming a CPU or bf16 run
    resumed.load_state_dict(saved)
    assert resumed.scaler.is_enabled() and resumed.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()


def test_a_state_saved_with_the_fused_kernel_resumes_with_this_devices_kernel(monkeypatch, shared_micro):
    """The saved parameter groups carry the saving device's kernel: a GPU run resumed on the CPU must not keep
    the fused one (other numbers than the CPU's default path)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    saved = _optimiser(shared_micro.model, CUDA).state_dict()
    assert saved["optimizer"]["param_groups"][0]["fused"] is True
    resumed = _optimiser(shared_micro.model, CPU)
    resumed.load_state_dict(saved)
    assert all(group["fused"] is None and group["foreach"] is None for group in resumed.optimizer.param_groups)


def test_a_convolutional_tower_goes_channels_last_on_cuda_only():
    from gcctl.clip.factory import fresh_clip

    def conv_weight(model):
        return next(module.weight for module in model.visual.modules() if isinstance(module, torch.nn.Conv2d))

    resnet = fresh_clip("gcctl-tiny").model  # a ModifiedResNet tower
    assert conv_weight(device_layout(resnet, CPU)).is_contiguous()
    assert conv_weight(device_layout(resnet, CUDA)).is_contiguous(memory_format=torch.channels_last)
    assert not conv_weight(resnet).is_contiguous()


def test_a_model_without_an_image_tower_is_left_as_it_is():
    text_only = torch.nn.Linear(2, 2)
    assert device_layout(text_only, CUDA) is text_only


def test_a_vit_keeps_its_patch_embedding_as_it_is(shared_micro):
    import copy

    vit = copy.deepcopy(shared_micro.model)
    assert vit.visual.conv1.weight.is_contiguous()
    device_layout(vit, CUDA)
    assert vit.visual.conv1.weight.is_contiguous()
