"""``python -m client live SOURCE``: classify a camera or a stream as it plays.

The reading goes source -> buffer -> clip -> send -> report: ``source`` reads packets from the
stream (reconnecting when it drops), ``buffer`` keeps the last window's worth of them, ``clip``
turns the latest window into a small video (remuxed, else encoded), ``runner`` decides every hop
whether a window is sent or skipped, and ``report`` shows and writes the answers in order.
"""
