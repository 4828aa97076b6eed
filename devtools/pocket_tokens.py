"""Give the pocket text encoder's unused words a trained word's scale (issue 21, the eighth look).

    .venv/bin/python -m devtools.pocket_tokens --out PATH [--source pocket/weights/pocket_model.safetensors]

The pocket text encoder is trained on the world's captions only (15 tokens: shapes, colours,
``a``, ``on``, ``background``, start and end) and without weight decay, so every other row of
its token embedding keeps its initial scale (median norm 0.16 against 0.32 for trained words).
A real text encoder has seen its rare words: DreamBooth's identifier (``sks``) is rare, not
untrained. Measured in memory (docs/decisions.md, the seventh look), an identifier at a
trained word's scale cut the tap recipe's drift in all five subject/seed pairs tried.

This step multiplies every row no world caption uses by one factor, the ratio of the median
norms (trained over untrained), rounds to the file's fp16 and records the factor in the file's
metadata (``training.unused_token_rows``). The rows of the world's words, the position
embedding and every other weight are copied bit for bit, so the base model's conditioning
for any world caption, and with it every picture of the world, is unchanged; only prompts
with words outside the world (``a sks star``) read differently. A file that already records
the step is refused (the step is not meant to compound).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The token embedding's key in a pocket file (SD checkpoint layout).
TOKEN_EMBEDDING_KEY = "cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight"


def world_token_ids(tokenize: Any, captions: Iterable[str]) -> set[int]:
    """Every token id the pocket model's training captions can contain.

    ``tokenize`` is ``comfy.sd.CLIP.tokenize``; each caption is expanded into the partial forms
    the trainer draws (``devtools.train_pocket.caption_variants``) and the empty caption.
    """
    from devtools.train_pocket import caption_variants

    texts = {""}
    for caption in captions:
        texts.update(caption_variants(caption))
    return {int(token[0]) for text in texts for token in tokenize(text)["l"][0]}


def scale_unused_rows(embedding: torch.Tensor, used: set[int]) -> tuple[torch.Tensor, float]:
    """``embedding`` with every row outside ``used`` scaled to the used rows' median norm.

    Returns the new table (same dtype; the used rows bit-identical) and the factor applied:
    median norm of the used rows over median norm of the others, computed in fp32.
    """
    if not used or len(used) >= embedding.shape[0]:
        raise ValueError("need at least one used and one unused row")
    mask = torch.zeros(embedding.shape[0], dtype=torch.bool)
    mask[sorted(used)] = True
    norms = embedding.float().norm(dim=1)
    factor = float(norms[mask].median() / norms[~mask].median())
    out = embedding.clone()
    out[~mask] = (embedding[~mask].float() * factor).to(embedding.dtype)
    return out, factor


def rescale_file(source: Path, out: Path) -> dict[str, Any]:
    """Write ``out``: ``source`` with its unused token rows scaled; returns the record it adds."""
    from safetensors.torch import load_file, save_file

    from bench.common import setup_host

    setup_host()
    from taptune.patching import pocket_model as pm
    from taptune.pocket import world

    meta = pm.read_metadata(source)
    if "unused_token_rows" in meta.get("training", {}):
        raise SystemExit(f"{source} already has its unused token rows scaled; start from the file before that step")
    tensors = load_file(str(source))
    clip = pm.build_clip(meta, dtype=torch.float32)
    used = world_token_ids(clip.tokenize, world.all_captions())
    tensors[TOKEN_EMBEDDING_KEY], factor = scale_unused_rows(tensors[TOKEN_EMBEDDING_KEY], used)
    record = {
        "factor": round(factor, 6),
        "used_rows": sorted(used),
        "scaled_rows": tensors[TOKEN_EMBEDDING_KEY].shape[0] - len(used),
        "rule": "rows no world caption uses, times median(norm of used rows) / median(norm of the others)",
        "command": "python -m devtools.pocket_tokens",
    }
    meta.setdefault("training", {})["unused_token_rows"] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata={pm.METADATA_KEY: json.dumps(meta)})
    tmp.replace(out)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT / "pocket" / "weights" / "pocket_model.safetensors")
    parser.add_argument("--out", type=Path, required=True, help="where to write (may be --source to replace it)")
    args = parser.parse_args(argv)
    record = rescale_file(args.source, args.out)
    print(f"wrote {args.out}: {record['scaled_rows']} rows times {record['factor']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
