"""How MinusFace bundles write their settings, and how ``ppfr.load`` reads the ones saved
before the hardening options moved out of MinusFace.

Until then MinusFace's config held eight options of ours beside the paper's settings
(:data:`HARDENING_OFF`; they are now the method ``minusface-hardened``,
:mod:`ppfr.methods.minusface_hardened`), and every "minusface" bundle wrote all of them.
Both methods still write their settings in that layout (:func:`bundle_layout`), a plain
MinusFace's with the options at their off values: a bundle saved now is byte for byte the
one saved before, and its fingerprints (which hash the same layout) are unchanged, so a
deployed server's manifest still names its client.

Loading (:func:`read_settings`, through ``MinusFace.bundle_settings``): a "minusface"
bundle whose manifest has any hardening option on was saved by a hardened model before the
move, and loads as ``minusface-hardened``; one with every option off (or absent: bundles
older than the option) is plain MinusFace, the options dropped.
"""

from __future__ import annotations

from typing import Any

#: the hardening options, each at the value that switches it off (plain MinusFace)
HARDENING_OFF: dict[str, Any] = {
    "pixel_clamp": True,
    "stage1_reads": "residue",
    "adversary_weight": 0.0,
    "adversary_width": 8,
    "equalise": False,
    "equalise_rms": 24.0,
    "equalise_stage1": True,
    "tile_grid": 0,
}
#: the order bundles write the settings in: the recognizer's, then MinusFace's as they
#: stood with the hardening options among them
LAYOUT = (
    "backbone",
    "backbone_width",
    "embedding_size",
    "dropout",
    "head",
    "num_classes",
    "generator",
    "generator_width",
    "shuffles",
    "train_repeats",
    "pixel_weight",
    "identity_weight",
    "pixel_clamp",
    "stage1_reads",
    "adversary_weight",
    "adversary_width",
    "generator_lr_scale",
    "coef_scale",
    "generator_skip",
    "equalise",
    "equalise_rms",
    "equalise_stage1",
    "tile_grid",
    "feature_cache_mb",
)
HARDENED = "minusface-hardened"


def bundle_layout(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a plain or hardened MinusFace config) as bundles write them: every
    hardening option present (at its off value where the config has none), in
    :data:`LAYOUT`'s order; a setting :data:`LAYOUT` does not know goes last."""
    full = {**HARDENING_OFF, **settings}
    ordered = {key: full.pop(key) for key in LAYOUT if key in full}
    return {**ordered, **full}


def read_settings(settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method and settings a "minusface" bundle's ``settings`` load as: ``minusface``
    without the hardening options when all are off, else ``minusface-hardened``.

    Example:
        >>> read_settings({"shuffles": 2, "tile_grid": 0, "equalise": False})
        ('minusface', {'shuffles': 2})
        >>> read_settings({"shuffles": 2, "tile_grid": 4})[0]
        'minusface-hardened'
    """
    if any(key in settings and settings[key] != off for key, off in HARDENING_OFF.items()):
        return HARDENED, settings
    return "minusface", {k: v for k, v in settings.items() if k not in HARDENING_OFF}
