"""council-mlx, the serving model: stopped to free the accelerator, always started again.

Backends share one small interface (stop, start, is_up); `paused()` is what a trial uses.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


class Serving:
    name = "none"

    def stop(self) -> None:
        """Stop serving and return only once it is really gone."""

    def start(self) -> None:
        """Start serving and return only once a health check passes."""

    def is_up(self) -> bool:
        return True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            # Whatever happened in the trial, the user's model comes back.
            self.start()


def make_serving(settings) -> Serving:
    backend = settings.serving.backend
    if backend == "none":
        return Serving()
    from common.errors import ConfigError
    raise ConfigError(settings.file, "serving.backend", f"backend {backend!r} is not available in this build")
