"""`fastft chat`'s and `fastft eval`'s options: `ChatConfig` and `EvalConfig`, their one owner,
as `TrainConfig` is training's.

The CLI's options are generated from their fields (fastft.cli.config_options), `fastft init`
writes them as the `[chat]` and `[eval]` sections of fastft.toml, `--config FILE` reads those
sections, and `fastft.serve.chat.chat` / `fastft.serve.evaluate.evaluate_run` take the validated
objects. Cheap to import: fastft.export.modelfile (the sampling defaults) imports no library.
"""

from __future__ import annotations

from typing import Optional

from ..core.config import Config, arg, opt
from ..export.modelfile import sampling_help


class ChatConfig(Config):
    """One `fastft chat`: what to talk to, how to sample, and what to offer it."""
    command = "chat"

    target: str = arg("A run folder, a .gguf file or an export folder.", "[RUN|GGUF]",
                      default="runs/latest")
    prompt: Optional[str] = opt(None, "Ask one question: the answer alone goes to stdout, then "
                                      "exit.", short="-p")
    system: Optional[str] = opt(None, "System prompt. [default: none, or an export's Modelfile "
                                      "SYSTEM]")
    max_new_tokens: int = opt(512, "Longest answer, in tokens.", ge=1)
    # Unset: the Modelfile's (an export's, or the one an export of this run would write).
    temperature: Optional[float] = opt(None, sampling_help("temperature"), ge=0)
    top_p: Optional[float] = opt(None, sampling_help("top_p"), ge=0)
    top_k: Optional[int] = opt(None, sampling_help("top_k"), ge=0)
    min_p: Optional[float] = opt(None, sampling_help("min_p"), ge=0)
    repeat_penalty: Optional[float] = opt(None, sampling_help("repeat_penalty"), ge=0)
    seed: Optional[int] = opt(None, "Random seed, for reproducible sampling. [default: random]")
    tools: Optional[str] = opt(None, "JSON file of tool schemas (OpenAI-style `tools` list) "
                                     "offered in every prompt, as in training; answers are "
                                     "printed raw, <tool_call> blocks included.", metavar="FILE")


class EvalConfig(Config):
    """One `fastft eval`: a run, the data to score it on, and how many sample answers."""
    command = "eval"

    run: str = arg("The run to evaluate (its folder).", "RUN")
    data: str = arg("Data to score (any format `data check` accepts).", "DATA")
    samples: int = opt(3, "Answer the first N conversations with both models (greedy), beside "
                          "the reference.", ge=0)
    max_new_tokens: int = opt(128, "Longest sample answer, in tokens.", ge=1)
