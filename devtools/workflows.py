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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from devtools.comfy_host import ROOT
from devtools.demo_files import (
    DEMO_IMAGES,
    DEMO_LORA,
    DEMO_OFT,
    DEMO_TAP,
    POCKET_CLASS_PROMPT,
    POCKET_COFT_EPS,
    POCKET_IMAGES,
    POCKET_LORA,
    POCKET_OFT,
    POCKET_OFT_LEARNING_RATE,
    POCKET_SAMPLE_PROMPT,
    POCKET_SUBJECT_PROMPT,
    POCKET_TAP,
    POCKET_TAP_LEARNING_RATE,
    POCKET_TRAIN_STEPS,
)

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


#: Node types only the front end knows (ComfyUI's editor leaves them out of the API prompt).
FRONTEND_ONLY = {"Note", "MarkdownNote"}
NOTE_HEIGHT = 300


def _drawn_height(inputs: list[tuple[str, Any, dict[str, Any]]], outputs: list[str]) -> int:
    """About how tall the editor draws a node: a row per slot and widget, more for multiline text."""
    rows = max(len(outputs), sum(1 for _, kind, _ in inputs if not _is_widget(kind)))
    widgets = sum(4 if options.get("multiline") else 1 for _, kind, options in inputs if _is_widget(kind))
    return 36 + 24 * (rows + widgets)


def api_to_ui(prompt: dict[str, dict[str, Any]], title: str = "", note: str = "") -> dict[str, Any]:
    """Lay an API prompt out as a UI workflow (left to right by dependency depth), ``note`` in a Note on top."""
    ids = {key: i + 1 for i, key in enumerate(prompt)}
    depth: dict[str, int] = {}

    def depth_of(key: str) -> int:
        if key not in depth:
            parents = [v[0] for v in prompt[key]["inputs"].values() if isinstance(v, list)]
            depth[key] = 1 + max((depth_of(p) for p in parents), default=-1)
        return depth[key]

    links: list[list[Any]] = []
    ui_nodes: dict[str, dict[str, Any]] = {}
    # Each column stacks its nodes by their drawn height, so that tall nodes (the trainer) never overlap.
    column_bottom: dict[int, int] = {}
    top = 40 + (NOTE_HEIGHT + 40 if note else 0)
    for order, (key, node) in enumerate(prompt.items()):
        inputs, outputs = _definition(node["class_type"])
        column = depth_of(key)
        height = _drawn_height(inputs, outputs)
        y = column_bottom.get(column, top)
        column_bottom[column] = y + height + 40
        ui_nodes[key] = {
            "id": ids[key],
            "type": node["class_type"],
            "pos": [40 + 380 * column, y],
            "size": [340, height],
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
    if note:
        ui_nodes["note"] = {
            "id": len(ui_nodes) + 1,
            "type": "Note",
            "pos": [40, 40],
            "size": [720, NOTE_HEIGHT],
            "flags": {},
            "order": len(ui_nodes),
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "properties": {},
            "widgets_values": [note],
            "color": "#432",
            "bgcolor": "#653",
        }
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
        if node.get("mode", 0) != 0 or node["type"] in FRONTEND_ONLY:
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


@dataclass(frozen=True)
class ExampleSizing:
    """The files an example names and how big it runs: one source, a GPU and a CPU variant."""

    checkpoint: str
    tap_adapter: str
    oft_adapter: str
    lora: str
    instance_images: str
    captioned_images: str
    size: int
    sample_steps: int
    cfg: float
    train_steps: int
    class_count: int
    checkpoint_every: int
    note: str
    subject_prompt: str = "a photo of sks dog"
    class_prompt: str = "a photo of dog"
    sample_prompt: str = "a photo of sks dog on the beach"
    negative_prompt: str = "blurry, low quality"
    #: The trainer's learning_rate for tap adapters and for OFT (0 = the paper's recipe), COFT's eps.
    tap_learning_rate: float = 0.0
    oft_learning_rate: float = 0.0
    coft_eps: float = 6e-5
    #: ``checkpoint`` = POCKET_LOADER: the graphs load the pack's pocket model instead of a checkpoint.


#: What a GPU user with a real SD 1.5 checkpoint starts from (the committed examples).
GPU = ExampleSizing(
    checkpoint="v1-5-pruned-emaonly.safetensors",
    tap_adapter="taptune/sks_dog_attn2o_ffni_00001.safetensors",
    oft_adapter="taptune/sks_dog_coft_00001.safetensors",
    lora="your_lora.safetensors",
    instance_images="sks_dog",
    captioned_images="captioned_pairs",
    size=512,
    sample_steps=25,
    cfg=7.0,
    train_steps=800,
    class_count=100,
    checkpoint_every=200,
    note=(
        "Sized for a GPU and SD 1.5 (512 px). Estimates, not measurements: 8 GB VRAM is enough for the tap "
        "recipe and COFT at batch 1; 800 steps take minutes, the class images about one minute per 25."
    ),
)

#: The same graphs made small for `make demo` on a 2-core CPU (demo checkpoint, demo files).
CPU = ExampleSizing(
    checkpoint=DEMO_CHECKPOINT,
    tap_adapter=DEMO_TAP,
    oft_adapter=DEMO_OFT,
    lora=DEMO_LORA,
    instance_images=DEMO_IMAGES,
    captioned_images=DEMO_IMAGES,
    size=256,
    sample_steps=12,
    cfg=6.0,
    train_steps=60,
    class_count=8,
    checkpoint_every=20,
    note=(
        "CPU-sized variant made by `make demo`: the demo checkpoint has RANDOM weights, so images look like "
        "noise; the graph, the training and the files are real. The committed example (GPU values) is in the "
        "Templates browser."
    ),
)

#: The ``checkpoint`` value that means "TapTunePocketModel" (same MODEL/CLIP/VAE outputs, no file input).
POCKET_LOADER = "<TapTunePocketModel>"

#: `make demo`'s variants: the pocket model (trained, 64x64), learning a shipped subject in a few CPU minutes.
POCKET = ExampleSizing(
    checkpoint=POCKET_LOADER,
    tap_adapter=POCKET_TAP,
    oft_adapter=POCKET_OFT,
    lora=POCKET_LORA,
    instance_images=POCKET_IMAGES,
    captioned_images=POCKET_IMAGES,
    size=64,
    sample_steps=20,
    cfg=5.0,
    train_steps=POCKET_TRAIN_STEPS,
    class_count=24,
    checkpoint_every=50,
    note=(
        "CPU variant made by `make demo` on the pack's pocket model (TapTune Pocket Model: a small trained "
        "text-to-image model of coloured shapes, 64x64). The subject is a red-and-white striped star it has never "
        "seen ('a sks star', class 'a star'); training takes a few minutes on a 2-core CPU. The demo LoRA has "
        "random weights. The committed example (GPU values, SD 1.5) is in the Templates browser."
    ),
    subject_prompt=POCKET_SUBJECT_PROMPT,
    class_prompt=POCKET_CLASS_PROMPT,
    sample_prompt=POCKET_SAMPLE_PROMPT,
    negative_prompt="",
    tap_learning_rate=POCKET_TAP_LEARNING_RATE,
    oft_learning_rate=POCKET_OFT_LEARNING_RATE,
    coft_eps=POCKET_COFT_EPS,
)


def loader_node(sizing: ExampleSizing) -> dict[str, Any]:
    """The graph's model source: the checkpoint loader, or the pocket model (outputs in the same order)."""
    if sizing.checkpoint == POCKET_LOADER:
        return {"class_type": "TapTunePocketModel", "inputs": {}}
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sizing.checkpoint}}


#: The tap-point pairs compare_tap_points trains: the paper's best, two other transformer inputs, a ResBlock pair.
COMPARED_PAIRS = (("attn2o", "ffni"), ("attn1o", "ffni"), ("attn2i", "transo"), ("resi", "reso"))

NOTES = {
    "dreambooth_tap_attn2o_ffni": (
        "DreamBooth with the Closer-Look paper's recipe: a tap adapter from attn2o (after cross-attention) to "
        "ffni (the feed-forward input), mid_dim 60, learning rate 0 = the paper's.\n\n"
        "Change: ckpt_name (your SD 1.x / 2.x / SDXL checkpoint; SDXL: 1024 px); the image folder (3-6 photos of "
        "your subject in ComfyUI/input/<folder>); instance_prompt 'a photo of sks <class>' and class_prompt "
        "'a photo of <class>' with your class word; steps 600-1200. Left: base model, right: adapted, same seed."
    ),
    "dreambooth_coft": (
        "DreamBooth with COFT (constrained orthogonal fine-tuning, r=4, eps 6e-5): rotations of the attention "
        "weights that keep the prior.\n\n"
        "Change: ckpt_name, the image folder, the prompts' class word; steps 800-1500 (OFT learns slower than the "
        "tap adapter). Raise eps (1e-4 .. 1e-3) if the subject does not come through; coft off = plain OFT."
    ),
    "generate_with_adapter": (
        "Text to image with a saved TapTune adapter (tap or OFT; the loader tells them apart).\n\n"
        "Change: ckpt_name (the checkpoint the adapter was trained on: the loader refuses another architecture); "
        "adapter_name (files in models/adapters, e.g. what TapTuneSaveAdapter wrote); strength 0 = base model, "
        "1 = as trained; the prompt keeps the trigger word (sks)."
    ),
    "stack_adapters": (
        "Three adapters on one model: a tap adapter, an OFT rotation, and a LoRA through ComfyUI's own "
        "LoraLoaderModelOnly. Order does not matter for the tap adapter; OFT and LoRA both change weights.\n\n"
        "Change: ckpt_name, both adapter_name values, lora_name (any LoRA for the same base model), and each strength."
    ),
    "compare_tap_points": (
        "The paper's study in miniature: one subject trained at four tap-point pairs (same images, class images, "
        "seed and steps), sampled at the same seed and shown as one labelled grid next to the base model.\n\n"
        "Change: ckpt_name, the image folder, prompts; din/dout of the four specs (20 pairs are valid; the "
        "paper finds the input position matters most and attn2o -> ffni is at or near the best)."
    ),
    "finetune_text_image_pairs": (
        "The paper's second task: fine-tuning on image-caption pairs. Each image in the folder has a same-name "
        ".txt caption; the captions are the training prompts (no class images, prior weight 0).\n\n"
        "Change: ckpt_name; the folder (images + .txt captions in ComfyUI/input/<folder>); steps (about 100 per "
        "image); the validation prompt."
    ),
}


def tap_spec_node(**inputs: Any) -> dict[str, Any]:
    """``TapTuneTapSpec``: the paper's recipe (attn2o -> ffni, mid_dim 60, relu, scale 1, every block)."""
    defaults = {
        "din": "attn2o",
        "dout": "ffni",
        "mid_dim": 60,
        "method": "relu",
        "scale": 1.0,
        "blocks": "all",
        "block_list": "",
        "init": "zero_up",
    }
    return {"class_type": "TapTuneTapSpec", "inputs": {**defaults, **inputs}}


def oft_spec_node(**inputs: Any) -> dict[str, Any]:
    """``TapTuneOFTSpec``: the paper's COFT (r 4, eps 6e-5) on every attention projection."""
    defaults = {
        "r": 4,
        "eps": 6e-5,
        "coft": True,
        "block_share": False,
        "targets": "attention",
        "target_list": "",
        "block_size": 0,
        "neumann_terms": 0,
        "magnitude_steps": 0,
    }
    return {"class_type": "TapTuneOFTSpec", "inputs": {**defaults, **inputs}}


def learning_rate_choice(rate: float) -> str:
    """The trainer's learning_rate choice for a rate (0: the spec's, i.e. the paper's)."""
    from taptune.nodes.train import learning_rate_option

    return learning_rate_option(rate)


def example_prompts(sizing: ExampleSizing = GPU) -> dict[str, dict[str, dict[str, Any]]]:
    """The example workflows in API form, keyed by file stem (the committed ones: ``GPU``)."""
    text = {"clip": ["ckpt", 1]}
    common = {
        "ckpt": loader_node(sizing),
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": sizing.sample_prompt, **text}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": sizing.negative_prompt, **text}},
        "latent": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": sizing.size, "height": sizing.size, "batch_size": 1},
        },
    }

    def sampler(model: list[Any]) -> dict[str, Any]:
        return ksampler(
            model, ["pos", 0], ["neg", 0], ["latent", 0], seed=42, steps=sizing.sample_steps, cfg=sizing.cfg
        )

    def decode(sample: str) -> dict[str, Any]:
        return {"class_type": "VAEDecode", "inputs": {"samples": [sample, 0], "vae": ["ckpt", 2]}}

    def save(images: list[Any], prefix: str) -> dict[str, Any]:
        return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}

    def side_by_side(samples: list[tuple[str, list[Any]]], prefix: str) -> dict[str, dict[str, Any]]:
        """Sample each (label, model) at the same seed, batch the images and save one labelled grid."""
        graph: dict[str, dict[str, Any]] = {}
        for index, (_, model) in enumerate(samples):
            graph[f"sample{index}"] = sampler(model)
            graph[f"decode{index}"] = decode(f"sample{index}")
        batch = ["decode0", 0]
        for index in range(1, len(samples)):
            graph[f"batch{index}"] = {
                "class_type": "ImageBatch",
                "inputs": {"image1": batch, "image2": [f"decode{index}", 0]},
            }
            batch = [f"batch{index}", 0]
        labels = "\n".join(label for label, _ in samples)
        graph["grid"] = {"class_type": "TapTuneImageGrid", "inputs": {"images": batch, "labels": labels, "columns": 0}}
        graph["save"] = save(["grid", 0], prefix)
        return graph

    def loader(model: list[Any], adapter: str, strength: float) -> dict[str, Any]:
        return {
            "class_type": "TapTuneLoadAdapter",
            "inputs": {"model": model, "adapter_name": adapter, "strength": strength},
        }

    images = {
        "class_type": "TapTuneLoadImageFolder",
        "inputs": {
            "folder": sizing.instance_images,
            "resize_mode": "none",
            "resolution": sizing.size,
            "require_captions": False,
        },
    }
    classes = {
        "class_type": "TapTuneClassImages",
        "inputs": {
            "model": ["ckpt", 0],
            "clip": ["ckpt", 1],
            "vae": ["ckpt", 2],
            "class_prompt": sizing.class_prompt,
            "count": sizing.class_count,
            "seed": 0,
            "steps": sizing.sample_steps,
            "cfg": sizing.cfg,
            "sampler_name": "euler",
            "scheduler": "normal",
            "width": sizing.size,
            "height": sizing.size,
            "negative_prompt": "",
        },
    }

    def train(spec: str, settings: str = "settings", **changes: Any) -> dict[str, Any]:
        return {
            "class_type": "TapTuneDreamBoothTrain",
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "vae": ["ckpt", 2],
                "spec": [spec, 0],
                "instance_images": ["images", 0],
                "instance_prompt": sizing.subject_prompt,
                "class_prompt": sizing.class_prompt,
                "prior_loss_weight": 1.0,
                "steps": sizing.train_steps,
                "learning_rate": learning_rate_choice(sizing.tap_learning_rate),
                "batch_size": 1,
                "seed": 0,
                "class_images": ["classes", 0],
                "resolution": sizing.size,
                "settings": [settings, 0],
                **changes,
            },
        }

    def settings(**changes: Any) -> dict[str, Any]:
        """The trainer's less-used settings: checkpoints, numbered saves and previews every few steps.

        Every other input at the node's own default, read from its schema, so an input added to
        the node reaches the examples without being listed here.
        """
        inputs, _ = _definition("TapTuneTrainingSettings")
        return {
            "class_type": "TapTuneTrainingSettings",
            "inputs": {
                **{name: options.get("default") for name, _, options in inputs},
                "save_every": sizing.checkpoint_every,
                "checkpoint_every": sizing.checkpoint_every,
                "validation_prompt": sizing.sample_prompt,
                "validation_every": sizing.checkpoint_every,
                "validation_steps": sizing.sample_steps,
                **changes,
            },
        }

    def tap_spec(din: str = "attn2o", dout: str = "ffni") -> dict[str, Any]:
        return tap_spec_node(din=din, dout=dout)

    oft_spec = oft_spec_node(eps=sizing.coft_eps)

    def dreambooth(spec: dict[str, Any], prefix: str, **changes: Any) -> dict[str, dict[str, Any]]:
        return {
            **common,
            "images": images,
            "classes": classes,
            "spec": spec,
            "settings": settings(),
            "train": train("spec", **changes),
            "save_adapter": {
                "class_type": "TapTuneSaveAdapter",
                "inputs": {"adapter": ["train", 1], "filename_prefix": prefix},
            },
            "loss": {"class_type": "PreviewImage", "inputs": {"images": ["train", 2]}},
            **side_by_side([("base", ["ckpt", 0]), ("adapted", ["train", 0])], prefix),
        }

    compare: dict[str, dict[str, Any]] = {
        **common,
        "images": images,
        "classes": classes,
        "settings": settings(validation_every=0, save_every=0),
    }
    compared: list[tuple[str, list[Any]]] = [("base", ["ckpt", 0])]
    for index, (din, dout) in enumerate(COMPARED_PAIRS):
        compare[f"spec{index}"] = tap_spec(din, dout)
        compare[f"train{index}"] = train(f"spec{index}")
        compared.append((f"{din} -> {dout}", [f"train{index}", 0]))
    compare.update(side_by_side(compared, "taptune/compare_tap_points"))

    pairs = {
        **common,
        "images": {
            **images,
            "inputs": {**images["inputs"], "folder": sizing.captioned_images, "require_captions": True},
        },
        "spec": tap_spec(),
        "settings": settings(),
        "train": train("spec", prior_loss_weight=0.0, instance_prompt=["images", 1]),
        "save_adapter": {
            "class_type": "TapTuneSaveAdapter",
            "inputs": {"adapter": ["train", 1], "filename_prefix": "taptune/captioned_pairs"},
        },
        "loss": {"class_type": "PreviewImage", "inputs": {"images": ["train", 2]}},
        "sample": sampler(["train", 0]),
        "decode": decode("sample"),
        "save": save(["decode", 0], "taptune/captioned_pairs"),
    }
    del pairs["train"]["inputs"]["class_images"]

    return {
        "dreambooth_tap_attn2o_ffni": _renumber(dreambooth(tap_spec(), "taptune/sks_dog_attn2o_ffni")),
        "dreambooth_coft": _renumber(
            dreambooth(oft_spec, "taptune/sks_dog_coft", learning_rate=learning_rate_choice(sizing.oft_learning_rate))
        ),
        "generate_with_adapter": _renumber(
            {
                **common,
                "adapter": loader(["ckpt", 0], sizing.tap_adapter, 1.0),
                "info": {
                    "class_type": "TapTuneAdapterInfo",
                    "inputs": {"adapter_name": sizing.tap_adapter, "model": ["ckpt", 0]},
                },
                "sample": sampler(["adapter", 0]),
                "decode": decode("sample"),
                "save": save(["decode", 0], "taptune/with_adapter"),
            }
        ),
        "stack_adapters": _renumber(
            {
                **common,
                "tap": loader(["ckpt", 0], sizing.tap_adapter, 1.0),
                "oft": loader(["tap", 0], sizing.oft_adapter, 1.0),
                "lora": {
                    "class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": ["oft", 0], "lora_name": sizing.lora, "strength_model": 0.8},
                },
                "sample": sampler(["lora", 0]),
                "decode": decode("sample"),
                "save": save(["decode", 0], "taptune/stacked"),
            }
        ),
        "compare_tap_points": _renumber(compare),
        "finetune_text_image_pairs": _renumber(pairs),
    }


def resized(
    prompt: dict[str, dict[str, Any]], source: ExampleSizing, target: ExampleSizing
) -> dict[str, dict[str, Any]]:
    """``prompt`` (an example made with ``source``) naming ``target``'s files instead of ``source``'s."""
    names = {
        getattr(source, field.name): getattr(target, field.name)
        for field in fields(ExampleSizing)
        if isinstance(getattr(source, field.name), str) and field.name != "note" and getattr(source, field.name)
    }
    out = {}
    for key, node in prompt.items():
        if node["class_type"] == "CheckpointLoaderSimple" and target.checkpoint == POCKET_LOADER:
            out[key] = loader_node(target)
            continue
        if node["class_type"] == "TapTunePocketModel" and source.checkpoint == POCKET_LOADER:
            out[key] = loader_node(target)
            continue
        inputs = {n: names.get(v, v) if isinstance(v, str) else v for n, v in node["inputs"].items()}
        out[key] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def _renumber(prompt: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Readable keys in, numeric ids out (as ComfyUI uses)."""
    ids = {key: str(i + 1) for i, key in enumerate(prompt)}
    out = {}
    for key, node in prompt.items():
        inputs = {n: ([ids[v[0]], v[1]] if isinstance(v, list) else v) for n, v in node["inputs"].items()}
        out[ids[key]] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def example_workflows(sizing: ExampleSizing = GPU) -> dict[str, dict[str, Any]]:
    """The examples in UI form, each with its Note, keyed by file stem."""
    return {
        stem: api_to_ui(prompt, stem, NOTES[stem] + "\n\n" + sizing.note)
        for stem, prompt in example_prompts(sizing).items()
    }


def write_workflows(folder: Path, sizing: ExampleSizing = GPU, name: str = "{stem}.json") -> list[Path]:
    """Write :func:`example_workflows` of ``sizing`` into ``folder`` as ``name`` (``{stem}`` filled in)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, workflow in example_workflows(sizing).items():
        path = folder / name.format(stem=stem)
        path.write_text(json.dumps(workflow, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    import tempfile

    from devtools.comfy_host import init_nodes, prepare_comfy

    prepare_comfy(tempfile.mkdtemp(prefix="taptune-workflows-"))
    init_nodes()
    for written_path in write_workflows(EXAMPLES):
        print(f"wrote {written_path.relative_to(ROOT)}")
