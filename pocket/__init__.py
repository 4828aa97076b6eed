"""The pocket world: a small trained text-to-image model shipped with TapTune, and its evaluation.

Pure Python / numpy / Pillow / PyTorch; nothing here imports ComfyUI (``patching/pocket_model.py``
turns the architecture and weights into ComfyUI's MODEL, CLIP and VAE).

* :mod:`.world` -- the seeded generator of captioned 64x64 pictures
  (``a {colour} {shape} on a {colour} background``) and the wider distributions the VAE and
  the judge learn from.
* :mod:`.subjects` -- personalisation subjects (patterned shapes) and their photos.
* :mod:`.architecture` -- the model's configuration as data, and its explicit initialisation.
* :mod:`.judge` -- the small CNN that reads shape, colours and pattern; its features are the
  image embedding of the metrics.
* :mod:`.metrics` -- subject fidelity, prior preservation and prompt alignment, as formulas.

Decisions (recorded here because the issue leaves them open):

* **The VAE is a generic codec, the diffusion model is not.** The VAE learns from a broader
  distribution than the world (any RGB colour, all patterns, extra shapes, second objects,
  two-tone backgrounds: :func:`.world.codec_scene`), because DreamBooth encodes the user's
  photos with it: a subject the diffusion model has never seen -- a shipped one or an outside
  tester's own -- must survive encoding and decoding. The diffusion model only ever sees plain
  objects in the six palette colours, so every patterned subject is new to it.
* **Patterns are coarse** (stripes 11-17 px per period, check cells 8-12 px, dots 11-15 px
  apart): one latent pixel covers 8x8 picture pixels and this VAE is small, so finer textures
  come back blurred.
* **Eps prediction on ComfyUI's standard discrete schedule** (SD 1.x's betas), so the pack's
  training objective, which reads ``model_sampling``, treats the model like SD 1.5.
"""
