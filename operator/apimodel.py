"""The base of every API model: camelCase in YAML/JSON, snake_case in Python, unknown fields rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Fields are written camelCase (``maxSeqLength``) and read by either name."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    def to_api(self) -> dict:
        """Serialise the way the Kubernetes API stores it: camelCase, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
