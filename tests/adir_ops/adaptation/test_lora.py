"""LoRA layers in and out of a UNet: only Conv2d layers, peft's init from the image's generator, the base put back."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adir_ops.adaptation.lora import (
    ModuleState,
    PerImageLoRAConv2d,
    fresh_lora,
    inject_lora,
    lora_state,
    lora_targets,
    refuse_if_adapted,
    remove_lora,
    replace_module,
)
from adir_ops.priors.diffusion import DiffusionPrior

RANK, ALPHA = 4, 8.0


class Net(nn.Module):
    """A UNet in miniature: convolutions among layers LoRA must leave alone (a GroupNorm named conv_*, Conv1d, Linear)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv_in = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_norm_out = nn.GroupNorm(2, 4)
        self.mid = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.SiLU())
        self.qkv = nn.Conv1d(4, 4, 1)
        self.time = nn.Linear(4, 4)
        self.conv_out = nn.Conv2d(4, 3, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def forward(self, x):
        h = self.mid(self.conv_norm_out(self.conv_in(x)))
        h = h + self.qkv(h.flatten(2)).view_as(h) + self.time(h.mean((2, 3)))[:, :, None, None]
        return self.conv_out(h)


def image(seed=1, n=2):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def trained_like(net, seed=2):
    """fresh_lora's A and a non-zero B, as training would leave them."""
    state = fresh_lora(net, lora_targets(net), RANK, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    return {k: torch.randn(v.shape, generator=g) if "lora_B" in k else v for k, v in state.items()}


def everything(net):
    return {
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "modules": [(name, type(m), id(m)) for name, m in net.named_modules()],
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "training": {n: m.training for n, m in net.named_modules()},
        "attributes": set(vars(net)),
    }


def test_every_conv2d_and_nothing_else_is_a_target():
    prior = DiffusionPrior.tiny(resolution=16)
    convs = [n for n, m in prior.unet.named_modules() if isinstance(m, nn.Conv2d)]
    assert lora_targets(prior.unet) == convs
    assert "conv_norm_out" not in convs  # the GroupNorm a `conv.*` pattern would wrongly catch


def test_only_conv2d_layers_are_targeted_and_a_model_without_one_is_refused():
    assert lora_targets(Net()) == ["conv_in", "mid.0", "conv_out"]
    with pytest.raises(ValueError, match="Linear has no nn.Conv2d layer to adapt"):
        lora_targets(nn.Linear(2, 2))


def test_a_fresh_lora_is_peft_init_drawn_from_the_given_generator_and_starts_equal_to_the_base():
    net = Net()
    targets = lora_targets(net)
    before = torch.get_rng_state()
    state = fresh_lora(net, targets, RANK, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never drawn from
    again = fresh_lora(net, targets, RANK, torch.Generator().manual_seed(5))
    other = fresh_lora(net, targets, RANK, torch.Generator().manual_seed(6))
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["conv_in.lora_A.weight"], other["conv_in.lora_A.weight"])
    a, b = state["conv_in.lora_A.weight"], state["conv_in.lora_B.weight"]
    assert a.shape == (RANK, 3, 3, 3) and b.shape == (4, RANK, 1, 1) and not b.any()
    assert a.abs().max() <= 1 / (3 * 3 * 3) ** 0.5  # kaiming-uniform(a = sqrt 5) bound 1 / sqrt(fan_in)
    with torch.no_grad():
        base = net(image())
        inject_lora(net, targets, RANK, ALPHA, state)
        torch.testing.assert_close(net(image()), base, rtol=0, atol=0)


def test_an_injected_layer_computes_base_plus_alpha_over_r_times_b_of_a():
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1))
    state = trained_like(net)
    x = image()
    with torch.no_grad():
        expected = net[0](x) + ALPHA / RANK * F.conv2d(
            F.conv2d(x, state["0.lora_A.weight"], padding=1), state["0.lora_B.weight"]
        )
        inject_lora(net, ["0"], RANK, ALPHA, state)
        torch.testing.assert_close(net(x), expected, rtol=1e-6, atol=1e-6)


def test_removing_the_lora_puts_the_unet_back_bit_for_bit():
    net = Net()
    net.conv_in.weight.requires_grad_(False)  # a caller's flag and mode that must survive
    net.mid.eval()
    before = everything(net)
    with torch.no_grad():
        base = net(image())
    snapshot = ModuleState.capture(net)
    layers = inject_lora(net, lora_targets(net), RANK, ALPHA, trained_like(net))
    assert set(layers) == {"conv_in", "mid.0", "conv_out"}
    with torch.no_grad():
        assert (net(image()) - base).abs().max() > 1e-3  # the LoRA acts while it is in
    with pytest.raises(RuntimeError, match="already carries a LoRA adapter"):
        refuse_if_adapted(net)
    remove_lora(net)
    snapshot.restore(net)
    after = everything(net)
    state, state_before = after.pop("state"), before.pop("state")
    assert after == before  # the same module objects in their places, flags, modes, no peft attribute
    assert state.keys() == state_before.keys() and all(torch.equal(state[k], v) for k, v in state_before.items())
    with torch.no_grad():
        assert torch.equal(net(image()), base)
    refuse_if_adapted(net)  # nothing of peft left


def test_lora_state_reads_back_what_was_injected_as_copies():
    net = Net()
    state = trained_like(net)
    layers = inject_lora(net, lora_targets(net), RANK, ALPHA, state)
    read = lora_state(layers)
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    with torch.no_grad():
        layers["conv_in"].lora_B["adir"].weight.zero_()
    assert torch.equal(read["conv_in.lora_B.weight"], state["conv_in.lora_B.weight"])


def test_weights_that_do_not_fit_the_unet_are_refused():
    net = Net()
    state = trained_like(net)
    del state["conv_out.lora_B.weight"]
    with pytest.raises(ValueError, match="LoRA weights do not fit this UNet: missing"):
        inject_lora(net, lora_targets(net), RANK, ALPHA, state)


def test_a_grouped_conv_needs_a_rank_its_groups_divide():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match=r"groups=4; peft needs lora_rank \(6\) divisible by it"):
        fresh_lora(net, ["0"], 6, torch.Generator().manual_seed(0))


def test_per_image_lora_gives_each_group_the_output_of_its_own_lora_alone():
    base = Net().mid[0]
    g = torch.Generator().manual_seed(7)
    lora_a = torch.randn(2, RANK, 4, 3, 3, generator=g)
    lora_b = torch.randn(2, 4, RANK, 1, 1, generator=g)
    batched = PerImageLoRAConv2d(base, lora_a, lora_b, ALPHA / RANK)
    x = torch.randn(4, 4, 8, 8, generator=g)  # two groups of two images, group-major
    with torch.no_grad():
        out = batched(x)
        for group in range(2):
            alone = nn.Sequential(base)
            state = {"0.lora_A.weight": lora_a[group], "0.lora_B.weight": lora_b[group]}
            inject_lora(alone, ["0"], RANK, ALPHA, state)
            torch.testing.assert_close(out[2 * group : 2 * group + 2], alone(x[2 * group : 2 * group + 2]))
            remove_lora(alone)
    with pytest.raises(ValueError, match="batched LoRA supports plain convolutions; got groups=2"):
        PerImageLoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), lora_a, lora_b, 1.0)


def test_replace_module_puts_a_module_at_a_dotted_name_or_at_the_top():
    net = Net()
    new = nn.Identity()
    replace_module(net, "mid.0", new)
    assert net.mid[0] is new
    replace_module(net, "conv_in", new)
    assert net.conv_in is new
