"""mailwarden: an email security gateway built as a plugin framework around a native core.

Library use::

    from mailwarden import Gateway
    async with Gateway() as gateway:
        decision = await gateway.scan(raw_bytes)
"""

from .config import Config, load_config
from .errors import ConfigError, DeliveryError, MailwardenError, PluginError
from .pipeline import Decision, Gateway, Outcome
from .version import __version__

__all__ = [
    "Config",
    "ConfigError",
    "Decision",
    "DeliveryError",
    "Gateway",
    "MailwardenError",
    "Outcome",
    "PluginError",
    "__version__",
    "load_config",
]
