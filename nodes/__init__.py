"""ComfyUI node classes (V3 schema). Thin: they translate between ComfyUI types and the library."""
