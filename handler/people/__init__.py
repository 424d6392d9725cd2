"""Who is doing what: person-level AVA actions from an action detector (contract task "detection").

The request path of a detection model, one module per stage, read in this order:

- ``request``: parse: the video (``handler.protocol``), the person boxes per keyframe time and the
  options (fields, headers or KServe parameters), checked for form and limits before any decoding;
- ``plan``: the keyframes (given, every ``stride`` seconds, or the middle of the video) and the
  window around each (the contract's keyframe convention);
- ``geometry``: boxes between the video's upright pixels and the working frame's (scale, rotation,
  aspect crop), both ways;
- ``persons``: the packed person detector (torchvision's COCO Faster R-CNN) on a keyframe's frame;
- ``run``: a keyframe's window and boxes -> the model's per-box action probabilities;
- ``render``: the answer (plain JSON, KServe v1, KServe v2 tensors);
- ``service``: the batch, stage by stage, one status per request.
"""
