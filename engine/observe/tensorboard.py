"""Moved to engine.observe.sources.tensorboard (kept so existing imports keep working)."""

from engine.observe.sources.tensorboard import (EVENT_GLOB, TensorBoardSource, event_files, is_event_dir,  # noqa: F401
                                                latest_run_dir)
