"""Errors the core raises to its callers (CLI, ingress, library users)."""

from __future__ import annotations


class MailwardenError(Exception):
    """Base class of every error the core raises on purpose."""


class ConfigError(MailwardenError):
    """A config file that cannot be used; names the file, the key and the line when known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.key = key
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.path or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        key = f" [{self.key}]" if self.key else ""
        return f"{where}:{key} {self.message}"


class PluginError(MailwardenError):
    """A plugin that cannot be loaded or started; names the plugin."""


class DeliveryError(MailwardenError):
    """Delivery failed; ``permanent`` says whether the sender should retry."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
