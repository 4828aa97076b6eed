"""Train the pocket model from scratch on the CPU and write ``pocket/weights/pocket_model.safetensors``.

    .venv/bin/python -m devtools.train_pocket [--seed 0] [--out PATH] [--evaluate]
    .venv/bin/python -m devtools.train_pocket --continue-from FIRST --steps 2000 --lr 4e-4 --warmup 50

The shipped file is the second command run on the first one's output: a second stage of the
text encoder + UNet from the first stage's weights (the first alone draws the asked shape in
96 % of samples, the issue asks 98 %; see docs/pocket_world.md). Its metadata records both.

Three phases, all from one seed (same seed, same machine, same thread count: the same file):

1. **VAE** (ComfyUI's ``AutoencoderKL``, :data:`pocket.architecture.VAE_DDCONFIG`) on the codec
   distribution (``pocket.world.codec_set``: world pictures, patterned and randomly coloured
   shapes, extra shapes, two objects, two-tone backgrounds): L1 + MSE on pixels and a light
   KL term, first on random 32x32 crops (4x cheaper; the VAE is convolutional), then on whole
   64x64 pictures. The latent scale factor is measured afterwards (1 / std of the latents of
   world pictures), as is a linear latent-to-RGB map for ComfyUI's previews.
2. **Latents** of the world's training set (``pocket.world.world_set``: plain shapes only, every
   caption equally often), encoded once (posterior means, times the scale).
3. **Text encoder + UNet**, jointly: ComfyUI's ``SDClipModel`` (through ComfyUI's own SD 1.x
   tokenizer) and ``UNetModel``, eps prediction on ComfyUI's ``ModelSamplingDiscrete``
   schedule (SD 1.x's), uniform timesteps, min-SNR-5 loss weighting, AdamW with warm-up and
   cosine decay, an EMA of the weights (what is saved). Captions: the full caption 45 %,
   partial ones (``a red star``, ``a star on a blue background``, ``a star``) 45 %, empty 10 %
   (so classifier-free guidance works with an empty negative prompt).

The file is written in fp16 with the configurations, the latent scale, the sampler defaults
and the training record (times, loss curves) in its metadata; the loss curves also go to a
JSON file next to it. ``--evaluate`` then samples every caption through ComfyUI's KSampler
and prints the judge's reading rates (needs ``pocket/weights/pocket_judge.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# On a shared CPU, spinning OpenMP threads waste whole time slices: let them sleep (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.comfy_host import import_pack, prepare_comfy  # noqa: E402


@dataclass
class Settings:
    seed: int = 0
    threads: int = 2
    # VAE
    codec_images: int = 10000
    vae_crop_steps: int = 1500
    vae_crop_batch: int = 32
    vae_crop: int = 32
    vae_full_steps: int = 250
    vae_full_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    edge_weight: float = 0.5
    # world latents
    world_images: int = 8000
    #: Pictures of patterned objects added to the world (``a red star with white stripes ...``),
    #: every look but the shipped subjects' (issue 21); 0 gives the plain world of the first file.
    patterned_images: int = 0
    # text encoder + UNet
    steps: int = 2500
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    final_lr_fraction: float = 0.1
    ema: float = 0.999
    min_snr: float = 5.0
    p_empty: float = 0.10
    p_partial: float = 0.45
    grad_clip: float = 1.0
    #: Start the text encoder + UNet from this pocket file's weights instead of fresh ones
    #: (a second, one-off stage of training; its VAE and latent scale are reused too).
    continue_from: str | None = None


# ----------------------------------------------------------------------------------------------
# Helpers


def cosine_lr(step: int, total: int, base: float, warmup: int, final_fraction: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def smooth(values: list[float], every: int) -> list[list[float]]:
    """[[step, mean loss of the ``every`` steps ending there], ...]."""
    return [[i + every - 1, float(np.mean(values[i : i + every]))] for i in range(0, len(values) - every + 1, every)]


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in -1..1 (what ComfyUI's VAE feeds its encoder)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_moments(vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance (``encoder`` -> ``quant_conv``, as ``AutoencoderKL.encode``)."""
    moments = vae.quant_conv(vae.encoder(x))
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


# ----------------------------------------------------------------------------------------------
# Phase 1: VAE


def train_vae(s: Settings, meta: dict[str, Any], log: dict[str, Any]) -> Any:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from taptune.patching import pocket_model as pm
    from taptune.pocket import architecture as arch
    from taptune.pocket import world

    t0, c0 = time.perf_counter(), time.process_time()
    images, _ = world.codec_set(s.seed * 1000 + 1, s.codec_images)
    pixels = to_pixels(images)
    print(f"[vae] {len(pixels)} codec pictures drawn in {time.perf_counter() - t0:.0f} s", flush=True)

    torch.manual_seed(s.seed * 1000 + 2)
    vae = AutoencoderKL(**pm.vae_config(meta)["params"])
    arch.init_vae(vae)
    vae.train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    g = torch.Generator().manual_seed(s.seed * 1000 + 3)
    total = s.vae_crop_steps + s.vae_full_steps
    losses: list[float] = []
    for step in range(total):
        crop = step < s.vae_crop_steps
        batch = s.vae_crop_batch if crop else s.vae_full_batch
        idx = torch.randint(0, len(pixels), (batch,), generator=g)
        x = pixels[idx]
        if crop:
            c = s.vae_crop
            # one offset per batch, on the 8-pixel latent grid (as whole pictures see it)
            ox, oy = (int(v) * 8 for v in torch.randint(0, (64 - c) // 8 + 1, (2,), generator=g))
            x = x[:, :, oy : oy + c, ox : ox + c]
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, total, s.vae_lr, 50, 0.05)
        mean, logvar = vae_moments(vae, x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
        y = vae.decode(z)
        d = y - x
        # L1 + MSE, plus L1 of the error's finite differences: edges must be as sharp as the picture's.
        recon = d.abs().mean() + d.square().mean()
        edges = (d[..., :, 1:] - d[..., :, :-1]).abs().mean() + (d[..., 1:, :] - d[..., :-1, :]).abs().mean()
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        loss = recon + s.edge_weight * edges + s.kl_weight * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        losses.append(recon.item())
        if step % 100 == 0 or step == total - 1:
            print(
                f"[vae] step {step:5d}/{total} {'crop' if crop else 'full'} recon {np.mean(losses[-50:]):.4f} "
                f"kl {kl.item():.3f}  {time.perf_counter() - t0:.0f} s (cpu {time.process_time() - c0:.0f} s)",
                flush=True,
            )
    vae.eval()
    log["vae"] = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "curve": smooth(losses, 25),
        "final_recon": float(np.mean(losses[-50:])),
    }
    return vae


@torch.no_grad()
def encode_world(s: Settings, vae: Any, log: dict[str, Any]) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """World latents (posterior means), the measured scale, and latent-to-RGB preview factors."""
    from taptune.pocket import world

    t0, c0 = time.perf_counter(), time.process_time()
    images, captions, _ = world.world_set(s.seed * 1000 + 4, s.world_images)
    pixels = to_pixels(images)
    latents = torch.cat([vae_moments(vae, pixels[i : i + 128])[0] for i in range(0, len(pixels), 128)])
    std = float(latents.std())
    scale = 1.0 / std
    # Least-squares map latent (4) -> mean RGB of its 8x8 patch, in 0..1, for latent2rgb previews.
    patch_rgb = F.avg_pool2d((pixels[:2000] + 1) / 2, 8).permute(0, 2, 3, 1).reshape(-1, 3)
    lat = (latents[:2000] * scale).permute(0, 2, 3, 1).reshape(-1, 4)
    design = torch.cat([lat, torch.ones(len(lat), 1)], dim=1)
    solution = torch.linalg.lstsq(design, patch_rgb).solution  # [5, 3]
    # Reconstruction error of the world pictures through the VAE (means, as ComfyUI decodes).
    sample = pixels[:256]
    recon = torch.cat([vae.decode(vae_moments(vae, sample[i : i + 64])[0]) for i in range(0, len(sample), 64)])
    mae = float(((recon.clamp(-1, 1) - sample).abs().mean() / 2) * 255)
    info = {
        "latent_scale": scale,
        "latent_std": std,
        "latent_rgb_factors": solution[:4].tolist(),
        "latent_rgb_bias": solution[4].tolist(),
        "world_reconstruction_mae_0_255": mae,
    }
    log["latents"] = {
        **info,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "count": len(latents),
    }
    print(
        f"[latents] {len(latents)} world latents, std {std:.4f} -> scale {scale:.4f}; VAE MAE on world pictures "
        f"{mae:.2f}/255  {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    if s.patterned_images:
        from taptune.pocket.subjects import subject_looks

        more, more_captions, _ = world.patterned_world_set(s.seed * 1000 + 8, s.patterned_images, subject_looks())
        more_pixels = to_pixels(more)
        latents = torch.cat(
            [latents, *(vae_moments(vae, more_pixels[i : i + 128])[0] for i in range(0, len(more), 128))]
        )
        captions = [*captions, *more_captions]
        log["latents"]["patterned_count"] = len(more)
    return latents * scale, captions, info


# ----------------------------------------------------------------------------------------------
# Phase 3: text encoder + UNet


def caption_variants(caption: str) -> list[str]:
    """The full caption and its partial forms: ``a red star``, ``a star on a blue background``, ``a star``.

    A patterned caption keeps its pattern in the first partial form (``a red star with white stripes``).
    """
    from taptune.pocket.world import parse_any_caption, pattern_phrase

    p = parse_any_caption(caption)
    named = f"a {p.colour} {p.shape}"
    if p.colour2 is not None:
        named = f"{named} {pattern_phrase(p.pattern, p.colour2)}"
    return [caption, named, f"a {p.shape} on a {p.background} background", f"a {p.shape}"]


class TextTrainer:
    """ComfyUI's CLIP text transformer run for training: the same modules and attention as its
    ``CLIPTextModel_.forward`` (token + position embeddings, causal mask, pre-LN layers, final
    LayerNorm), written without the in-place residual adds that stop autograd."""

    def __init__(self, clip: Any) -> None:
        from comfy.ldm.modules.attention import optimized_attention_for_device

        self.clip = clip
        self.text_model = clip.cond_stage_model.clip_l.transformer.text_model
        self.attention = optimized_attention_for_device(torch.device("cpu"), mask=True, small_input=True)
        self._tokens: dict[str, list[int]] = {}

    def tokens(self, text: str) -> list[int]:
        """Token ids exactly as ``CLIPTextEncode`` makes them (ComfyUI's SD 1.x tokenizer, 77 long)."""
        if text not in self._tokens:
            pairs = self.clip.tokenize(text)["l"]
            if len(pairs) != 1:
                raise ValueError(f"caption longer than 77 tokens: {text!r}")
            self._tokens[text] = [int(t[0]) for t in pairs[0]]
        return self._tokens[text]

    def encode(self, texts: list[str]) -> torch.Tensor:
        tokens = torch.tensor([self.tokens(t) for t in texts], dtype=torch.long)
        tm = self.text_model
        x = tm.embeddings(tokens, dtype=torch.float32)
        n = x.shape[1]
        mask = torch.full((n, n), -torch.finfo(x.dtype).max, dtype=x.dtype).triu_(1)
        for layer in tm.encoder.layers:
            x = x + layer.self_attn(layer.layer_norm1(x), mask, self.attention)
            x = x + layer.mlp(layer.layer_norm2(x))
        return tm.final_layer_norm(x)


def train_diffusion(
    s: Settings, meta: dict[str, Any], latents: torch.Tensor, captions: list[str], log: dict[str, Any]
) -> tuple[Any, Any]:
    from taptune.patching import pocket_model as pm
    from taptune.pocket import architecture as arch

    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(s.seed * 1000 + 5)
    model, _ = pm.build_diffusion_model(meta, None, dtype=torch.float32)
    unet = model.diffusion_model
    arch.init_unet(unet)
    torch.manual_seed(s.seed * 1000 + 6)
    clip = pm.build_clip(meta, dtype=torch.float32)  # fp32 master weights (ComfyUI's default: fp16)
    te = clip.cond_stage_model
    arch.init_text_encoder(te)
    if s.continue_from is not None:
        load_trained(Path(s.continue_from), unet, te)
    text = TextTrainer(clip)
    sampling = model.model_sampling
    sigmas = sampling.sigmas.float()

    params = [p for p in unet.parameters()] + [p for p in te.parameters()]
    for p in params:
        p.requires_grad_(True)
    unet.train()
    te.train()
    optimiser = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = [p.detach().clone() for p in params]

    variants = [caption_variants(c) for c in captions]
    g = torch.Generator().manual_seed(s.seed * 1000 + 7)
    losses: list[float] = []
    for step in range(s.steps):
        idx = torch.randint(0, len(latents), (s.batch,), generator=g)
        x0 = latents[idx]
        # caption per sample: empty, a partial form, or the full caption
        u = torch.rand(s.batch, generator=g)
        which = torch.randint(1, 4, (s.batch,), generator=g)
        texts = []
        for k, i in enumerate(idx.tolist()):
            if u[k] < s.p_empty:
                texts.append("")
            elif u[k] < s.p_empty + s.p_partial:
                texts.append(variants[i][int(which[k])])
            else:
                texts.append(variants[i][0])
        unique = sorted(set(texts))
        encoded = text.encode(unique)
        context = encoded[torch.tensor([unique.index(t) for t in texts])]

        t = torch.randint(0, len(sigmas), (s.batch,), generator=g)
        sigma = sigmas[t]
        noise = torch.randn(x0.shape, generator=g)
        x_t = sampling.noise_scaling(sigma, noise, x0)  # x0 + sigma * noise (eps models)
        x_in = sampling.calculate_input(sigma, x_t)  # x_t / sqrt(sigma^2 + 1)
        eps = unet(x_in, sampling.timestep(sigma).float(), context=context)
        snr = 1.0 / sigma.square()
        weight = torch.clamp(snr, max=s.min_snr) / snr
        per_sample = (eps.float() - noise).square().mean(dim=(1, 2, 3))
        loss = (weight * per_sample).mean()

        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, s.steps, s.lr, s.warmup, s.final_lr_fraction)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        optimiser.step()
        decay = min(s.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(per_sample.mean().item())
        if step % 100 == 0 or step == s.steps - 1:
            print(
                f"[unet] step {step:5d}/{s.steps} loss {np.mean(losses[-50:]):.4f}  {time.perf_counter() - t0:.0f} s "
                f"(cpu {time.process_time() - c0:.0f} s)",
                flush=True,
            )
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
            p.requires_grad_(False)
    unet.eval()
    te.eval()
    log["unet"] = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "curve": smooth(losses, 25),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
    }
    return model, clip


def load_trained(path: Path, unet: Any, text_encoder: Any) -> None:
    """Load a pocket file's UNet and text encoder weights (stored fp16) into fp32 modules, strictly."""
    from safetensors.torch import load_file

    from taptune.patching import pocket_model as pm

    stored = load_file(str(path))
    for prefix, module in ((pm.UNET_PREFIX, unet), (pm.TEXT_PREFIX, text_encoder)):
        module.load_state_dict(weights_under(stored, prefix))


def weights_under(stored: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a pocket file under ``prefix`` (one module's), unprefixed, in fp32 for training."""
    return {k[len(prefix) :]: v.float() for k, v in stored.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------------------
# Saving


def save(path: Path, model: Any, clip: Any, vae: Any, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from taptune.patching import pocket_model as pm

    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (
        (pm.UNET_PREFIX, model.diffusion_model),
        (pm.TEXT_PREFIX, clip.cond_stage_model),
        (pm.VAE_PREFIX, vae),
    ):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().to(torch.float16).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={pm.METADATA_KEY: json.dumps(meta)})
    tmp.replace(path)


def save_vae(path: Path, vae: Any, meta: dict[str, Any]) -> None:
    """The VAE alone, in the pocket layout (what ``--vae-from`` reads)."""
    from safetensors.torch import save_file

    from taptune.patching import pocket_model as pm

    tensors = {pm.VAE_PREFIX + k: v.detach().float().contiguous() for k, v in vae.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={pm.METADATA_KEY: json.dumps(meta)})


def write_initialised_model(path: Path, seed: int = 0) -> Path:
    """A pocket file with freshly initialised (untrained) weights: the same architecture, nothing learned.

    Tests use it to show that their quality checks fail for a model that has not been trained.
    """
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from taptune.patching import pocket_model as pm
    from taptune.pocket import architecture as arch

    meta = pm.default_metadata()
    torch.manual_seed(seed)
    model, _ = pm.build_diffusion_model(meta, None, dtype=torch.float32)
    arch.init_unet(model.diffusion_model)
    clip = pm.build_clip(meta, dtype=torch.float32)  # fp32 master weights (ComfyUI's default: fp16)
    arch.init_text_encoder(clip.cond_stage_model)
    vae = AutoencoderKL(**pm.vae_config(meta)["params"])
    arch.init_vae(vae)
    # The zero-initialised output layers would make the UNet predict exactly 0: give them values too.
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.abs().max() == 0 and name.endswith("weight"):
                p.normal_(0.0, 0.02)
    save(path, model, clip, vae, meta)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: pocket/weights/pocket_model.safetensors")
    parser.add_argument("--steps", type=int, default=None, help="UNet steps (default: Settings.steps)")
    parser.add_argument(
        "--vae-from", type=Path, default=None, help="reuse the VAE of an existing pocket file (development)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--continue-from",
        type=Path,
        default=None,
        help="a second training stage: start text encoder + UNet (and take the VAE) from this pocket file",
    )
    parser.add_argument(
        "--patterned-images", type=int, default=None, help="pictures of patterned objects added to the world"
    )
    parser.add_argument("--lr", type=float, default=None, help="text encoder + UNet peak learning rate")
    parser.add_argument("--warmup", type=int, default=None, help="text encoder + UNet warm-up steps")
    parser.add_argument("--vae-crop-steps", type=int, default=None)
    parser.add_argument("--vae-full-steps", type=int, default=None)
    parser.add_argument("--vae-lr", type=float, default=None)
    parser.add_argument("--vae-out", type=Path, default=None, help="also write the VAE alone here (development)")
    parser.add_argument("--vae-only", action="store_true", help="stop after the VAE (development: UNet left untrained)")
    parser.add_argument("--evaluate", action="store_true", help="sample every caption and report the judge's rates")
    parser.add_argument(
        "--base", type=Path, default=ROOT / ".host" / "pocket-train-base", help="ComfyUI base directory"
    )
    args = parser.parse_args(argv)

    s = Settings(seed=args.seed)
    if args.continue_from is not None:
        s.continue_from = str(args.continue_from)
        args.vae_from = args.vae_from or args.continue_from
    for name in ("steps", "patterned_images", "threads", "vae_crop_steps", "vae_full_steps", "vae_lr", "lr", "warmup"):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    torch.set_num_threads(s.threads)
    prepare_comfy(args.base)
    import_pack()
    from taptune.patching import pocket_model as pm

    out = args.out or pm.MODEL_FILE
    meta = pm.default_metadata()
    log: dict[str, Any] = {
        "settings": asdict(s),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    start = time.perf_counter()

    if args.vae_from is not None:
        from comfy.ldm.models.autoencoder import AutoencoderKL
        from safetensors.torch import load_file

        old = pm.read_metadata(args.vae_from)
        vae = AutoencoderKL(**pm.vae_config(old)["params"])
        vae.load_state_dict(weights_under(load_file(str(args.vae_from)), pm.VAE_PREFIX))
        vae.eval()
        log["vae"] = {**old.get("training", {}).get("vae", {}), "reused_from": str(args.vae_from)}
    else:
        vae = train_vae(s, meta, log)
        if args.vae_out is not None:  # development: keep the VAE to reuse with --vae-from
            save_vae(args.vae_out, vae, {**meta, "training": {"vae": log["vae"]}})
    for p in vae.parameters():
        p.requires_grad_(False)
    latents, captions, latent_info = encode_world(s, vae, log)
    meta.update(
        latent_scale=latent_info["latent_scale"],
        latent_rgb_factors=latent_info["latent_rgb_factors"],
        latent_rgb_bias=latent_info["latent_rgb_bias"],
    )
    if args.vae_only:
        s.steps = 0
    model, clip = train_diffusion(s, meta, latents, captions, log)
    total = time.perf_counter() - start
    log["total_seconds"] = total
    meta["training"] = {
        "seed": s.seed,
        "total_seconds": round(total, 1),
        "vae_seconds": round(log["vae"].get("seconds", 0.0), 1),
        "latent_seconds": round(log["latents"]["seconds"], 1),
        "unet_seconds": round(log["unet"]["seconds"], 1),
        "final_vae_recon": log["vae"].get("final_recon"),
        "final_unet_loss": log["unet"]["final_loss"],
        "world_reconstruction_mae_0_255": latent_info["world_reconstruction_mae_0_255"],
        "settings": asdict(s),
        "torch": torch.__version__,
    }
    if s.continue_from is not None:  # the stage before this one, as its file recorded it
        meta["training"]["continued_from"] = pm.read_metadata(s.continue_from).get("training", {})
    save(out, model, clip, vae, meta)
    curve_file = out.with_name(out.stem + "_training.json")
    curve_file.write_text(json.dumps(log, indent=1))
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {curve_file.name}; total {total / 60:.1f} min "
        f"(VAE {log['vae'].get('seconds', 0) / 60:.1f}, latents {log['latents']['seconds'] / 60:.1f}, "
        f"text encoder + UNet {log['unet']['seconds'] / 60:.1f})",
        flush=True,
    )
    if args.evaluate:
        from devtools.pocket_eval import evaluate_captions, print_rates

        print_rates(evaluate_captions(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
