"""The GeMKR model: object-aware CLIP tower, YOLO object features, alignment, template and LoRA LLM.

Import from the submodules (``gemkr_llamaindex.model.gemkr`` etc.); this package stays import-light.
"""
