"""Configuration: ``conf/dropr.toml`` loaded once into one frozen, typed object.

Every section is a frozen dataclass whose fields carry their type, bounds and
default; :func:`load` checks the file against them and raises
:class:`~dropr.errors.ConfigError` naming the file, the key path and what was
expected, with a close spelling suggested for an unknown key. Relative paths
resolve against the folder of the config file, so a config works from any
working directory.

The parts: ``values`` (:func:`key` and the check of each kind of value),
``sections`` (the dataclasses, :class:`Config`) and ``loading`` (:func:`load`,
:func:`from_dict` and the checks that span several keys). Import from
``dropr.config``; the names below are its interface.
"""

from dropr.config.loading import (DEFAULT_PATH, ENV_VAR, from_dict, load, resolve_path,
                                  short_window_note)
from dropr.config.sections import (SECTIONS, ClientConfig, Config, LegacyConfig,
                                   MetricsConfig, PeerConfig, ReaperConfig,
                                   ReceiverClientConfig, ReceiverConfig, ResponderConfig,
                                   RetryConfig, SenderConfig, StoreConfig, SupervisorConfig,
                                   WorkersConfig)
from dropr.config.values import MiB, TOKEN_MAX, TOKEN_MIN, key
from dropr.errors import ConfigError

__all__ = [
    "DEFAULT_PATH", "ENV_VAR", "MiB", "SECTIONS", "TOKEN_MAX", "TOKEN_MIN", "ClientConfig",
    "Config", "ConfigError", "LegacyConfig", "MetricsConfig", "PeerConfig", "ReaperConfig",
    "ReceiverClientConfig", "ReceiverConfig", "ResponderConfig", "RetryConfig",
    "SenderConfig", "StoreConfig", "SupervisorConfig", "WorkersConfig", "from_dict", "key",
    "load", "resolve_path", "short_window_note",
]
