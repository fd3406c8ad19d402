"""Final model export: RUN_DIR/model loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained."""

from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path

import securefed

__all__ = ["export_model", "versions"]


def export_model(model, tokenizer, out: Path) -> None:
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=out.parent))
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # the run's own progress says "exporting the model"; no tqdm bar in its logs
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def versions() -> dict:
    import lightning
    import torch
    import transformers

    return {"securefed": securefed.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "lightning": lightning.__version__}
