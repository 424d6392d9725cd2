"""The request options, each declared once: ``REQUEST_OPTIONS``.

The handler's reader (``request_options``), the header names, the client's flags and the README's
option table all come from this table; ``serve_settings`` takes the configurable defaults from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple, Union

# How true and false may be spelled, in a request option as in a model-config setting.
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")

# Seconds: a stride or span outside this is a typo, not a request.
MAX_SECONDS = 24 * 3600.0
DEFAULT_TOPK = 5
# Each ``output`` a request may ask for, and the output kinds (handler/render.py) it renders.
OUTPUTS: Mapping[str, Tuple[str, ...]] = {
    "labels": ("labels",),
    "embedding": ("embedding",),
    "both": ("labels", "embedding"),
    "logits": ("logits",),
}


@dataclass(frozen=True)
class RequestOption:
    """One request option, declared once: the handler's reader and header names, the client's flag
    and the README's option table all come from this.

    ``value_type``: ``int`` or ``float`` (in ``low``..``high``), ``bool``, ``seconds`` (a float in
    0..MAX_SECONDS) or ``choice`` (one of ``choices``, read as the type of the first).
    ``default``: the value when a request does not say (None: unset, meaning ``unset``); with
    ``configurable`` the deployment's ``handler:`` section (``ServeOptions``) may change it.
    ``high``: a number, or the name of the limit that bounds the option (``num_classes`` from the
    model, ``max_clips`` from ``ServeOptions``). ``client_default``: what the client sends when its
    user does not say (None: nothing). ``client``: the client has a flag.
    """

    name: str
    value_type: str
    help: str
    default: Any = None
    configurable: bool = False
    choices: Tuple[Any, ...] = ()
    choice_words: Tuple[str, ...] = ()
    low: float = 1
    high: Union[float, str] = ""
    unset: str = ""
    client_default: Any = None
    client: bool = True

    @property
    def headers(self) -> Tuple[str, str]:
        """Header names carrying it (lower case): ``topk`` or ``x-topk``."""
        return self.name, f"x-{self.name}"


REQUEST_OPTIONS: Tuple[RequestOption, ...] = (
    RequestOption("topk", "int", "labels per answer", default=DEFAULT_TOPK, configurable=True, high="num_classes",
                  client_default=DEFAULT_TOPK),
    RequestOption("clips", "int", "temporal windows to average", default=1, configurable=True, high="max_clips"),
    RequestOption("crops", "choice", "spatial crops per window", default=1, configurable=True, choices=(1, 3),
                  choice_words=("1 (center)", "3 (left/center/right)")),
    RequestOption("output", "choice", f"what the answer holds: {', '.join(OUTPUTS)}",
                  default="labels", choices=tuple(OUTPUTS)),
    RequestOption("normalize", "bool", "L2-normalise the embedding", default=False),
    RequestOption("timeline", "bool", "a window every stride seconds, each with its own answer", default=False),
    RequestOption("stride", "seconds", "timeline step in seconds", unset="one window length"),
    RequestOption("start", "seconds", "look from this second on", unset="the video's start"),
    RequestOption("end", "seconds", "look up to this second", unset="the video's end"),
    RequestOption("stream", "bool", "send a timeline as JSON lines, one per window as computed", default=False,
                  client=False),
    RequestOption("threshold", "float", "only labels whose probability is at least this (alone: every such label, "
                  "with topk: the top k of them); for multi-label (sigmoid) models or as a cut-off", low=0, high=1,
                  unset="none"),
    # Set by the client when it sends a cut of a longer video (client/window_cut.py), not by hand.
    RequestOption("source_offset", "seconds", "the upload is a cut of a longer video (the source): the source's second "
                  "at the upload's first frame; start, end and the answer's times are then in the source's clock "
                  "(needs source_duration)", unset="the upload is the whole video", client=False),
    RequestOption("source_duration", "seconds", "the source's duration when the upload is a cut of it: windows are "
                  "planned over the source (needs source_offset)", unset="the upload's duration", client=False),
)
REQUEST_OPTION_NAMES = tuple(option.name for option in REQUEST_OPTIONS)


def request_option(name: str) -> RequestOption:
    return next(option for option in REQUEST_OPTIONS if option.name == name)
