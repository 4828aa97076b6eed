"""Model views that know only what a test gives them (adapter sets ask views for sites or layer shapes)."""

from __future__ import annotations


class SitesOnly:
    """A model view that knows only its block sites (all a tap set asks)."""

    def __init__(self, sites):
        self._sites = list(sites)

    def sites(self):
        return list(self._sites)


class LayersOnly:
    """A model view that knows only linear-layer shapes ``{path: (in, out)}`` (all an OFT set asks)."""

    def __init__(self, shapes):
        self._shapes = dict(shapes)

    def linear_layer_shapes(self, paths):
        from taptune.adapter_core import ConfigError

        missing = [p for p in paths if p not in self._shapes]
        if missing:
            raise ConfigError(f"{missing[0]!r} is not a module of this model")
        return {p: self._shapes[p] for p in paths}
