"""adapter_core on its own (pure PyTorch, no ComfyUI): tap points, adapters, sets and the file format."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from taptune.adapter_core import (
    PAPER_PAIRS,
    AdapterFileError,
    ConfigError,
    TapAdapter,
    TapAdapterSet,
    TapConfig,
    TapConfigError,
    load_adapter_file,
    load_adapter_set,
    save_adapter_file,
    validate_pair,
)
from taptune.adapter_core.file_format import read_header
from taptune.adapter_core.positions import ALL_POSITIONS, SiteKind
from taptune.adapter_core.safe_write import numbered_path
from taptune.adapter_core.sites import TapSite, select_sites
from taptune.adapter_core.tap.tap_points import TRANSFORMER_DIN, TRANSFORMER_DOUT

from .views import SitesOnly


def test_the_rules_allow_exactly_the_papers_twenty_pairs():
    allowed = set()
    for din in ALL_POSITIONS:
        for dout in ALL_POSITIONS:
            try:
                validate_pair(din, dout)
            except TapConfigError:
                continue
            allowed.add((din, dout))
    assert allowed == set(PAPER_PAIRS)
    assert len(PAPER_PAIRS) == 20


@pytest.mark.parametrize(
    "din,dout,message",
    [
        ("ffno", "attn1i", "dout 'attn1i' comes before din 'ffno'"),
        ("attn1i", "attn2c", "attn2c pairs only with itself"),
        ("attn3o", "ffni", "unknown din 'attn3o'; allowed: " + ", ".join(TRANSFORMER_DIN)),
        ("attn2o", "attn2o", "'attn2o' cannot be a dout; allowed douts: " + ", ".join(TRANSFORMER_DOUT)),
        ("resi", "ffni", "lie in different block kinds"),
        ("reso", "resi", "dout 'resi' comes before din 'reso'"),
    ],
)
def test_invalid_pairs_say_what_is_wrong_and_what_is_allowed(din, dout, message):
    with pytest.raises(TapConfigError) as caught:
        validate_pair(din, dout)
    assert message in str(caught.value)


def test_every_refused_pair_of_known_points_lists_the_valid_pairs():
    """Issue 20 §2: a refused pair's message lists the 20 valid pairs, those reading its din first."""
    refused = 0
    for din in ALL_POSITIONS:
        for dout in ALL_POSITIONS:
            if (din, dout) in PAPER_PAIRS:
                continue
            with pytest.raises(TapConfigError) as caught:
                validate_pair(din, dout)
            text = str(caught.value)
            assert all(f"{a}->{b}" in text for a, b in PAPER_PAIRS), text
            reading = [f"{a}->{b}" for a, b in PAPER_PAIRS if a == din]
            if reading:
                assert f"Valid pairs reading {din}: {', '.join(reading)}." in text
            refused += 1
    assert refused == len(ALL_POSITIONS) ** 2 - 20


def test_config_validation():
    assert TapConfig("attn2o", "ffni", method="default").method == "relu"
    with pytest.raises(TapConfigError, match="unknown method 'gelu'"):
        TapConfig("attn2o", "ffni", method="gelu")
    with pytest.raises(TapConfigError, match="mid_dim must be an integer in 1"):
        TapConfig("attn2o", "ffni", mid_dim=0)


def test_zero_up_initialisation_is_exactly_the_identity_and_seeded():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = TapAdapter(TapConfig("attn2o", "ffni", mid_dim=7), 32, 32, generator=g1)
    b = TapAdapter(TapConfig("attn2o", "ffni", mid_dim=7), 32, 32, generator=g2)
    h = torch.randn(3, 5, 32)
    assert torch.equal(a(h), torch.zeros_like(h))
    assert torch.equal(a.down.weight, b.down.weight)
    paper = TapAdapter(
        TapConfig("attn2o", "ffni", mid_dim=7), 32, 32, init="paper", generator=torch.Generator().manual_seed(5)
    )
    assert paper(h).abs().sum() > 0
    assert torch.equal(paper.down.weight, a.down.weight)  # only the up layer differs between the two inits


@pytest.mark.parametrize("method", ["relu", "sig", "silu", "ident"])
def test_adapter_function_form(method):
    adapter = TapAdapter(TapConfig("attn1i", "transo", mid_dim=4, method=method), 8, 8, init="paper")
    h = torch.randn(2, 3, 8)
    z = h @ adapter.down.weight.T + adapter.down.bias
    z = {"relu": torch.relu, "sig": torch.sigmoid, "silu": torch.nn.functional.silu, "ident": lambda t: t}[method](z)
    expected = z @ adapter.up.weight.T + adapter.up.bias
    torch.testing.assert_close(adapter(h), expected)


def test_resblock_adapter_runs_groupnorm_in_fp32_and_keeps_dtype():
    adapter = TapAdapter(TapConfig("resi", "reso", mid_dim=4), 64, 32, init="paper")
    h = torch.randn(2, 64, 8, 8)
    out = adapter(h.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 32, 8, 8)
    torch.testing.assert_close(out.float(), adapter(h), atol=0.05, rtol=0.05)
    with pytest.raises(TapConfigError, match="divisible by 32"):
        TapAdapter(TapConfig("resi", "reso"), 48, 48)


SITES = [
    TapSite("input_blocks.1.1.transformer_blocks.0", SiteKind.TRANSFORMER, 32, 32, 16),
    TapSite("middle_block.1.transformer_blocks.0", SiteKind.TRANSFORMER, 64, 64, 16),
    TapSite("output_blocks.0.1.transformer_blocks.0", SiteKind.TRANSFORMER, 64, 64, 16),
    TapSite("input_blocks.1.0", SiteKind.RESBLOCK, 32, 64, None),
]


def test_block_selection():
    assert [s.path for s in select_sites(SITES, SiteKind.TRANSFORMER, "middle")] == [
        "middle_block.1.transformer_blocks.0"
    ]
    assert len(select_sites(SITES, SiteKind.TRANSFORMER, "all")) == 3
    chosen = select_sites(SITES, SiteKind.TRANSFORMER, ["diffusion_model.output_blocks.0.1.transformer_blocks.0"])
    assert [s.path for s in chosen] == ["output_blocks.0.1.transformer_blocks.0"]
    with pytest.raises(ConfigError, match=r"did you mean input_blocks\.1\.1\.transformer_blocks\.0"):
        select_sites(SITES, SiteKind.TRANSFORMER, ["input_blocks.1.1.transformer_block.0"])
    with pytest.raises(ConfigError, match="unknown block selection 'upper'"):
        select_sites(SITES, SiteKind.TRANSFORMER, "upper")


def test_set_file_round_trip_keeps_everything(tmp_path):
    tap_set = TapAdapterSet.create(
        SITES, TapConfig("attn2c", "attn2c", mid_dim=5, method="silu", scale=0.5), init="paper", seed=3
    )
    tap_set.add_group(SITES, TapConfig("resi", "reso", mid_dim=4), init="paper", seed=4)
    path = tmp_path / "set.safetensors"
    save_adapter_file(path, tap_set.to_file(base={"family": "X"}, trigger_word="sks", custom={"a": [1]}))
    loaded = TapAdapterSet.from_file(load_adapter_file(path))
    assert [g.to_json() for g in loaded.groups] == [g.to_json() for g in tap_set.groups]
    for key, value in tap_set.tensors().items():
        assert torch.equal(loaded.tensors()[key], value)
    header = read_header(path)
    assert header["custom"] == {"a": [1]} and header["trigger_word"] == "sks"
    # attn2c adapters map context_dim -> context_dim
    assert loaded.adapters["middle_block.1.transformer_blocks.0"].down.weight.shape == (5, 16)
    loaded.check_fits(SitesOnly(SITES))
    with pytest.raises(TapConfigError, match="made for width 16 at attn2c but this model has 8"):
        loaded.check_fits(SitesOnly([TapSite(s.path, s.kind, s.in_width, s.out_width, 8) for s in SITES]))


def test_save_is_atomic(tmp_path, monkeypatch):
    tap_set = TapAdapterSet.create(SITES, TapConfig("attn2o", "ffni", mid_dim=4))
    path = tmp_path / "a.safetensors"
    save_adapter_file(path, tap_set.to_file())
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("taptune.adapter_core.file_format.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        save_adapter_file(path, tap_set.to_file(notes="new"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left behind


def test_numbered_paths(tmp_path):
    assert numbered_path(tmp_path, "taptune/dog").name == "dog_00001.safetensors"
    (tmp_path / "taptune").mkdir()
    (tmp_path / "taptune" / "dog_00007.safetensors").write_bytes(b"")
    assert numbered_path(tmp_path, "taptune/dog") == tmp_path / "taptune" / "dog_00008.safetensors"
    with pytest.raises(ValueError, match="outside"):
        numbered_path(tmp_path, "../escape")


@pytest.mark.parametrize(
    "header,tensors,message",
    [
        ({"format": "taptune/9", "kind": "tap", "adapters": [{}]}, {}, "format 'taptune/9' is not supported"),
        ({"format": "taptune/1", "kind": "boft", "adapters": [{}]}, {}, "unknown adapter kind 'boft'"),
        ({"format": "taptune/1", "kind": "tap", "adapters": []}, {}, "'adapters' must be a non-empty list"),
        (
            {
                "format": "taptune/1",
                "kind": "tap",
                "adapters": [{"din": "attn2o", "dout": "ffni", "mid_dim": 4, "modules": ["b"]}],
            },
            {
                **{f"b.tap.{n}.bias": torch.zeros(s) for n, s in (("down", 4), ("up", 8))},
                "b.tap.down.weight": torch.zeros(4, 8),
                "b.tap.up.weight": torch.zeros(8, 4),
                "c.tap.up.weight": torch.zeros(1),
            },
            "tensor c.tap.up.weight belongs to no module",
        ),
        (
            {
                "format": "taptune/1",
                "kind": "tap",
                "adapters": [{"din": "attn2o", "dout": "ffni", "mid_dim": 3, "modules": ["b"]}],
            },
            {"b.tap.down.weight": torch.zeros(4, 8), "b.tap.up.weight": torch.zeros(8, 4)},
            "tap.down.weight has 4 outputs but mid_dim is 3",
        ),
    ],
)
def test_malformed_files(tmp_path, header, tensors, message):
    path = tmp_path / "bad.safetensors"
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata={"taptune": json.dumps(header)})
    with pytest.raises(AdapterFileError, match=message):
        load_adapter_set(path)


def test_adapter_core_imports_nothing_from_comfyui():
    code = (
        "import sys, importlib.util; sys.path.insert(0, '.');"
        "import adapter_core, adapter_core.cli, adapter_core.registry, adapter_core.tap.tap_official_import;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'comfy', 'comfy_api', 'folder_paths', 'nodes', 'execution'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    from devtools.comfy_host import ROOT

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
