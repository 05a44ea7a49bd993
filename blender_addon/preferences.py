"""The add-on's preferences: the farm's address and keys, the default priority."""

from __future__ import annotations

import bpy


class RENDERFARM_OT_create_keys(bpy.types.Operator):
    """Create a key pair for this client (give the public key to the farm's admin)"""

    bl_idname = "renderfarm.create_keys"
    bl_label = "Create Key Pair"
    bl_options = {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        from renderfarm.server.transport import new_keys

        prefs = context.preferences.addons[__package__].preferences
        keys = new_keys()
        prefs.client_public, prefs.client_secret = keys.public, keys.secret
        self.report({"INFO"}, f"Public key {keys.public}: the farm's admin adds it to the "
                    "farm's clients folder as a .key file")
        return {"FINISHED"}


class RenderFarmPreferences(bpy.types.AddonPreferences):
    """Where the farm is and how this client proves who it is."""

    bl_idname = __package__

    address: bpy.props.StringProperty(
        name="Farm Address", default="tcp://127.0.0.1:5555",
        description="The address of `renderfarm serve` (tcp://host:port)")
    server_key: bpy.props.StringProperty(
        name="Farm Public Key", default="",
        description="The farm's public key (40 characters, from its server.key file); "
        "empty for a farm on this machine without keys")
    client_public: bpy.props.StringProperty(
        name="Client Public Key", default="",
        description="This client's public key; the farm must list it")
    client_secret: bpy.props.StringProperty(
        name="Client Secret Key", default="", subtype="PASSWORD",
        description="This client's secret key (keep it private)")
    default_priority: bpy.props.IntProperty(
        name="Default Priority", default=0, min=-1000, max=1000,
        description="Priority of new jobs (higher first)")
    timeout: bpy.props.FloatProperty(
        name="Reply Timeout", default=15.0, min=1.0, max=600.0, subtype="TIME_ABSOLUTE",
        description="Seconds to wait for the farm to answer")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "address")
        layout.prop(self, "server_key")
        box = layout.box()
        box.label(text="This client's keys")
        box.prop(self, "client_public")
        box.prop(self, "client_secret")
        box.operator(RENDERFARM_OT_create_keys.bl_idname, icon="KEY_HLT")
        layout.prop(self, "default_priority")
        layout.prop(self, "timeout")
        if not bpy.app.online_access:
            layout.label(text="Online access is off: only a farm on this machine can be used",
                         icon="INFO")


CLASSES = (RENDERFARM_OT_create_keys, RenderFarmPreferences)
