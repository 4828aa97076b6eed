"""Example workflows: written in API form here, stored in UI form (what the ComfyUI editor opens).

``python -m devtools.workflows`` regenerates ``example_workflows/*.json``. The tests turn
each UI workflow back into an API prompt (as the editor does when you press Queue) and
run it, so a stale or broken example fails the suite.

Both directions need the node definitions, so ComfyUI must be prepared first
(``devtools.comfy_host.prepare_comfy`` + ``init_nodes``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from devtools.comfy_host import ROOT
from devtools.demo_files import DEMO_IMAGES, DEMO_OFT, DEMO_TAP

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
EXAMPLES = ROOT / "example_workflows"
DEMO_CHECKPOINT = "taptune-demo-RANDOM-WEIGHTS-sd15.safetensors"


def _definition(class_type: str) -> tuple[list[tuple[str, Any, dict[str, Any]]], list[str]]:
    """``([(input name, type, options)], [output types])`` of a node class, required inputs first."""
    import nodes

    node_cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    spec = node_cls.INPUT_TYPES()
    inputs = []
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0]
            options = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            inputs.append((name, kind, options))
    return inputs, list(node_cls.RETURN_TYPES)


def _is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control(name: str, options: dict[str, Any]) -> bool:
    return bool(options.get("control_after_generate")) or name in SEED_NAMES


def api_to_ui(prompt: dict[str, dict[str, Any]], title: str = "") -> dict[str, Any]:
    """Lay an API prompt out as a UI workflow (left to right by dependency depth)."""
    ids = {key: i + 1 for i, key in enumerate(prompt)}
    depth: dict[str, int] = {}

    def depth_of(key: str) -> int:
        if key not in depth:
            parents = [v[0] for v in prompt[key]["inputs"].values() if isinstance(v, list)]
            depth[key] = 1 + max((depth_of(p) for p in parents), default=-1)
        return depth[key]

    links: list[list[Any]] = []
    ui_nodes: dict[str, dict[str, Any]] = {}
    rows: dict[int, int] = {}
    for order, (key, node) in enumerate(prompt.items()):
        inputs, outputs = _definition(node["class_type"])
        column = depth_of(key)
        row = rows.get(column, 0)
        rows[column] = row + 1
        ui_nodes[key] = {
            "id": ids[key],
            "type": node["class_type"],
            "pos": [40 + 360 * column, 40 + 260 * row],
            "size": [320, 160],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": [],
        }
        if "title" in node.get("_meta", {}):
            ui_nodes[key]["title"] = node["_meta"]["title"]
    for key, node in prompt.items():
        inputs, _ = _definition(node["class_type"])
        target = ui_nodes[key]
        for name, kind, options in inputs:
            value = node["inputs"].get(name)
            widget = _is_widget(kind)
            if isinstance(value, list):
                link_id = len(links) + 1
                source_key, slot = value
                source = ui_nodes[source_key]
                kind_name = source["outputs"][slot]["type"]
                links.append([link_id, source["id"], slot, target["id"], len(target["inputs"]), kind_name])
                source["outputs"][slot]["links"].append(link_id)
                entry = {
                    "name": name,
                    "type": kind_name if not widget else (kind if isinstance(kind, str) else "COMBO"),
                    "link": link_id,
                }
                if widget:
                    entry["widget"] = {"name": name}
                target["inputs"].append(entry)
                if widget:
                    target["widgets_values"].append(None)
            elif widget:
                target["widgets_values"].append(value if value is not None else options.get("default"))
                if kind == "INT" and _has_control(name, options):
                    target["widgets_values"].append("fixed")
            else:
                target["inputs"].append({"name": name, "type": kind, "link": None})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "taptune:" + title)),
        "revision": 0,
        "last_node_id": len(ui_nodes),
        "last_link_id": len(links),
        "nodes": list(ui_nodes.values()),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"info": {"name": title}} if title else {},
        "version": 0.4,
    }


def ui_to_api(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the editor sends when Queue is pressed: the API prompt of a UI workflow."""
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        inputs, _ = _definition(node["type"])
        linked = {entry["name"]: entry["link"] for entry in node.get("inputs", []) if entry.get("link") is not None}
        values = list(node.get("widgets_values", []))
        result: dict[str, Any] = {}
        for name, kind, options in inputs:
            if _is_widget(kind):
                value = values.pop(0) if values else options.get("default")
                if (
                    kind == "INT"
                    and _has_control(name, options)
                    and values
                    and values[0] in ("fixed", "increment", "decrement", "randomize")
                ):
                    values.pop(0)
                if name not in linked:
                    result[name] = value
            if name in linked:
                link = links[linked[name]]
                result[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": result}
    return prompt


def ksampler(
    model: list[Any],
    positive: list[Any],
    negative: list[Any],
    latent: list[Any],
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str = "euler",
    scheduler: str = "normal",
) -> dict[str, Any]:
    """A stock ``KSampler`` node in API form, its inputs given as links or values."""
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": sampler_name,
            "scheduler": scheduler,
            "positive": positive,
            "negative": negative,
            "latent_image": latent,
            "denoise": 1.0,
        },
    }


def example_prompts(checkpoint: str = DEMO_CHECKPOINT) -> dict[str, dict[str, dict[str, Any]]]:
    """The example workflows in API form, keyed by file stem."""
    text = {"clip": ["ckpt", 1]}
    common = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks dog on the beach", **text}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", **text}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
    }

    def sampler(model: list[Any]) -> dict[str, Any]:
        return ksampler(model, ["pos", 0], ["neg", 0], ["latent", 0], seed=42, steps=12, cfg=6.0)

    def decode_and_save(sample: str, prefix: str) -> dict[str, Any]:
        return {
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": [sample, 0], "vae": ["ckpt", 2]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
        }

    load_tap = {
        **common,
        "adapter": {
            "class_type": "TapTuneLoadAdapter",
            "inputs": {"model": ["ckpt", 0], "adapter_name": DEMO_TAP, "strength": 1.0},
        },
        "info": {"class_type": "TapTuneAdapterInfo", "inputs": {"adapter_name": DEMO_TAP, "model": ["ckpt", 0]}},
        "sample": sampler(["adapter", 0]),
        **decode_and_save("sample", "taptune/tap"),
    }
    stack = {
        **common,
        "oft": {
            "class_type": "TapTuneLoadAdapter",
            "inputs": {"model": ["ckpt", 0], "adapter_name": DEMO_OFT, "strength": 1.0},
        },
        "tap": {
            "class_type": "TapTuneLoadAdapter",
            "inputs": {"model": ["oft", 0], "adapter_name": DEMO_TAP, "strength": 0.5},
        },
        "sample": sampler(["tap", 0]),
        **decode_and_save("sample", "taptune/stacked"),
    }

    def training(spec: dict[str, Any], prefix: str, **train: Any) -> dict[str, dict[str, Any]]:
        return {
            **common,
            "images": {
                "class_type": "TapTuneLoadImageFolder",
                "inputs": {"folder": DEMO_IMAGES, "resize_mode": "none", "resolution": 256, "require_captions": False},
            },
            "classes": {
                "class_type": "TapTuneClassImages",
                "inputs": {
                    "model": ["ckpt", 0],
                    "clip": ["ckpt", 1],
                    "vae": ["ckpt", 2],
                    "class_prompt": "a photo of dog",
                    "count": 8,
                    "seed": 0,
                    "steps": 12,
                    "cfg": 6.0,
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "width": 256,
                    "height": 256,
                    "negative_prompt": "",
                },
            },
            "spec": spec,
            "train": {
                "class_type": "TapTuneDreamBoothTrain",
                "inputs": {
                    "model": ["ckpt", 0],
                    "clip": ["ckpt", 1],
                    "vae": ["ckpt", 2],
                    "spec": ["spec", 0],
                    "instance_images": ["images", 0],
                    "instance_prompt": "a photo of sks dog",
                    "class_prompt": "a photo of dog",
                    "prior_loss_weight": 1.0,
                    "steps": 60,
                    "learning_rate": 0.0,
                    "batch_size": 1,
                    "seed": 0,
                    "class_images": ["classes", 0],
                    "resolution": 256,
                    "resize_mode": "center_crop",
                    "gradient_accumulation": 1,
                    "lr_schedule": "constant",
                    "warmup_steps": 0,
                    "optimizer": "adamw",
                    "weight_decay": 0.0,
                    "precision": "auto",
                    "gradient_checkpointing": False,
                    "checkpoint_every": 20,
                    "resume_from": "none",
                    "validation_prompt": "a photo of sks dog on the beach",
                    "validation_every": 20,
                    "validation_steps": 12,
                    **train,
                },
            },
            "save_adapter": {
                "class_type": "TapTuneSaveAdapter",
                "inputs": {"adapter": ["train", 1], "filename_prefix": prefix},
            },
            "loss": {"class_type": "PreviewImage", "inputs": {"images": ["train", 2]}},
            "sample": sampler(["train", 0]),
            **decode_and_save("sample", prefix),
        }

    tap_spec = {
        "class_type": "TapTuneTapSpec",
        "inputs": {
            "din": "attn2o",
            "dout": "ffni",
            "mid_dim": 60,
            "method": "relu",
            "scale": 1.0,
            "blocks": "all",
            "block_list": "",
            "init": "zero_up",
        },
    }
    oft_spec = {
        "class_type": "TapTuneOFTSpec",
        "inputs": {
            "r": 4,
            "eps": 6e-5,
            "coft": True,
            "block_share": False,
            "targets": "attention",
            "target_list": "",
            "block_size": 0,
            "neumann_terms": 0,
            "magnitude_steps": 0,
        },
    }
    pairs = training(tap_spec, "taptune/pairs", prior_loss_weight=0.0, instance_prompt=["images", 1])
    del pairs["classes"]
    del pairs["train"]["inputs"]["class_images"]
    return {
        "load_tap_adapter": _renumber(load_tap),
        "stack_oft_and_tap": _renumber(stack),
        "train_dreambooth_tap": _renumber(training(tap_spec, "taptune/dog_tap")),
        "train_dreambooth_oft": _renumber(training(oft_spec, "taptune/dog_oft")),
        "finetune_text_image_pairs": _renumber(pairs),
    }


def _renumber(prompt: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Readable keys in, numeric ids out (as ComfyUI uses)."""
    ids = {key: str(i + 1) for i, key in enumerate(prompt)}
    out = {}
    for key, node in prompt.items():
        inputs = {n: ([ids[v[0]], v[1]] if isinstance(v, list) else v) for n, v in node["inputs"].items()}
        out[ids[key]] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def write_examples() -> list[Path]:
    """Regenerate ``example_workflows/*.json`` from :func:`example_prompts`."""
    EXAMPLES.mkdir(exist_ok=True)
    written = []
    for stem, prompt in example_prompts().items():
        path = EXAMPLES / f"{stem}.json"
        path.write_text(json.dumps(api_to_ui(prompt, stem), indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    import tempfile

    from devtools.comfy_host import init_nodes, prepare_comfy

    prepare_comfy(tempfile.mkdtemp(prefix="taptune-workflows-"))
    init_nodes()
    for written_path in write_examples():
        print(f"wrote {written_path.relative_to(ROOT)}")
