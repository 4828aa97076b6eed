"""Where the pocket world's drift comes from: drift per class prompt, and how often the judge's reading changes.

    .venv/bin/python -m devtools.drift_by_prompt [--subjects striped_star checked_square] [--steps 400]

Trains the paper's tap recipe (attn2o -> ffni, lr 2e-3) and COFT (r=4, eps 1e-3, lr 1e-2)
through ``bench.quality``'s job on each subject, then for the partial class prompt
``a <class>`` and two fully specified ones prints the drift (1 - cosine of the same seed's
pictures before and after, in the judge's embedding), the share of pictures whose reading of
shape, colour or background changed, and the share whose pattern reading changed. A partial
prompt leaves colour and background to the seed, so a small change of the weights can pick
another star there without any prior being lost; a fully specified prompt cannot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["striped_star", "checked_square"])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)

    from bench.common import setup_host

    setup_host()
    import torch

    from bench.quality import EVAL_BATCH, Context, Method, train_pack
    from taptune.pocket.metrics import paired_drift
    from taptune.pocket.subjects import subject as subject_named

    torch.set_num_threads(2)
    ctx = Context(args.steps)
    methods = (
        Method("tap attn2o->ffni", "tap", 2e-3, "attn2o", "ffni"),
        Method("COFT eps 1e-3", "oft", 1e-2, coft=True, eps=1e-3),
    )
    read_keys = ("shape", "colour", "background")
    for name in args.subjects:
        subject = subject_named(name)
        prompts = (
            subject.class_prompt(),
            f"a red {subject.shape} on a blue background",
            f"a green {subject.shape} on a white background",
        )
        for method in methods:
            trained, _ = train_pack(ctx, method, subject, 0)
            for prompt in prompts:
                before = ctx.pictures(ctx.model, 0, prompt, 1000, EVAL_BATCH)
                after = ctx.pictures(trained, 1, prompt, 1000, EVAL_BATCH)
                drift = paired_drift(ctx.judge.embed(after), ctx.judge.embed(before))
                pairs = list(zip(ctx.judge.read(after), ctx.judge.read(before), strict=True))
                changed = sum(any(a[k] != b[k] for k in read_keys) for a, b in pairs) / len(pairs)
                pattern = sum(a["pattern"] != b["pattern"] for a, b in pairs) / len(pairs)
                print(
                    f"{name} | {method.name} | {prompt!r}: drift {drift:.3f}, reading changed {changed:.2f}, "
                    f"pattern changed {pattern:.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
