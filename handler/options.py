"""Kept only so that imports written before the split keep working (client/ imports the option
table from here); new code imports the module that does the job:

- ``handler.option_table``: the request options, declared once (``REQUEST_OPTIONS``);
- ``handler.serve_settings``: the deployment's settings (``ServeOptions``, ``registration_settings``);
- ``handler.request_options``: one request's options (``RequestOptions``, ``resolve_request_options``).
"""

from handler.option_table import (  # noqa: F401
    DEFAULT_TOPK, MAX_SECONDS, OUTPUTS, REQUEST_OPTION_NAMES, REQUEST_OPTIONS, RequestOption, request_option,
)
from handler.request_options import RequestOptions, read_option, resolve_request_options  # noqa: F401
from handler.serve_settings import (  # noqa: F401
    CPU_PRECISIONS, CPU_RUNTIMES, PRECISIONS, ConfigError, ServeOptions, registration_settings,
)
