"""The state of a caller's model that an export must leave as it found it."""
from __future__ import annotations

import contextlib


class ConfigSnapshot:
    """The attributes of every config object the model and its submodules hold (``config``,
    ``generation_config``), restorable: exporters set ``use_cache``, attention implementations and
    the like on them while they trace."""

    def __init__(self, model) -> None:
        self._saved: dict[int, tuple[object, dict]] = {}
        modules = model.modules() if hasattr(model, "modules") else [model]
        for module in modules:
            for name in ("config", "generation_config"):
                config = getattr(module, name, None)
                if config is not None and hasattr(config, "__dict__") and id(config) not in self._saved:
                    self._saved[id(config)] = (config, dict(vars(config)))

    def restore(self) -> None:
        for config, attributes in self._saved.values():
            current = vars(config)
            for key in [k for k in current if k not in attributes]:
                del current[key]
            current.update(attributes)

    @contextlib.contextmanager
    def restored_after(self):
        try:
            yield self
        finally:
            self.restore()
