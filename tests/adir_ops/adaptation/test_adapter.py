"""A trained LoRA as a file: the safetensors round trip, the checks that refuse a file, and applying it to a prior."""

import json
import struct
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adir_ops.adaptation.adapter import Adapter
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.lora import fresh_lora, lora_targets

CONFIG = AdaptConfig(lora_rank=4, lora_alpha=8, steps=3)


def unet():
    torch.manual_seed(0)  # weight init of this stand-in only
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.SiLU(), nn.Conv2d(6, 3, 1))


def made(net=None, seed=1):
    """An adapter as training leaves one: fresh A, a non-zero B, its configs, loss curve and provenance."""
    net = net or unet()
    targets = tuple(lora_targets(net))
    state = fresh_lora(net, targets, CONFIG.lora_rank, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    state = {k: torch.randn(v.shape, generator=g) if "lora_B" in k else v for k, v in state.items()}
    provenance = {"key": "ab" * 32, "ids": ["n1", "n2"]}
    return Adapter(state, targets, CONFIG, {"source": "tiny", "seed": 0}, [0.5, 0.25, 0.125], provenance)


def edited(data, edit_tensors=None, edit_ours=None, edit_lora=None):
    """The file `data` with its tensors or metadata changed and its header left otherwise as written."""
    from safetensors.torch import load, save

    header_len = struct.unpack("<Q", data[:8])[0]
    metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
    tensors = load(data)
    if edit_tensors:
        edit_tensors(tensors)
    for key, edit in (("adir_adapter", edit_ours), ("lora_adapter_metadata", edit_lora)):
        if edit:
            value = json.loads(metadata[key])
            edit(value)
            metadata[key] = json.dumps(value)
    return save(tensors, metadata=metadata)


def test_save_then_load_keeps_weights_targets_configs_losses_and_provenance(tmp_path):
    adapter = made()
    path = tmp_path / "adapter.safetensors"
    adapter.save(str(path))
    back = Adapter.load(str(path))
    assert back.targets == adapter.targets and back.config == adapter.config
    assert back.prior_config == adapter.prior_config and back.losses == adapter.losses
    assert back.provenance == adapter.provenance
    assert back.state_dict.keys() == adapter.state_dict.keys()
    assert all(torch.equal(back.state_dict[k], v) for k, v in adapter.state_dict.items())
    assert back.num_parameters == adapter.num_parameters == 4 * 3 * 9 + 6 * 4 + 4 * 6 + 3 * 4
    assert Adapter.from_bytes(adapter.to_bytes(), require_checksum=True).losses == adapter.losses


def test_a_file_whose_weights_were_edited_is_refused():
    def scale(tensors):
        tensors["unet.0.lora_B.weight"] *= 1000

    with pytest.raises(ValueError, match="weights do not match the checksum in its metadata"):
        Adapter.from_bytes(edited(made().to_bytes(), edit_tensors=scale), "edited.safetensors")


def test_a_file_without_a_checksum_is_read_unless_one_is_required():
    older = edited(made().to_bytes(), edit_ours=lambda ours: ours.pop("tensors_sha256"))
    assert Adapter.from_bytes(older).targets == made().targets
    with pytest.raises(ValueError, match="records no checksum of its weights"):
        Adapter.from_bytes(older, "cache/entry.safetensors", require_checksum=True)


def test_weights_holding_nan_are_refused_even_with_a_matching_checksum():
    adapter = made()
    adapter.state_dict["0.lora_A.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        Adapter.from_bytes(adapter.to_bytes())


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"edit_ours": lambda o: o.pop("adapt_config")}, r"metadata is incomplete or malformed \(missing key"),
        ({"edit_ours": lambda o: o.update(version=2)}, "adapter format version 2; this code reads 1"),
        ({"edit_lora": lambda lora: lora.update({"unet.r": 8})}, r"LoRA metadata \(r, alpha\) disagrees"),
        ({"edit_ours": lambda o: o.update(provenance=[1])}, "provenance metadata is not a mapping"),
        (
            {"edit_lora": lambda lora: lora.update({"unet.target_modules": ["0"]})},
            "weights do not match target_modules",
        ),
    ],
)
def test_a_file_whose_metadata_was_cut_or_changed_is_refused(edit, message):
    with pytest.raises(ValueError, match=message):
        Adapter.from_bytes(edited(made().to_bytes(), **edit), "x.safetensors")


def test_bytes_that_are_not_safetensors_and_a_path_without_the_suffix_are_refused(tmp_path):
    with pytest.raises(ValueError, match="x.bin is not a readable safetensors file"):
        Adapter.from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage", "x.bin")
    with pytest.raises(ValueError, match=r"must end in \.safetensors \(e\.g\. \.\.\./pytorch_lora_weights"):
        made().save(str(tmp_path / "adapter.pt"))


def test_load_rejects_a_file_without_adapter_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({"unet.conv_in.lora_A.weight": torch.zeros(16, 3, 3, 3)}, str(path))
    with pytest.raises(ValueError, match="not written by Adapter.save"):
        Adapter.load(str(path))


def test_applied_changes_the_prior_inside_the_block_and_puts_it_back_bit_for_bit():
    prior = SimpleNamespace(unet=unet())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = prior.unet(x)
        before = {k: v.clone() for k, v in prior.unet.state_dict().items()}
        with made(prior.unet).applied(prior) as inside:
            assert inside is prior and (prior.unet(x) - base).abs().max() > 1e-2
            assert not any(p.requires_grad for n, p in prior.unet.named_parameters() if "lora_" in n)
        with pytest.raises(KeyError), made(prior.unet).applied(prior):
            raise KeyError("inside the block")
        assert torch.equal(prior.unet(x), base)
    assert prior.unet.state_dict().keys() == before.keys()
    assert all(torch.equal(prior.unet.state_dict()[k], v) for k, v in before.items())
    assert all(p.requires_grad for p in prior.unet.parameters())


def test_an_adapter_for_another_unet_is_refused_before_touching_it():
    other = SimpleNamespace(unet=nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.SiLU(), nn.Conv2d(6, 3, 1)))
    with pytest.raises(ValueError, match=r"trained on another UNet \(prior config \{'source': 'tiny'"):
        with made().applied(other):
            pass
    assert [type(m) for m in other.unet.modules()] == [nn.Sequential, nn.Conv2d, nn.SiLU, nn.Conv2d]
