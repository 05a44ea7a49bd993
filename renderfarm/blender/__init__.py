"""Everything that talks to Blender. The only package of renderfarm that imports ``bpy``.

The modules import ``bpy`` inside their functions, so importing this package stays cheap and
works without Blender installed; pure helpers (such as device choice) are tested without it.
"""
