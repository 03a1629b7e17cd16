"""Command-line entry points (Hydra apps) and what they share."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError, PermissionError,
               ConnectionError)


def setup_runtime() -> None:
    """Environment defaults every command needs before heavy imports."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's INFO line on every start
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sanitize"):
        OmegaConf.register_new_resolver("sanitize", lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)))


def one_line_errors(fn: Callable) -> Callable:
    """Bad input becomes ``error: <what to fix>`` and exit status 2, not a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("EMBODIED_TRACEBACK"):
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logging.getLogger("embodied").debug("user error", exc_info=True)
            discard_unused_run_dir()
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def discard_unused_run_dir() -> None:
    """After a start-up error, remove the run folder Hydra made if it holds nothing but
    Hydra's own files (its ``.hydra`` config copy and job log): no empty runs left behind."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    out = Path(HydraConfig.get().runtime.output_dir).resolve()
    if out == Path.cwd().resolve() or not out.is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        logging.shutdown()  # close the job log before its folder goes
        shutil.rmtree(out, ignore_errors=True)
        parent = out.parent
        if parent != Path.cwd().resolve() and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # e.g. runs/, made for this run alone
