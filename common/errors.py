"""One error type for bad input, so every CLI can turn it into exit code 2 and one line."""
from __future__ import annotations


class ConfigError(Exception):
    """Bad input: names the file, the key (if any) and what was wrong."""

    def __init__(self, file: str | None, key: str | None, problem: str):
        self.file, self.key, self.problem = file, key, problem
        where = ": ".join(p for p in (str(file) if file else None, key) if p)
        super().__init__(f"{where}: {problem}" if where else problem)


def one_line(exc: BaseException) -> str:
    """The error as a single line (for exit-2 messages)."""
    return " ".join(str(exc).split())


def load_yaml_file(path) -> object:
    """A YAML file's data; a missing file or a syntax error is a ConfigError naming the file."""
    from pathlib import Path

    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"YAML syntax error: {' '.join(str(exc).split())}") from None
