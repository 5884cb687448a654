"""The base of every API model: camelCase in YAML/JSON, snake_case in Python, unknown fields rejected.

Types are as strict as the CRD's OpenAPI schema, so a file the CLI accepts is one the apiserver
accepts: no string for an integer (``maxSeqLength: "4096"``), no boolean for a number
(``gpusPerNode: true``), no float for an integer; an integer for a number stays fine.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Fields are written camelCase (``maxSeqLength``) and read by either name; types are strict."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=False,
    )

    def to_api(self) -> dict:
        """Serialise the way the Kubernetes API stores it: camelCase, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
