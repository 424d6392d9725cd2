"""No OpenVINO telemetry from this server: import this module before anything imports openvino.

How openvino-telemetry (pinned in requirements.txt) decides, read from its source: OpenVINO's
converter (``openvino.tools.ovc``, run by ``ov.convert_model``) creates ``Telemetry`` with
``enable_opt_in_dialog=False``, whose consent comes from ``OptInChecker.check``: the consent file
``~/intel/openvino_telemetry`` holding "0" declines, a missing file counts as consent, and the CI
variables (``CI=true``...) decline only for callers that pass ``disable_in_ci``. Messages then go
out through ``TelemetrySender.send`` (to Google Analytics, from a forked process), some with
``force_send`` that ignores consent. The file depends on the server user's home being writable
and on nobody having opted in there, so this process declines itself: ``OptInChecker.check``
answers "declined" for every caller and ``TelemetrySender.send`` drops what it is given.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    from openvino_telemetry.utils.sender import TelemetrySender
except ImportError:  # without the package OpenVINO uses its no-op stub: nothing can be sent
    OptInChecker = None  # type: ignore[assignment,misc]


def _declined(self: object, *args: object, **kwargs: object) -> "ConsentCheckResult":
    return ConsentCheckResult.DECLINED


def _dropped(self: object, *args: object, **kwargs: object) -> None:
    return None


def opt_out() -> None:
    """Decline telemetry for this process (idempotent); writes nothing to disk."""
    if OptInChecker is None:
        return
    OptInChecker.check = _declined  # type: ignore[method-assign]
    TelemetrySender.send = _dropped  # type: ignore[method-assign]


opt_out()
