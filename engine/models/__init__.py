"""One path for a model: the names a user types, one loader, one idea of where a completion ends.

* :mod:`engine.models.names` — :func:`resolve_name` turns every name a user types into a :class:`ModelRef`
  (a local directory; ``builtin:NAME``; ``run:ID``; a run id or unambiguous prefix; ``RUN/final``,
  ``RUN/checkpoint-N``, ``RUN@N``; ``BASE + ADAPTER``; a Hub id last, failing fast when the Hub cannot be reached).
* :mod:`engine.models.load` — :func:`load_model`: device, dtype, quantization, LoRA adapter, trust_remote_code
  and the tokenizer, the same way for the worker, the SFT stage, the eval gate, the agent eval, infer, best-of,
  the try panel and probe.
* :mod:`engine.models.stops` — :func:`stop_ids`: where every generation loop stops.

Heavy imports (torch, transformers, peft, huggingface_hub) happen inside the functions that need them.
"""

from engine.models.load import LoadOptions, load_model
from engine.models.names import ModelRef, resolve, resolve_name, run_model_dir
from engine.models.stops import stop_ids

__all__ = ["ModelRef", "resolve", "resolve_name", "run_model_dir", "stop_ids", "load_model", "LoadOptions"]
