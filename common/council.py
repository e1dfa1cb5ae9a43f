"""The Council schema (council.yaml): seven agents, their facts, tools and secrets."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, load_yaml_file

CATEGORIES = ("identity", "tool_calling", "domain", "isolation", "jailbreak")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _non_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


# Required to say something: an agent without a role or a system prompt would still train
# and be evaluated, on prompts that no longer name who is speaking.
NonBlank = Annotated[str, AfterValidator(_non_blank)]


class Fact(_Strict):
    q: NonBlank
    a: NonBlank


class Tool(_Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    description: NonBlank
    parameters: dict[str, Any]

    @field_validator("parameters")
    @classmethod
    def _json_schema_object(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type") != "object" or not isinstance(v.get("properties"), dict):
            raise ValueError("must be a JSON schema with type: object and properties")
        missing = [r for r in v.get("required", []) if r not in v["properties"]]
        if missing:
            raise ValueError(f"required names unknown properties: {missing}")
        return v


class PrivateFact(_Strict):
    key: NonBlank
    value: NonBlank


class Agent(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    role: NonBlank
    system_prompt: NonBlank
    domain_facts: list[Fact] = Field(min_length=1)
    tools: list[Tool] = Field(min_length=1)
    private_facts: list[PrivateFact] = Field(min_length=1)

    @property
    def display(self) -> str:
        """The name as the agent says it ("Qui-Gon"), taken from its system prompt."""
        prefix = "You are "
        if self.system_prompt.startswith(prefix):
            return self.system_prompt[len(prefix):].split(",")[0].strip()
        return self.name.capitalize()


class Council(_Strict):
    agents: list[Agent] = Field(min_length=1)

    @field_validator("agents")
    @classmethod
    def _unique(cls, v: list[Agent]) -> list[Agent]:
        names = [a.name for a in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate agent names: {dupes}")
        return v

    def agent(self, name: str) -> Agent:
        for a in self.agents:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]


def _loc(err: dict[str, Any], data: Any) -> str:
    """'agents[2].tools[0].parameters' with the agent's name where we can find it."""
    parts: list[str] = []
    node = data
    for p in err["loc"]:
        if isinstance(p, int):
            label = f"[{p}]"
            try:
                node = node[p]
                if isinstance(node, dict) and "name" in node:
                    label = f"[{p}:{node['name']}]"
            except Exception:
                node = None
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return "".join(parts)


def parse_council(data: Any, file: str = "council.yaml") -> Council:
    try:
        return Council.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(file, _loc(err, data), err["msg"].removeprefix("Value error, ")) from None


def load_council(path: str | Path) -> Council:
    path = Path(path)
    data = load_yaml_file(path)
    return parse_council(data, str(path))
