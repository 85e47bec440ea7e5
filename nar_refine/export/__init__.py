"""Exporting a trained model's decoding passes for other runtimes (``onnx``: ONNX Runtime)."""
