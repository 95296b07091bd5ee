"""Problems and prompts: data sources, prompt formatting/encoding and the resumable training-prompt iterator."""

from dashjax.data.examples import DataError, Example
from dashjax.data.iterator import PromptIterator
from dashjax.data.prompts import PromptFormatter
from dashjax.data.sources import file_examples, gym_examples, hub_examples, load_examples, stream_seed

__all__ = ["DataError", "Example", "PromptIterator", "PromptFormatter", "file_examples", "gym_examples", "hub_examples",
           "load_examples", "stream_seed"]
