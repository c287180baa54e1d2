"""Structured output: OpenAI's ``response_format``, as the tiers take it and as it is checked.

A request's ``json_object`` or ``json_schema`` becomes an ``OutputFormat``: the schema (any
JSON object for ``json_object``) in canonical JSON, so it is hashable and its compiled grammar
is cached per schema. The local tier constrains decoding with it (``tandem.local.constrain``),
the cloud tier receives it in the dialect its server speaks, and the cascade checks the
finished local answer against it (``problems``) before the client sees it.

Compiling is llguidance's JSON-schema compiler (Rust, the one llama.cpp links when built with
LLGUIDANCE): it names the keywords it does not implement, so a schema it cannot enforce is a
400 that says which keyword, never a silent "any JSON".
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.errors import UnsupportedParameterError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

Kind = Literal["json_object", "json_schema"]
Dialect = Literal["openai", "llama_cpp"]

ANY_OBJECT = '{"type":"object"}'


# -- the request field, as OpenAI defines it ---------------------------------------------------


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    # "schema" would shadow a BaseModel attribute: the alias keeps the wire name.
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


def canonical(value: Any) -> str:
    """Compact JSON with keys in the client's order: the order of a schema's properties is
    the order the answer writes them in."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class OutputFormat:
    """What the answer must be: a JSON object, or a JSON document matching ``schema``."""

    kind: Kind
    schema_json: str = ANY_OBJECT  # the schema as compact JSON
    name: str | None = None
    strict: bool | None = None
    description: str | None = None

    @property
    def schema(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.schema_json)
        return loaded

    def grammar(self, any_whitespace: bool = False) -> str:
        """The llguidance grammar for this schema (compiled once per schema).

        The local model writes JSON in one layout, ``{"a": 1, "b": 2}``: offered free
        whitespace, a small model spends tokens on newlines and indentation, and its answers
        were less accurate both with none at all and with free whitespace (``tandem bench
        extraction``'s tune items: every field right in 40 % of answers, against 27 % compact
        and 40 % with more tokens and fewer valid documents). ``any_whitespace`` accepts any
        layout: for continuing text another tier wrote.
        """
        return _grammar(self.schema_json, any_whitespace)

    def wire(self) -> dict[str, Any]:
        """The ``response_format`` field as OpenAI defines it."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name or "response", "schema": self.schema}
        if self.strict is not None:
            spec["strict"] = self.strict
        if self.description is not None:
            spec["description"] = self.description
        return {"type": "json_schema", "json_schema": spec}

    def problems(self, text: str) -> list[str]:
        """Why ``text`` is not an acceptable answer (empty: it is).

        Beyond the grammar (which guarantees the shape while decoding), this applies the
        checks a token mask cannot: the schema's formats and every keyword the validator
        knows, and required fields left empty (``""``, ``[]``, ``{}``), which a constrained
        small model emits when it has nothing to put there.
        """
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return [f"not JSON: {exc.msg} at character {exc.pos}"]
        if self.kind == "json_object" and not isinstance(value, dict):
            return ["not a JSON object"]
        found = [
            f"{_path(error.absolute_path)}: {error.message}"
            for error in schema_validator(self.schema_json).iter_errors(value)
        ]
        found.extend(_empty_required(self.schema, value, "$"))
        return found


def for_dialect(response_format: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    """OpenAI's ``response_format`` as a server speaking ``dialect`` takes it."""
    if dialect == "llama_cpp" and response_format.get("type") == "json_schema":
        # llama_cpp.server takes only {"type": "json_object", "schema": ...} (its request model
        # has no "json_schema" type) and compiles the schema to a GBNF grammar itself.
        return {"type": "json_object", "schema": response_format["json_schema"]["schema"]}
    return response_format


def parse_response_format(
    value: dict[str, Any], param: str = "response_format"
) -> OutputFormat | None:
    """The request's ``response_format`` (already shape-checked), compiled once to prove it
    can be enforced; None for ``{"type": "text"}``."""
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    spec = value["json_schema"]
    schema = spec.get("schema") or {}
    fmt = OutputFormat(
        "json_schema",
        canonical(schema),
        name=spec.get("name"),
        strict=spec.get("strict"),
        description=spec.get("description"),
    )
    _check_compiles(fmt.schema_json, f"{param}.json_schema.schema")
    return fmt


def _check_compiles(schema_json: str, param: str) -> None:
    error = _compile_error(schema_json)
    if error:
        raise UnsupportedParameterError(
            f"The JSON schema in '{param}' cannot be enforced by this gateway: {error}. "
            "Remove or rewrite that part of the schema (the answer would otherwise not be "
            "guaranteed to match it).",
            param=param,
        )


@functools.lru_cache(maxsize=256)
def _compile_error(schema_json: str) -> str:
    """What llguidance's compiler says against the schema ("" when it compiles)."""
    from llguidance import LLMatcher

    try:
        error = LLMatcher.validate_grammar(_grammar(schema_json))
    except ValueError as exc:  # not a JSON object at all
        return str(exc)
    return "" if error.startswith("WARNING") else error


@functools.lru_cache(maxsize=256)
def _grammar(schema_json: str, any_whitespace: bool = False) -> str:
    from llguidance import LLMatcher

    if any_whitespace:
        return LLMatcher.grammar_from_json_schema(schema_json)
    layout: JsonCompileOptions = {
        "whitespace_flexible": False,
        "item_separator": ", ",
        "key_separator": ": ",
    }
    return LLMatcher.grammar_from_json_schema(schema_json, defaults=layout)


@functools.lru_cache(maxsize=256)
def schema_validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _path(parts: Any) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _empty_required(schema: Any, value: Any, where: str) -> list[str]:
    if not isinstance(schema, dict):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or ():
            if value.get(key) in ("", [], {}):
                found.append(f"{where}.{key}: required but empty")
        for key, sub in properties.items():
            if key in value:
                found.extend(_empty_required(sub, value[key], f"{where}.{key}"))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found.extend(_empty_required(schema["items"], item, f"{where}[{i}]"))
    return found
