"""The data pipeline: real sessions + template synthetic examples -> cleaned, split, mixed
mlx-lm chat files with a manifest, cached by the hash of their inputs."""
from .prepare import PIPELINE_VERSION, PreparedData, latest, prepare

__all__ = ["PIPELINE_VERSION", "PreparedData", "latest", "prepare"]
