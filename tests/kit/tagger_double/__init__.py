"""WD14 tagger doubles: tiny ONNX models with the real signatures (built by build.py)."""
