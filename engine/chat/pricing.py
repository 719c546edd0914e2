"""Token usage and its cost.

cost_usd = (input_tokens · input + output_tokens · output + cache_read_input_tokens · cache_read
            + cache_creation_input_tokens · cache_write) / 1e6          (prices in USD per million tokens)

``input_tokens`` as the API reports it excludes cached tokens, so the four terms never overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from engine.chat.config import Price
from engine.errors import ConfigError

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @classmethod
    def from_api(cls, usage: Any) -> "Usage":
        """From an SDK ``Usage`` object or a dict (missing / None fields count 0)."""
        get = usage.get if isinstance(usage, Mapping) else (lambda k, d=None: getattr(usage, k, d))
        return cls(**{f: int(get(f, 0) or 0) for f in USAGE_FIELDS})

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(**{f: getattr(self, f) + getattr(other, f) for f in USAGE_FIELDS})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def price_for(model: str, table: Mapping[str, Price]) -> Price:
    """The price of ``model``: an exact entry, else the longest entry that prefixes it (dated ids such as
    ``claude-sonnet-4-5-20250929`` use ``claude-sonnet-4-5``). Unknown models are a config error: a cost
    that cannot be computed cannot be capped."""
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    if matches:
        return table[max(matches, key=len)]
    raise ConfigError(f"no price for model {model!r}", hint=f"Add chat.prices.{model}: {{input, output, cache_read, "
                      "cache_write}} (USD per million tokens) to carl.yaml.", context={"model": model,
                                                                                       "known": sorted(table)})


def cost_usd(usage: Usage, price: Price) -> float:
    return (usage.input_tokens * price.input + usage.output_tokens * price.output
            + usage.cache_read_input_tokens * price.cache_read
            + usage.cache_creation_input_tokens * price.cache_write) / 1_000_000
