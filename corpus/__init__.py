"""The data pipeline: real sessions + template (and optionally LLM-paraphrased) synthetic
examples -> cleaned, deduplicated, balanced, split, mixed mlx-lm chat files with a
manifest, cached by the hash of their inputs. `corpus.contamination.check` tests an eval
suite against a prepared corpus."""
from .prepare import DEFAULT_CAPS, PIPELINE_VERSION, PreparedData, Settings, latest, prepare

__all__ = ["DEFAULT_CAPS", "PIPELINE_VERSION", "PreparedData", "Settings", "latest", "prepare"]
