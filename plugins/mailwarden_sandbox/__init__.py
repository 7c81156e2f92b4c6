"""The built-in sandbox detector (the KATA role): external analysis, hold until verdict.

This foundation version declares the plugin and its configuration; the ICAP and HTTP backends
and the bounded hold quarantine arrive with the sandbox issue, so it implements no scan hook
yet and sends nothing anywhere.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from mailwarden_sdk import Host, StoreDescriptor, WhenFull, hookimpl

__all__ = ["SandboxConfig", "SandboxPlugin"]


class SandboxConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[sandbox]``: the analysis server and how long a held message may wait for it."""

    enabled: bool = False
    mode: Literal["mirror", "hold"] = "mirror"
    verdict_timeout: Annotated[float, msgspec.Meta(ge=60, le=86400)] = 600.0
    max_object_size: Annotated[int, msgspec.Meta(gt=0)] = 200 * 1024 * 1024
    # The hold quarantine refuses new messages past either cap; the rule's fallback applies.
    quarantine_max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1 << 30
    quarantine_max_messages: Annotated[int, msgspec.Meta(gt=0)] = 5000


class SandboxPlugin:
    """Declares the ``[sandbox]`` section; analysis comes with the sandbox issue."""

    requires_sdk = ">=1.0,<2"

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return "sandbox", SandboxConfig

    @hookimpl
    def mailwarden_data_stores(self, host: Host) -> list[StoreDescriptor]:
        config: SandboxConfig = host.config_for("sandbox") or SandboxConfig()
        return [
            StoreDescriptor(
                name="sandbox quarantine",
                path=str(host.data_dir / "sandbox" / "quarantine"),
                holds="messages held until the analysis verdict, in full (one file each)",
                max_bytes=config.quarantine_max_bytes,
                max_entries=config.quarantine_max_messages,
                when_full=WhenFull.REFUSE_NEW,
                read_permission="queues.view",
            )
        ]
