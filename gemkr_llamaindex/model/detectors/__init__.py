"""Object detectors behind one interface (:class:`Detector`): an image in, its most confident boxes out.

* :class:`YOLODetector` (``yolo.py``): ultralytics YOLO, extra ``[yolo]`` (AGPL-3.0).
* :class:`HFDetector` (``hf.py``): any transformers ``AutoModelForObjectDetection`` folder (RT-DETR, DETR,
  ...), core dependencies only (Apache-2.0).

Pick one from a spec string with :func:`gemkr_llamaindex.model.detector.make_detector`. Importing this
package imports neither ultralytics nor the transformers model classes.
"""

from gemkr_llamaindex.model.detectors.base import MAX_OBJECTS, Box, Detector, top_boxes
from gemkr_llamaindex.model.detectors.hf import HFDetector, is_object_detection_folder
from gemkr_llamaindex.model.detectors.yolo import YOLODetector

__all__ = ["MAX_OBJECTS", "Box", "Detector", "HFDetector", "YOLODetector", "is_object_detection_folder", "top_boxes"]
