"""TorchServe handler for any exported SlowFast variant: video bytes in, the top-k of its classes
(or embeddings, logits, timelines) out.

Packed into the .mar as a package; the module TorchServe loads is ``slowfast_handler``.
"""
