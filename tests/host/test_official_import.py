"""Converting the paper's official adapter folders: node and command line, round trip to the same function."""

from __future__ import annotations

import shutil
import subprocess
import sys

import comfy.model_management
import pytest
import torch
import yaml
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from devtools.comfy_host import ROOT
from taptune.nodes.common import NodeInputError
from taptune.nodes.load_adapter import TapTuneLoadAdapter
from taptune.nodes.tap_import import TapTuneImportOfficialAdapters

from .reference import adapter_fn, reference_hooks
from .unet_io import fixed_inputs, raw_output, relative_error, unet_output


def write_official_folder(folder, unet, seed=0):
    """An adapter folder laid out as the official code saves it, plus its YAML; returns the reference plan."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    config = {
        "model": {
            "target": "ldm.models.diffusion.ddpm_dream.LatentDiffusion",
            "params": {
                "unet_config": {
                    "params": {
                        "adapter_config": {
                            "transformer_adp_config": [
                                {
                                    "type": "inout",
                                    "din": "attn2o",
                                    "dout": "ffni",
                                    "mid_dim": 6,
                                    "method": "default",
                                    "scale": 1.0,
                                }
                            ],
                            "resblock_adp_config": {
                                "type": "inout",
                                "din": "resi",
                                "dout": "reso",
                                "mid_dim": 4,
                                "method": "default",
                                "scale": 1.0,
                            },
                        }
                    }
                }
            },
        }
    }
    (folder / "attn2o-ffni.yaml").write_text(yaml.safe_dump(config))
    plan = {}
    for path, block in unet.named_modules():
        if type(block) is BasicTransformerBlock:
            d = block.attn1.to_q.in_features
            state = {
                "adp.0.weight": torch.randn(6, d, generator=g) * 0.05,
                "adp.0.bias": torch.randn(6, generator=g) * 0.05,
                "adp.2.weight": torch.randn(d, 6, generator=g) * 0.05,
                "adp.2.bias": torch.randn(d, generator=g) * 0.05,
            }
            torch.save(state, folder / f"{path}.adapter_inout.pt")
            torch.save({k[4:]: v for k, v in state.items()}, folder / f"{path}.adapter_inout.adp.pt")
            tensors = {"tap.down.weight": state["adp.0.weight"], "tap.down.bias": state["adp.0.bias"]}
            tensors |= {"tap.up.weight": state["adp.2.weight"], "tap.up.bias": state["adp.2.bias"]}
            plan[path] = [("attn2o", "ffni", 1.0, adapter_fn(tensors, "relu"))]
        elif type(block) is ResBlock:
            c, o = block.channels, block.out_channels
            state = {
                "0.weight": 1 + torch.randn(c, generator=g) * 0.05,
                "0.bias": torch.randn(c, generator=g) * 0.05,
                "2.weight": torch.randn(4, c, 3, 3, generator=g) * 0.05,
                "2.bias": torch.randn(4, generator=g) * 0.05,
                "4.weight": torch.randn(o, 4, 3, 3, generator=g) * 0.05,
                "4.bias": torch.randn(o, generator=g) * 0.05,
            }
            torch.save(state, folder / f"{path}.adapter.pt")
            tensors = {"tap.norm.weight": state["0.weight"], "tap.norm.bias": state["0.bias"]}
            tensors |= {"tap.down.weight": state["2.weight"], "tap.down.bias": state["2.bias"]}
            tensors |= {"tap.up.weight": state["4.weight"], "tap.up.bias": state["4.bias"]}
            plan[path] = [("resi", "reso", 1.0, adapter_fn(tensors, "relu"))]
    return plan


def check_same_function(model, name, plan):
    (patched,) = TapTuneLoadAdapter.execute(model, name, 1.0).args
    x, sigma, ctx, _ = fixed_inputs(768, seed=11)
    ours = unet_output(patched, x, sigma, ctx)
    with reference_hooks(model, plan):
        expected = raw_output(model, x, sigma, ctx)
    assert relative_error(ours, expected) < 1e-5
    assert relative_error(unet_output(model, x, sigma, ctx), expected) > 1e-3


def test_node_converts_official_folder(sd15, adapters_dir, base_dir, tmp_path):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    folder = base_dir / "input" / "official" / "999-adapters"
    shutil.rmtree(folder, ignore_errors=True)
    plan = write_official_folder(folder, model.model.diffusion_model)
    out = TapTuneImportOfficialAdapters.execute("official/999-adapters", "", "imported/dog")
    (name,) = out.args
    assert name == "imported/dog_00001.safetensors"
    assert (adapters_dir / name).exists()
    check_same_function(model, name, plan)
    # The same folder outside ComfyUI's folders is refused, without saying whether it exists.
    write_official_folder(tmp_path / "outside", model.model.diffusion_model)
    messages = []
    for path in (str(tmp_path / "outside"), str(tmp_path / "missing"), "../../../etc"):
        with pytest.raises(NodeInputError) as raised:
            TapTuneImportOfficialAdapters.execute(path, "", "imported/dog")
        messages.append(str(raised.value))
    assert len(set(messages)) == 1 and "inside ComfyUI's input, output or models folders" in messages[0]


def test_command_line_converts_official_folder(sd15, adapters_dir, tmp_path):
    model = sd15[0]
    comfy.model_management.load_models_gpu([model])
    plan = write_official_folder(tmp_path / "run", model.model.diffusion_model, seed=1)
    out = adapters_dir / "cli.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "adapter_core.cli", "convert-official", str(tmp_path / "run"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "attn2o->ffni" in done.stdout and "resi->reso" in done.stdout
    check_same_function(model, "cli.safetensors", plan)
    # A damaged pickle is refused before torch.load sees it, naming the file.
    (tmp_path / "run" / "input_blocks.1.0.adapter.pt").write_bytes(b"not a pickle at all")
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapter_core.cli",
            "convert-official",
            str(tmp_path / "run"),
            str(tmp_path / "x.safetensors"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2
    assert "input_blocks.1.0.adapter.pt: is not a torch.save archive" in failed.stderr
