"""Render on Network: send the open scene to a renderfarm service and watch it render.

Registration only; see ``operators.py`` (the button), ``work.py`` (packing, uploading and
following the job on a thread) and ``live.py`` (the timer that shows progress and tiles).
"""

from __future__ import annotations

import bpy

from . import live, operators, panels, preferences, properties

_CLASSES = (*preferences.CLASSES, *properties.CLASSES, *operators.CLASSES, *panels.CLASSES)


def register() -> None:
    """Register the add-on's classes and the scene settings."""
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.renderfarm = bpy.props.PointerProperty(type=properties.RenderFarmSettings)


def unregister() -> None:
    """Unregister; jobs already sent go on on the farm."""
    live.stop_all()
    del bpy.types.Scene.renderfarm
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
